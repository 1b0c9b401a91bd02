"""Applies one rule to one call: bind the torch arguments to the rule's
signature, map each, and build the target expression."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from porter.convert import traverse
from porter.convert.context import ConversionContext, code_of
from porter.convert.layer_functions import target_parameters
from porter.convert.transforms import keyword_arg, NO_VALUE, VALUE_TRANSFORMS, Unsupported, literal, rule_expr
from porter.rules.loader import Rule

Value = cst.BaseExpression | list[cst.BaseExpression]


@dataclass
class Application:
    """What applying a rule produced: the new node and the warnings to report."""

    node: cst.BaseExpression
    warnings: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)  # assumptions, reported as PT007
    rebind: cst.Name | None = None  # an in-place method: the statement becomes `rebind = node`


@dataclass
class Site:
    """Where a rule is applied: the call, the tensor a method is called on, the rngs expression."""

    call: cst.Call
    receiver: cst.BaseExpression | None
    rngs: cst.BaseExpression | None  # set when the rule emits rngs
    ctx: ConversionContext
    owner_class: str | None = None  # the nn.Module class whose method holds the call
    statement: bool = False  # the call is a whole expression statement (`x.add_(y)`)
    rngs_in_scope: bool = False  # an `rngs: nnx.Rngs` argument is in scope (constructors, layer factories)
    method: str | None = None  # the owner class's method holding the call
    original: cst.Call | None = None  # the call as the user wrote it (before its arguments were converted)
    function: str | None = None  # the top-level function holding the call, outside classes


# torch's native functions and Tensor methods take numpy's keywords too (`x.sum(axis=1, keepdims=True)`);
# those written in Python do not (tests/test_rules.py recomputes this list from the installed torch)
NUMPY_KEYWORDS = {"axis": "dim", "keepdims": "keepdim"}
PYTHON_DEFINED = frozenset({"torch.Tensor.split", "torch.split", "torch.Tensor.unflatten", "torch.norm",
                            "torch.Tensor.norm", "torch.unique", "torch.Tensor.unique"})


def _torch_keyword(rule: Rule, name: str) -> str:
    if name not in NUMPY_KEYWORDS or rule.param(name) is not None or not takes_numpy_keywords(rule):
        return name
    return NUMPY_KEYWORDS[name]


def takes_numpy_keywords(rule: Rule) -> bool:
    """A rule for torch functions or Tensor methods written in C++ (`torch.sum`, `torch.Tensor.amax`)."""
    def native(source: str) -> bool:  # torch.X or torch.Tensor.X, not written in Python
        parts = source.split(".")
        return parts[0] == "torch" and (len(parts) == 2 or len(parts) == 3 and parts[1] == "Tensor") \
            and source not in PYTHON_DEFINED

    return all(native(source) for source in rule.source)


def bind(rule: Rule, call: cst.Call) -> dict[str, Value]:
    """torch argument name -> expression(s), as Python would bind them."""
    bound: dict[str, Value] = {}
    positional = [p for p in rule.signature if not p.keyword_only or p.var_positional]
    index = 0
    for arg in call.args:
        if arg.star == "*" and index < len(positional) and positional[index].var_positional:
            bound.setdefault(positional[index].name, []).append(arg)  # *layers passes straight through
            continue
        if arg.star:
            raise Unsupported(f"star arguments ({code_of(arg).strip(', ')}) cannot be matched to torch's signature")
        if arg.keyword is not None:
            name = _torch_keyword(rule, arg.keyword.value)
            if rule.param(name) is None:
                raise Unsupported(f"unknown keyword argument '{name}'")
            bound[name] = arg.value
            continue
        if index >= len(positional):
            raise Unsupported("more positional arguments than torch's signature takes")
        param = positional[index]
        if param.var_positional:
            bound.setdefault(param.name, []).append(arg.value)
        else:
            bound[param.name] = arg.value
            index += 1
    missing = [p.name for p in rule.signature if p.default is None and not p.var_positional and p.name not in bound]
    if missing:
        raise Unsupported(f"missing argument(s) {missing}")
    return bound


def _is_default(rule: Rule, name: str, value: Value) -> bool:
    default = rule.param(name).default
    if default is None or isinstance(value, list):
        return False
    given = literal(value)
    if given is NO_VALUE:
        return code_of(value) == default
    return given == literal(cst.parse_expression(default))


def _map_value(rule: Rule, name: str, value: Value, site: Site) -> Value:
    transform = rule.args[name].transform
    if transform == "pack":  # torch.ones(2, 3) -> jnp.ones((2, 3))
        if not isinstance(value, list):
            return value
        if len(value) == 1:
            return value[0].value if isinstance(value[0], cst.Arg) else value[0]  # ones(*x.shape) -> ones(x.shape)
        return cst.Tuple([cst.StarredElement(v.value) if isinstance(v, cst.Arg) else cst.Element(v) for v in value])
    if transform is None:
        return value
    fn = VALUE_TRANSFORMS[transform]
    if isinstance(value, list):
        return [v if isinstance(v, cst.Arg) else fn(v, site.ctx) for v in value]
    return fn(value, site.ctx)


def target_expression(rule: Rule, site: Site) -> cst.BaseExpression:
    root, _, rest = rule.target.partition(".")
    if root == "emitted":
        for helper in rule.helpers:
            site.ctx.need_helper(helper)
        return cst.Name(rest)
    if root == "method":  # the user's dot, with the line break before it in a chain spread over lines
        dot = site.call.func.dot if isinstance(site.call.func, cst.Attribute) else cst.Dot()
        return cst.Attribute(site.receiver, cst.Name(rest), dot=dot)
    return rule_expr(rule.target)


def apply_rule(rule: Rule, site: Site) -> Application:
    """The converted expression for `site.call`; raises Unsupported to leave it unchanged."""
    rebind = _inplace_target(site)
    site = as_function_call(rule, site)
    if rule.kind == "layer" and _hidden_arguments(rule, site.call):
        from porter.convert import layer_functions
        application = Application(layer_functions.call(rule, site))
    elif rule.builder:
        module, _, function = rule.builder.rpartition(".")
        application = getattr(importlib.import_module(module), function)(rule, site)
    elif rule.templates:
        application = _apply_template(rule, site)
    else:
        application = _apply_mapping(rule, site)
    if rule.assume:
        application.infos.append(rule.assume)
    application.rebind = rebind
    return application


def _hidden_arguments(rule: Rule, call: cst.Call) -> bool:
    """`nn.Conv2d(c, d, **kwargs)`: a star argument that torch's signature takes no `*layers` for."""
    return any(a.star == "**" or (a.star == "*" and not any(p.var_positional for p in rule.signature))
               for a in call.args)


