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
# AugAssign operator -> the `.at[]` method
AT_METHODS = {"+=": "add", "-=": "subtract", "*=": "multiply", "/=": "divide", "**=": "power"}


@dataclass
class TensorNames:
    """What a function's assignments say about its local names (flow-insensitive, conservative)."""

    tensors: set[str] = field(default_factory=set)  # every binding is a tensor
    shared: set[str] = field(default_factory=set)  # may share memory with another name (view, alias, argument)


def analyse_function(node: cst.FunctionDef, ctx: ConversionContext) -> TensorNames:
    names = TensorNames()
    verdicts: dict[str, list[str | None]] = {}  # name -> per binding: "fresh" | "shared" | None (not a tensor)
    for param in [*node.params.params, *node.params.kwonly_params, *node.params.posonly_params]:
        annotated = param.annotation is not None and ctx.qualified_name(param.annotation.annotation) == "torch.Tensor"
        verdicts.setdefault(param.name.value, []).append("shared" if annotated else None)
    for assign in _assignments(node.body):
        for target in assign.targets:
            if isinstance(target.target, cst.Name):
                verdicts.setdefault(target.target.value, []).append(_classify(assign.value, verdicts, ctx))
            elif isinstance(target.target, (cst.Tuple, cst.List)):
                for element in target.target.elements:
                    if isinstance(element.value, cst.Name):
                        verdicts.setdefault(element.value.value, []).append(None)
    for name, kinds in verdicts.items():
        if kinds and all(kinds):
            names.tensors.add(name)
        if "shared" in kinds:
            names.shared.add(name)
    return names


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
        return isinstance(node, cst.Name) and bool(verdicts.get(node.value)) and all(verdicts[node.value])

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
            if ctx.rules.method(method) is None or ctx.qualified_name(value.func) is not None:
                return None
            return "shared" if method in VIEWS else "fresh"
        return None
    if isinstance(value, cst.BinaryOperation):
        return "fresh" if known(value.left) or known(value.right) or _classify(value.left, verdicts, ctx) \
            or _classify(value.right, verdicts, ctx) else None
    if isinstance(value, cst.UnaryOperation):
        return "fresh" if known(value.expression) else None
    if isinstance(value, cst.Subscript) and known(value.value):
        return "shared"
    if known(value):
        return "shared"
    return None


# ---------------------------------------------------------------------- statements
def setitem(original: cst.BaseSmallStatement, updated: cst.BaseSmallStatement, names: TensorNames | None):
    """`x[i] = v` -> `x = x.at[i].set(v)`, `x[i] += v` -> `x = x.at[i].add(v)`, for a tensor x.

    Returns (new statement, warning or None), or None when the statement is not such an update.
    """
    if names is None:
        return None
    if isinstance(updated, cst.Assign):
        if len(updated.targets) != 1:
            return None
        target, method, value = updated.targets[0].target, "set", updated.value
    elif isinstance(updated, cst.AugAssign):
        target, value = updated.target, updated.value
        method = AT_METHODS.get(code_of(updated.operator).strip())
        if method is None:
            return None
    else:
        return None
    if not (isinstance(target, cst.Subscript) and isinstance(target.value, cst.Name)
            and target.value.value in names.tensors):
        return None
    name = target.value
    at = cst.Subscript(cst.Attribute(name, cst.Name("at")), target.slice)
    new_value = cst.Call(cst.Attribute(at, cst.Name(method)), [cst.Arg(value)])
    new = cst.Assign([cst.AssignTarget(cst.Name(name.value))], new_value)
    return new, shared_warning(name.value, names)


def shared_warning(name: str, names: TensorNames | None) -> str | None:
    if names is not None and name in names.tensors and name not in names.shared:
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
