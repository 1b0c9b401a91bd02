"""In-place tensor updates and tuple results, at the statement level.

torch mutates tensors in place (`x.add_(y)`, `x[i] = v`, `x[i] += v`); JAX
arrays are immutable. Where the tensor is a plain local name, rebinding the
name (`x = x + y`, `x = x.at[i].set(v)`) means the same thing to the code
that follows, except through other names sharing its memory (views, aliases,
the caller's tensor behind an argument): those cases are converted with a
PT005 warning. `x[i] = v` is converted only when `x` is known to hold a
tensor (a dict or a list is indexed the same way).

The call pass (porter/convert/passes/calls.py) calls into this module from its
generic visit/leave hooks, so the subclasses' own leave_* methods are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from porter.convert.context import ConversionContext, code_of

# tensor methods and torch functions whose result may share memory with their input
VIEWS = frozenset({
    "view", "view_as", "reshape", "transpose", "permute", "t", "T", "mT", "expand", "expand_as", "narrow",
    "select", "squeeze", "unsqueeze", "flatten", "unflatten", "split", "chunk", "unbind", "diagonal", "movedim",
    "moveaxis", "swapaxes", "swapdims", "detach", "contiguous", "as_strided", "view_as_real", "view_as_complex",
    "real", "imag", "tensor_split", "hsplit", "vsplit", "unfold", "data", "to", "cpu", "cuda", "type_as", "float",
    "half", "double", "int", "long", "bool", "bfloat16", "requires_grad_",
})
# tensor methods whose result is no tensor (a numpy array, a list, a number, a shape)
NOT_TENSORS = frozenset({"numpy", "tolist", "item", "size", "dim", "ndimension", "numel", "nelement", "type",
                         "is_floating_point"})
# AugAssign operator -> the `.at[]` method
AT_METHODS = {"+=": "add", "-=": "subtract", "*=": "multiply", "/=": "divide", "**=": "power"}


@dataclass
class TensorNames:
    """What a function's assignments say about its local names (flow-insensitive, conservative)."""

    tensors: set[str] = field(default_factory=set)  # every binding is a tensor
    shared: set[str] = field(default_factory=set)  # may share memory with another name (view, alias, argument)
    # every binding is a tensor or may be one: an argument without annotation (forward's x), or arithmetic
    # on such names; an update converts only where its index shows an array (x[:, 0] = v, y[y < 0] = v)
    maybe: set[str] = field(default_factory=set)


def analyse_function(node: cst.FunctionDef, ctx: ConversionContext, method: bool = False) -> TensorNames:
    """method: the function is a module's method, whose arguments may be tensors (forward's x); a plain
    function's may as well be numpy arrays, which take item assignment themselves."""
    names = TensorNames()
    # name -> per binding: "fresh" | "shared" | "maybe" (an argument, or arithmetic on one) | None (not a tensor)
    verdicts: dict[str, list[str | None]] = {}
    for param in [*node.params.params, *node.params.kwonly_params, *node.params.posonly_params]:
        annotated = param.annotation is not None and ctx.qualified_name(param.annotation.annotation) == "torch.Tensor"
        plain = method and param.annotation is None and param.name.value != "self"
        verdicts.setdefault(param.name.value, []).append("shared" if annotated else "maybe" if plain else None)
    params = set(verdicts)
    for assign in _assignments(node.body):
        for target in assign.targets:
            if isinstance(target.target, cst.Name):
                verdicts.setdefault(target.target.value, []).append(_classify(assign.value, verdicts, ctx))
            elif isinstance(target.target, (cst.Tuple, cst.List)):
                # `logits, _ = self(idx)` in a method (nanoGPT's generate): the model's outputs may be tensors
                kind = "maybe" if method and _calls_the_module(assign.value) else None
                for element in target.target.elements:
                    if isinstance(element.value, cst.Name):
                        verdicts.setdefault(element.value.value, []).append(kind)
    for name, kinds in verdicts.items():
        if kinds and all(kinds):
            (names.maybe if any(k.startswith("maybe") for k in kinds) else names.tensors).add(name)
        if "shared" in kinds or "maybe-shared" in kinds or name in params:
            names.shared.add(name)
    return names


def _calls_the_module(value: cst.BaseExpression) -> bool:
    """`self(...)` or `self.forward(...)`."""
    if not isinstance(value, cst.Call):
        return False
    func = value.func
    if isinstance(func, cst.Attribute) and func.attr.value == "forward":
        func = func.value
    return isinstance(func, cst.Name) and func.value == "self"