def _inplace_target(site: Site) -> cst.Name | None:
    """`x.add_(y)` as a statement on a local name becomes `x = x + y`; elsewhere it is not converted.

    torch mutates the tensor; a JAX array is immutable, so the in-place form
    converts only where rebinding the name means the same thing to the code
    that follows.
    """
    func = site.call.func
    if site.receiver is None or not isinstance(func, cst.Attribute):
        return None
    name = func.attr.value
    if not name.endswith("_") or name.startswith("_"):
        return None
    original = site.original.func.value if site.original is not None and isinstance(
        site.original.func, cst.Attribute) else None
    if original is not None and _fresh_temporary(original, site):
        return None  # x.new_empty(shape).bernoulli_(p): nothing else sees the tensor, so the value is all
    if not site.statement:
        raise Unsupported(f"in-place {name}() whose result is used as a value; write it out of place")
    if not isinstance(site.receiver, cst.Name):
        raise Unsupported(f"in-place {name}() on {code_of(site.receiver)}: only a plain local name can be "
                          "rebound (an attribute or element would need its owner updated)")
    return site.receiver


# calls whose result is a new tensor nobody else holds
FRESH_METHODS = {"new_empty", "new_zeros", "new_ones", "new_full", "new_tensor", "clone"}
FRESH_FUNCTIONS = {"torch.empty", "torch.zeros", "torch.ones", "torch.full", "torch.empty_like", "torch.zeros_like",
                   "torch.ones_like", "torch.full_like", "torch.rand", "torch.randn", "torch.tensor", "torch.arange"}


def _fresh_temporary(node: cst.BaseExpression, site: Site) -> bool:
    if isinstance(node, cst.BinaryOperation):
        return True
    if isinstance(node, cst.Call):
        if isinstance(node.func, cst.Attribute) and node.func.attr.value in FRESH_METHODS \
                and site.ctx.qualified_name(node.func) is None:
            return True
        return site.ctx.qualified_name(node.func) in FRESH_FUNCTIONS
    return False


