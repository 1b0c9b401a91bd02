"""Queries over a module's submodules and parameters, outside weight initialisation.

    self.n = sum(p.numel() for p in self.parameters() if p.requires_grad)
    blocks = [m for m in self.modules() if isinstance(m, Block)]
    for m in model.modules(): ...

An nnx.Module has no `.parameters()` / `.modules()`; the same questions go to
nnx's graph functions: the parameters are the values of the nnx.Params under the
module (`parameters_of`, porter/emitted.py: a Variable shared by two
attributes counts once, as torch's parameters() counts a tied parameter once;
buffers and batch statistics are not Params), the modules come from `nnx.iter_modules` / `nnx.iter_children`.
A test `isinstance(m, nn.Linear)` on the loop's variable becomes one on the
class porter builds for nn.Linear (nnx.Linear), where exactly one torch layer
converts to that class.

Parameters are queried in comprehensions that a sum/len/any/... consumes only
(`for p in model.parameters(): p.requires_grad = False` changes them, and
`optim.Adam([p for p in model.parameters() if ...])` is the training pass's).
Every flax Param is trained, so `if p.requires_grad` goes.
"""

from __future__ import annotations

import collections

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext, code_of
from porter.convert.passes.analyze import MODULE_BASES

MODULE_ITERATORS = ("modules", "children", "named_modules", "named_children")
PARAMETER_ITERATORS = ("parameters", "named_parameters")
COMPREHENSIONS = (cst.GeneratorExp, cst.ListComp, cst.SetComp, cst.DictComp)
# what a query of `R` becomes (R: the receiver's code)
_REPLACEMENTS = {
    "modules": "(m for _, m in nnx.iter_modules({R}))",
    "children": "(m for _, m in named_children({R}))",
    "named_modules": "(('.'.join(map(str, path)), m) for path, m in nnx.iter_modules({R}))",
    "named_children": "named_children({R})",
    "parameters": "parameters_of({R})",
    "named_parameters": "(('.'.join(map(str, path)), p[...]) for path, p in nnx.iter_graph({R}) "
                        "if isinstance(p, nnx.Param))",
}
_NAMES_DIFFER = ("names are nnx's paths (a Linear's weight is kernel, a Sequential's layers sit under "
                 "layers.N), not torch's state_dict keys")
_FUNCTIONS_ARE_NO_CHILDREN = ("torch's activation and pooling layers convert to functions (nn.ReLU() to "
                              "jax.nn.relu), which are no submodules: those children are missing here (timm's "
                              "feature extraction then misses `act1`)")
_WARNINGS = {
    "named_modules": _NAMES_DIFFER,
    "named_parameters": _NAMES_DIFFER,
    "children": _FUNCTIONS_ARE_NO_CHILDREN,
    "named_children": _FUNCTIONS_ARE_NO_CHILDREN,
}
_ORDER_WARNING = ("nnx.iter_modules visits a module's children before it, torch's modules() the module first: "
                  "a list of nested matches comes in another order")
_ORDER_FREE = ("sum", "any", "all", "len", "set", "frozenset", "max", "min")  # consumers the order does not matter to


def query(iterable: cst.BaseExpression, in_module: bool, comprehension: bool) -> str | None:
    """The method of `R.modules()` / `R.parameters()` ... iterated here, or None. R: `self` or a chain
    (attributes, items) under it inside a module class, or a plain name (a model). `comprehension`: a
    comprehension a sum/len/any/... consumes (parameters are queried there only)."""
    if not m.matches(iterable, m.Call(func=m.Attribute(attr=m.Name()), args=[])):
        return None
    method = iterable.func.attr.value
    if method not in MODULE_ITERATORS and not (comprehension and method in PARAMETER_ITERATORS):
        return None
    receiver = iterable.func.value
    head = receiver
    while isinstance(head, (cst.Attribute, cst.Subscript)):  # self.blocks[0].parameters()
        head = head.value
    if not isinstance(head, cst.Name) or (head is not receiver and head.value != "self") \
            or (head.value == "self" and not in_module):
        return None
    return method


def replacement(method: str, receiver: cst.BaseExpression, ctx: ConversionContext) -> cst.BaseExpression:
    if method in ("children", "named_children"):
        ctx.need_helper("named_children")  # porter/emitted.py: each child once, as torch's
    elif method == "parameters":
        ctx.need_helper("parameters_of")
    return cst.parse_expression(_REPLACEMENTS[method].format(R=code_of(receiver)))


def order_free(call: cst.Call) -> cst.BaseExpression | None:
    """The comprehension of `sum(... for m in ...)`, `any([...])`: a consumer the order does not matter to."""
    # (`m.Call(func=m.Name(...), args=[m.Arg(m.GeneratorExp() | m.ListComp())])` spelled out: asked at every call
    # the rewrite visits, the matcher cost 2% of a conversion)
    func, args = call.func, call.args
    if type(func) is cst.Name and func.value in _ORDER_FREE and len(args) == 1 \
            and type(args[0].value) in (cst.GeneratorExp, cst.ListComp):
        return args[0].value
    return None


def warnings(method: str, loop: cst.CSTNode, order_matters: bool) -> list[str]:
    found = [_WARNINGS[method]] if method in _WARNINGS else []
    if method in ("modules", "named_modules") and order_matters and not isinstance(loop, cst.SetComp):
        found.append(_ORDER_WARNING)
    return found


def loop_variable(target: cst.BaseExpression, method: str) -> str | None:
    """The name bound to the module or parameter: `m`, or the second of `name, m`."""
    if method.startswith("named_") and isinstance(target, cst.Tuple) and len(target.elements) == 2:
        target = target.elements[1].value
    return target.value if isinstance(target, cst.Name) else None


def type_tests(scope: cst.CSTNode, variable: str) -> set[int]:
    """Ids of the class expressions in `isinstance(<variable>, C)` / `isinstance(<variable>, (C, D))`."""
    found: set[int] = set()
    for call in m.findall(scope, m.Call(func=m.Name("isinstance"), args=[m.Arg(m.Name(variable)), m.Arg()])):
        classes = call.args[1].value
        parts = [e.value for e in classes.elements] if isinstance(classes, cst.Tuple) else [classes]
        found |= {id(p) for p in parts if isinstance(p, (cst.Name, cst.Attribute))}
    return found


def requires_grad_test(test: cst.BaseExpression, variable: str) -> bool:
    return m.matches(test, m.Attribute(value=m.Name(variable), attr=m.Name("requires_grad")))


_TARGET_COUNTS: dict[int, tuple[object, collections.Counter]] = {}


def converted_class(qualified: str, ctx: ConversionContext) -> str | None:
    """The class porter builds for the torch layer class `qualified` (nn.Linear -> nnx.Linear), where no
    other torch layer converts to it (nn.Conv1d/2d/3d all become ChannelsFirstConv); else None."""
    if qualified in MODULE_BASES:
        return "nnx.Module"
    rule = ctx.rules.lookup(qualified)
    if rule is None or rule.kind != "layer":
        return None
    cached = _TARGET_COUNTS.get(id(ctx.rules))
    if cached is None or cached[0] is not ctx.rules:
        cached = _TARGET_COUNTS[id(ctx.rules)] = (ctx.rules, collections.Counter(
            r.target for r in ctx.rules.rules if r.kind == "layer"))
    if cached[1][rule.target] != 1:
        return None
    if rule.target.startswith("emitted."):
        ctx.need_helper(rule.target.removeprefix("emitted."))
        return rule.target.removeprefix("emitted.")
    return rule.target