def _assignments(body: cst.CSTNode) -> list[cst.Assign]:
    """The Assign statements of a function body in source order, nested functions aside.

    Walks statements only (an Assign is always a statement, never inside an expression):
    a visitor over every expression node cost a third of the whole conversion.
    """
    found: list[cst.Assign] = []

    def walk(node: cst.CSTNode) -> None:
        kind = type(node)
        if kind is cst.Assign:
            found.append(node)
            return
        for name in _STATEMENT_FIELDS.get(kind, ()):
            child = getattr(node, name)
            if isinstance(child, (list, tuple)):
                for item in child:
                    walk(item)
            elif child is not None:
                walk(child)

    walk(body)
    del walk  # a recursive closure is a cycle, which would keep `found`'s nodes for the cyclic collector
    return found


# statement containers -> the fields holding statements, in source order (FunctionDef is not one:
# a nested function has its own names)
_STATEMENT_FIELDS: dict[type, tuple[str, ...]] = {
    cst.IndentedBlock: ("body",), cst.SimpleStatementSuite: ("body",), cst.SimpleStatementLine: ("body",),
    cst.If: ("body", "orelse"), cst.Else: ("body",), cst.For: ("body", "orelse"), cst.While: ("body", "orelse"),
    cst.With: ("body",), cst.Try: ("body", "handlers", "orelse", "finalbody"),
    cst.TryStar: ("body", "handlers", "orelse", "finalbody"), cst.ExceptHandler: ("body",),
    cst.ExceptStarHandler: ("body",), cst.Finally: ("body",), cst.ClassDef: ("body",),
    cst.Match: ("cases",), cst.MatchCase: ("body",),
}


def _classify(value: cst.BaseExpression, verdicts: dict, ctx: ConversionContext) -> str | None:
    """'fresh' (a new tensor), 'shared' (a tensor that may share memory) or None (unknown)."""
    def known(node: cst.BaseExpression) -> bool:
        kinds = verdicts.get(node.value) if isinstance(node, cst.Name) else None
        return bool(kinds) and all(kinds) and not any(k.startswith("maybe") for k in kinds)

    def maybe(node: cst.BaseExpression) -> bool:
        kinds = verdicts.get(node.value) if isinstance(node, cst.Name) else None
        return bool(kinds) and all(kinds)

    if isinstance(value, cst.Call):
        qualified = ctx.qualified_name(value.func)
        if qualified and qualified.startswith("torch."):
            rule = ctx.rules.lookup(qualified)
            if rule is None or rule.kind not in ("function",):
                return None
            return "shared" if qualified.rsplit(".", 1)[-1] in VIEWS else "fresh"
        if isinstance(value.func, cst.Attribute) and not (isinstance(value.func.value, cst.Name)
                                                         and value.func.value.value == "self"):
            method = value.func.attr.value
            if ctx.rules.method(method) is None or ctx.qualified_name(value.func) is not None \
                    or method in NOT_TENSORS:
                return None
            return "shared" if method in VIEWS else "fresh"
        return None
    if isinstance(value, cst.BinaryOperation):
        operands = (_classify(value.left, verdicts, ctx), _classify(value.right, verdicts, ctx))
        if known(value.left) or known(value.right) or any(kind in ("fresh", "shared") for kind in operands):
            return "fresh"
        return "maybe" if maybe(value.left) or maybe(value.right) or any(
            kind and kind.startswith("maybe") for kind in operands) else None
    if isinstance(value, cst.UnaryOperation):
        return "fresh" if known(value.expression) else "maybe" if maybe(value.expression) else None
    if isinstance(value, cst.Subscript) and (known(value.value) or maybe(value.value)):
        return "shared" if known(value.value) else "maybe-shared"
    if known(value):
        return "shared"
    return "maybe-shared" if maybe(value) else None  # an alias: the same tensor, if it is one