def torch_would_refuse(rule: Rule, call: cst.Call) -> bool:
    """`line.split()` under Tensor.split's rule: a required argument is missing, so torch would raise on a
    tensor; the receiver is something else (a str) and the call is none of porter's business."""
    if any(arg.star for arg in call.args):
        return False
    params = rule.signature[1:] if rule.kind != "method" and rule.signature and rule.signature[0].name == "input" \
        else rule.signature
    positional = sum(1 for arg in call.args if arg.keyword is None)
    keywords = {arg.keyword.value for arg in call.args if arg.keyword is not None}
    for param in params:
        if param.var_positional:  # *size, **kwargs: takes every positional argument left
            positional = 0
        elif positional and not param.keyword_only:
            positional -= 1
        elif param.default is None and param.name not in keywords:
            return True
    return False


def as_function_call(rule: Rule, site: Site) -> Site:
    """`x.abs()` under a rule whose signature starts with `input` binds as `torch.abs(x)`."""
    if site.receiver is None or rule.kind == "method" or not rule.signature or rule.signature[0].name != "input":
        return site
    call = site.call.with_changes(args=[cst.Arg(site.receiver), *site.call.args])
    return Site(call, None, site.rngs, site.ctx, site.owner_class, site.statement, site.rngs_in_scope, site.method,
                site.original)


_ATOMS = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Integer, cst.Float, cst.Imaginary, cst.SimpleString,
          cst.Tuple, cst.List, cst.Dict, cst.Set, cst.ListComp)


def fill_template(template: str, values: dict[str, cst.BaseExpression]) -> cst.BaseExpression:
    """The template's expression with each {name} replaced by values[name], parenthesised where needed."""
    sentinels = {f"__porter_{name}__": value for name, value in values.items()}
    text = template
    for name in values:
        text = text.replace("{" + name + "}", f"__porter_{name}__")
    tree = rule_expr(text)
    return traverse.visit(tree, _Fill(sentinels))  # libcst's visit, without rebuilding every node


_OPERATORS = frozenset({cst.BinaryOperation, cst.UnaryOperation, cst.Comparison, cst.ComparisonTarget,
                        cst.BooleanOperation, cst.IfExp, cst.Await})  # (libcst's node classes have no subclasses)


class _Fill(cst.CSTTransformer):
    def __init__(self, values: dict[str, cst.BaseExpression]) -> None:
        super().__init__()
        self.values = values
        self._operators: list[bool] = []  # per open node: is it an operator (its operands may need parentheses)

    def on_visit(self, node: cst.CSTNode) -> bool:
        operator = type(node) in _OPERATORS
        self._operators.append(operator)
        return super().on_visit(node)

    def on_leave(self, original_node, updated_node):
        self._operators.pop()
        return super().on_leave(original_node, updated_node)

    def leave_Attribute(self, original_node, updated_node):
        value = updated_node.value
        if not isinstance(value, _ATOMS) and not value.lpar:
            updated_node = updated_node.with_changes(value=_parenthesized(value))
        return updated_node

    def leave_Subscript(self, original_node, updated_node):
        value = updated_node.value
        if not isinstance(value, _ATOMS) and not value.lpar:
            updated_node = updated_node.with_changes(value=_parenthesized(value))
        return updated_node

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        value = self.values.get(original_node.value)
        if value is None:
            return updated_node
        in_operator = len(self._operators) > 1 and self._operators[-2]
        if in_operator and not isinstance(value, _ATOMS) and not value.lpar:
            return _parenthesized(value)
        return value


def _parenthesized(node: cst.BaseExpression) -> cst.BaseExpression:
    return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


def _apply_template(rule: Rule, site: Site) -> Application:
    """target = "expr": the first template that uses every argument the call passes with a non-default value."""
    bound = bind(rule, site.call)
    warnings = []
    explicit = set()
    for name, value in bound.items():
        if name in rule.drop:
            continue
        if name in rule.warn:
            if not _is_default(rule, name, value):
                warnings.append(rule.warn[name])
            continue
        if not _is_default(rule, name, value):
            explicit.add(name)
    for template in rule.templates:
        used = set(re.findall(r"{(\w+)}", template))
        if not explicit <= used:
            continue
        values = {}
        for name in used:
            if name == "self":
                values[name] = site.receiver
                continue
            value = bound[name] if name in bound else rule_expr(rule.param(name).default)
            if name in rule.args:
                value = _map_value(rule, name, value, site)
            if isinstance(value, list):
                value = cst.Tuple([cst.Element(v) for v in value]) if len(value) != 1 else value[0]
            values[name] = value
        return Application(fill_template(template, values), warnings)
    extra = sorted(explicit - set().union(*(set(re.findall(r"{(\w+)}", t)) for t in rule.templates)))
    raise Unsupported(f"{', '.join(f'{n}={_code(bound[n])}' for n in extra) or 'this combination of arguments'} "
                      f"is not supported (only the default)")


def _code(value: Value) -> str:
    return "..." if isinstance(value, list) else code_of(value)


def _apply_mapping(rule: Rule, site: Site) -> Application:
    bound = bind(rule, site.call)
    warnings = []
    positional: dict[int, Value] = {}
    keywords: list[tuple[str, cst.BaseExpression]] = []
    for param in rule.signature:
        name = param.name
        given = name in bound
        if name in rule.drop:
            continue
        if name in rule.warn:
            if given and not _is_default(rule, name, bound[name]):
                warnings.append(rule.warn[name])
            continue
        if name not in rule.args:
            if given and not _is_default(rule, name, bound[name]):
                param_dtype = _param_dtype(rule, param, bound[name], site)
                if param_dtype is None:
                    raise Unsupported(f"{name}={code_of(bound[name]) if not isinstance(bound[name], list) else '...'} "
                                      f"is not supported (only the default {param.default})")
                keywords.append(("param_dtype", param_dtype))
            continue
        mapping = rule.args[name]
        if not given and not mapping.always:
            continue
        value = bound[name] if given else rule_expr(param.default)
        mapped = _map_value(rule, name, value, site)
        if mapping.position is not None:
            positional[mapping.position] = mapped
        else:
            keywords.append((mapping.keyword, mapped))
    for keyword, source in rule.emit.items():
        keywords.append((keyword, site.rngs if keyword == "rngs" else rule_expr(source)))
    if site.receiver is not None and not rule.target.startswith("method."):
        positional[rule.receiver] = site.receiver
    return Application(_build(rule, site, positional, keywords), warnings)


def _param_dtype(rule: Rule, param, value: Value, site: Site) -> cst.BaseExpression | None:
    """A layer's `dtype=` (torch's parameters' dtype, None the default one) as flax's `param_dtype`, as the
    layer's constructor function does (layer_functions.py): `dtype=torch.bfloat16` -> `param_dtype=jnp.bfloat16`,
    `dtype=dtype` -> `param_dtype=dtype or jnp.float32`. None where the layer's target takes no param_dtype."""
    if rule.kind != "layer" or param.name != "dtype" or param.default != "None" or isinstance(value, list) \
            or "param_dtype" not in target_parameters(rule):
        return None
    qualified = site.ctx.qualified_name(value) if type(value) in (cst.Name, cst.Attribute) else None
    if qualified is not None and qualified.startswith("torch."):
        return VALUE_TRANSFORMS["dtype"](value, site.ctx)  # a torch dtype: its jnp one (or Unsupported)
    if m.matches(value, m.Attribute(value=m.Name("jnp"))):  # (torch.bfloat16, converted already)
        return value
    if type(value) not in (cst.Name, cst.Subscript):  # dtype=dtype, dtype=dd['dtype'] (not `w.dtype` of a layer
        return None                                     # rebuilt by hand: those methods stay reported)
    return cst.BooleanOperation(value, cst.Or(), rule_expr("jnp.float32"))


def _build(rule: Rule, site: Site, positional: dict[int, Value], keywords) -> cst.BaseExpression:
    target = target_expression(rule, site)
    args = []
    for position in sorted(positional):
        value = positional[position]
        args.extend(v if isinstance(v, cst.Arg) else cst.Arg(v) for v in (value if isinstance(value, list) else [value]))
    args.extend(keyword_arg(k, value) for k, value in keywords)
    if rule.kind == "constant":
        return target
    if rule.kind == "activation":
        if not args:
            return target
        return cst.Call(cst.Name("partial"), [cst.Arg(target), *args])
    return _keep_line_breaks(site.call, cst.Call(target, args))


def _keep_line_breaks(original: cst.Call, new: cst.Call) -> cst.Call:
    """A call written one argument per line stays that way."""
    separators = [a.comma for a in original.args
                  if isinstance(a.comma, cst.Comma) and isinstance(a.comma.whitespace_after, cst.ParenthesizedWhitespace)]
    if not separators or not new.args:
        return new
    last = original.args[-1].comma
    args = [a.with_changes(comma=separators[0]) for a in new.args[:-1]]
    args.append(new.args[-1].with_changes(comma=last))
    return new.with_changes(args=args, whitespace_before_args=original.whitespace_before_args)