# ---------------------------------------------------------------------- statements
def setitem(original: cst.BaseSmallStatement, updated: cst.BaseSmallStatement, names: TensorNames | None,
            ctx: ConversionContext, variables: frozenset[str] = frozenset(), arrays: frozenset[str] = frozenset()):
    """`x[i] = v` -> `x = x.at[i].set(v)`, `x[i] += v` -> `x = x.at[i].add(v)`, for a tensor x;
    `y[y < 0] = v` (a mask of y's shape, a scalar v) -> `y = jnp.where(y < 0, ..., y)`, which jit takes.

    x is a local known to hold a tensor, or one that may (an argument) whose index shows an array, or
    a module attribute the constructor set to a tensor (`arrays`: `self.cache[:, :n] = k` ->
    `self.cache = self.cache.at[:, :n].set(k)`). `self.b[mask] = v` on a buffer or parameter
    (`variables`: an nnx.Variable, which takes item assignment itself) converts only for the mask.
    Returns (new statement, warnings), or None when the statement is not such an update.
    """
    if names is None:
        return None
    if isinstance(updated, cst.Assign):
        if len(updated.targets) != 1:
            return None
        target, method, value = updated.targets[0].target, "set", updated.value
        source_target, source_value = original.targets[0].target, original.value
    elif isinstance(updated, cst.AugAssign):
        target, value = updated.target, updated.value
        source_target, source_value = original.target, original.value
        method = AT_METHODS.get(code_of(updated.operator).strip())
        if method is None:
            return None
    else:
        return None
    if not isinstance(target, cst.Subscript) or not isinstance(source_target, cst.Subscript):
        return None
    owner = target.value
    mask = _same_shape_mask(source_target, ctx)
    if _self_attribute(owner) in variables:
        if not (mask and method == "set" and _scalar(source_value)):
            return None  # nnx.Variable's own __setitem__ does it
        whole = cst.Subscript(owner, [cst.SubscriptElement(cst.Index(cst.Ellipsis()))])
        mask_of_array = target.slice[0].slice.value.visit(_Replace(code_of(owner), whole))  # a Variable
        new = updated.with_changes(targets=[updated.targets[0].with_changes(target=whole)],  # compares not
                                   value=_where(mask_of_array, value, whole, owner))
        return new, []
    if _self_attribute(owner) in arrays:
        warnings = []
    elif not isinstance(owner, cst.Name) or owner.value not in names.tensors and not (
            owner.value in names.maybe and (mask or _array_index(target))):
        return None
    else:
        warnings = [w for w in [shared_warning(owner.value, names)] if w]
    if mask and method == "set" and _scalar(source_value):
        new_value = _where(target.slice[0].slice.value, value, owner, owner)
    else:
        if mask:
            warnings.append(f"a boolean mask in .at[] needs concrete values: this runs eagerly, not under "
                            f"jax.jit (with a scalar value, jnp.where({code_of(target.slice[0].slice.value)}, v, "
                            f"{code_of(owner)}) would)")
        at = cst.Subscript(cst.Attribute(owner, cst.Name("at")), target.slice)
        new_value = cst.Call(cst.Attribute(at, cst.Name(method)), [cst.Arg(value)])
    new = cst.Assign([cst.AssignTarget(owner)], new_value)
    return new, warnings


def _where(mask: cst.BaseExpression, value: cst.BaseExpression, old: cst.BaseExpression,
           owner: cst.BaseExpression) -> cst.Call:
    """jnp.where(mask, v in the array's dtype (torch casts it), old): `y[y < 0] = 0.5`."""
    cast = cst.Call(cst.Attribute(cst.Name("jnp"), cst.Name("asarray")),
                    [cst.Arg(value), cst.Arg(cst.Attribute(owner, cst.Name("dtype")))])
    return cst.Call(cst.Attribute(cst.Name("jnp"), cst.Name("where")), [cst.Arg(mask), cst.Arg(cast), cst.Arg(old)])


class _Replace(cst.CSTTransformer):
    """Every expression whose code is `code` -> `by`."""

    def __init__(self, code: str, by: cst.BaseExpression) -> None:
        super().__init__()
        self.code, self.by = code, by

    def leave_Attribute(self, original_node: cst.Attribute, updated_node: cst.Attribute) -> cst.BaseExpression:
        return self.by if code_of(original_node) == self.code else updated_node


def _self_attribute(node: cst.BaseExpression) -> str | None:
    if isinstance(node, cst.Attribute) and isinstance(node.value, cst.Name) and node.value.value == "self":
        return node.attr.value
    return None


def _array_index(target: cst.Subscript) -> bool:
    """x[:, 0], x[..., i], x[None]: an index only an array takes (a list or dict raises on it)."""
    elements = [e.slice for e in target.slice]
    if len(elements) == 1:
        index = elements[0]
        return isinstance(index, cst.Index) and isinstance(index.value, cst.Ellipsis) or (
            isinstance(index, cst.Index) and isinstance(index.value, cst.Name) and index.value.value == "None")
    return any(isinstance(e, cst.Slice) or isinstance(e.value, cst.Ellipsis)
               or (isinstance(e.value, cst.Name) and e.value.value == "None") for e in elements)


MASK_FUNCTIONS = ("isnan", "isinf", "isfinite", "isposinf", "isneginf", "signbit")


def _same_shape_mask(target: cst.Subscript, ctx: ConversionContext) -> bool:
    """Whether the index is a boolean mask of the array's own shape, as its source shows: a comparison
    with the array itself (`y[y < 0]`, `logits[logits < v[:, [-1]]]`: torch requires a mask to match the
    leading dims, and one computed from all of y has at least y's dims), torch.isnan(y) and the like,
    and &, |, ^, ~ of such masks with others."""
    if len(target.slice) != 1 or not isinstance(target.slice[0].slice, cst.Index):
        return False
    owner = code_of(target.value)

    def mask(node: cst.BaseExpression) -> bool:
        if isinstance(node, cst.Comparison):
            return code_of(node.left) == owner or any(code_of(c.comparator) == owner for c in node.comparisons)
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.BitAnd, cst.BitOr, cst.BitXor)):
            return mask(node.left) or mask(node.right)
        if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.BitInvert):
            return mask(node.expression)
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) \
                and node.func.attr.value in MASK_FUNCTIONS:
            qualified = ctx.qualified_name(node.func)
            if qualified == f"torch.{node.func.attr.value}":
                return bool(node.args) and code_of(node.args[0].value) == owner
            return qualified is None and code_of(node.func.value) == owner and not node.args  # y.isnan()
        return False

    return mask(target.slice[0].slice.value)


def _scalar(node: cst.BaseExpression) -> bool:
    """One number, as the source shows: 0.5, -1, float('-inf'), -float('Inf'), math.inf, v.sum(), v.item()."""
    if isinstance(node, (cst.Integer, cst.Float)):
        return True
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, (cst.Minus, cst.Plus)):
        return _scalar(node.expression)
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Name) and node.func.value in ("float", "int", "bool") \
            and len(node.args) == 1:
        return True
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and not node.args \
            and node.func.attr.value in WHOLE_REDUCTIONS:  # v.sum(), v.item(): one number
        return True
    return code_of(node) in ("math.inf", "math.pi", "math.e", "True", "False")


WHOLE_REDUCTIONS = ("item", "sum", "mean", "max", "min", "prod", "std", "var", "norm", "amax", "amin")


def shared_warning(name: str, names: TensorNames | None) -> str | None:
    if names is not None and (name in names.tensors or name in names.maybe) and name not in names.shared:
        return None
    return (f"torch updates {name} in place, so every tensor sharing its memory (a view, an alias, the "
            f"caller's tensor behind an argument) changes too; the converted code rebinds {name} only")


def rebind(updated: cst.Expr, target: cst.BaseAssignTargetExpression) -> cst.Assign:
    """The in-place method call statement `x.add_(y)` (already converted to `x + y`) as `x = x + y`; a
    variable's `self.w.uniform_(...)` as `self.w[...] = ...`."""
    target = cst.Name(target.value) if isinstance(target, cst.Name) else target
    return cst.Assign([cst.AssignTarget(target)], updated.value, semicolon=updated.semicolon)


# ---------------------------------------------------------------------- tuple results
VALUE_INDEX = {0: 0, 1: 1, -2: 0, -1: 1}


def pick_item(updated: cst.BaseExpression) -> cst.BaseExpression:
    """`(jnp.max(x, axis=1), jnp.argmax(x, axis=1))[0]` -> `jnp.max(x, axis=1)`; `.values`/`.indices` likewise.

    Only pairs the converter built from torch's (values, indices) results: both elements are jnp/jax calls.
    """
    if isinstance(updated, cst.Subscript) and _converted_pair(updated.value) and len(updated.slice) == 1:
        index = updated.slice[0].slice
        if isinstance(index, cst.Index):
            value = _int_literal(index.value)
            if value in VALUE_INDEX:
                return _element(updated.value, VALUE_INDEX[value], updated)
    if isinstance(updated, cst.Attribute) and _converted_pair(updated.value) \
            and updated.attr.value in ("values", "indices"):
        return _element(updated.value, 0 if updated.attr.value == "values" else 1, updated)
    return updated


def _element(pair: cst.Tuple, index: int, outer: cst.BaseExpression) -> cst.BaseExpression:
    return pair.elements[index].value.with_changes(lpar=outer.lpar, rpar=outer.rpar)


def _converted_pair(node: cst.BaseExpression) -> bool:
    return isinstance(node, cst.Tuple) and len(node.elements) == 2 and all(
        isinstance(e.value, cst.Call) and code_of(e.value.func).startswith(("jnp.", "jax.")) for e in node.elements)


def _int_literal(node: cst.BaseExpression) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus) \
            and isinstance(node.expression, cst.Integer):
        return -int(node.expression.value)
    return None
