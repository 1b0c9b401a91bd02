"""Weight initialisation in a module's constructor: recognised so it can go.

torch models often re-initialise their layers after building them:

    for m in self.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    self.apply(self._init_weights)

In the converted model the layers are flax's, built with flax's initialisers;
this code cannot run there (an nnx.Module has no `.modules()` or `.apply`).
A port loads the original's weights anyway (porter weights), so the module
pass removes such statements from `__init__` and says so (PT005): what was
removed and that training from scratch starts from flax's initialisers.

Only statements that do nothing but initialise are removed: calls of
`torch.nn.init.*`, in-place fills of `.weight`/`.bias`/`.data`
(`m.weight.data.normal_(0, 0.01)`), `self.apply(...)`, calls of methods of
the class made only of such statements, and loops over `self.modules()` /
ifs / `with torch.no_grad()` blocks made only of them. A call of a local
function given a parameter, its result dropped (`init(self.conv.weight, **kw)`
where `init, kw = pick_initialiser(...)`), initialises in place too: why else
call it for nothing? (Not a builtin's or an imported function's call.)
"""

from __future__ import annotations

import builtins
import re

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext
from porter.convert.traverse import find_all

INPLACE_FILLS = ("normal_", "uniform_", "fill_", "zero_", "trunc_normal_", "exponential_", "bernoulli_")
PARAMETER_ATTRIBUTES = ("weight", "bias", "data", "in_proj_weight", "in_proj_bias")
# initialisers imported from elsewhere (timm's trunc_normal_, lecun_normal_, ...): named like torch.nn.init's
INIT_FUNCTION_NAME = re.compile(r"^(trunc_normal|lecun_normal|normal|uniform|zeros|ones|constant|xavier_\w+|"
                                r"kaiming_\w+|orthogonal|variance_scaling|trunc_normal_tf)_$")
BUILTIN_NAMES = frozenset(dir(builtins))  # print(self.fc.weight) initialises nothing
MODULE_ITERATORS = ("modules", "named_modules", "children", "named_children", "parameters", "named_parameters")


def init_only_methods(cls: cst.ClassDef, ctx: ConversionContext) -> set[str]:
    """Names of the methods of `cls` whose bodies only initialise weights (a docstring allowed)."""
    # the last definition of a name is the method (densenet's forward: two `pass` stubs under @overload, then it)
    methods = list({s.name.value: s for s in cls.body.body
                    if isinstance(s, cst.FunctionDef) and s.name.value != "__init__"}.values())
    found: set[str] = set()
    changed = True
    while changed:  # a method may call another init-only method
        changed = False
        for method in methods:
            name = method.name.value
            if name not in found and _is_docstring_and(_bare_returns_as_pass(method.body).body, ctx, found):
                found.add(name)
                changed = True
    ctx.other_methods |= {method.name.value for method in methods} - found
    return found


class _BareReturnsAsPass(cst.CSTTransformer):
    def leave_Return(self, original_node: cst.Return, updated_node: cst.Return):
        return cst.Pass() if updated_node.value is None else updated_node


def _bare_returns_as_pass(body: cst.BaseSuite) -> cst.BaseSuite:
    """A method's body with each bare `return` as `pass` (x-transformers' `init_`: `if l2norm_embed:
    nn.init.normal_(...); return`). Only to judge a method made of initialisation alone, removed as a whole:
    where such a method returns early changes nothing. (In __init__ an early return stays: it skips the rest.)"""
    if all(r.value is not None for r in find_all(body, cst.Return)):
        return body  # nothing to replace (and libcst's visit would rebuild every node)
    return body.visit(_BareReturnsAsPass())


def is_init_statement(statement: cst.CSTNode, ctx: ConversionContext, init_methods: set[str],
                      in_loop: bool = False) -> bool:
    """Whether `statement` only initialises weights (see the module docstring). In a loop over the
    modules, assignments to local names (`bound = 1 / math.sqrt(m.out_features)`) go with it."""
    if isinstance(statement, cst.SimpleStatementLine):
        return all(_is_init_small(s, ctx, init_methods, in_loop) or (in_loop and _assigns_locals(s))
                   for s in statement.body)
    if isinstance(statement, cst.For):
        return _iterates_modules(statement.iter) and statement.orelse is None \
            and _all_init(statement.body.body, ctx, init_methods, True)
    if isinstance(statement, cst.If):
        branches = [statement.body.body]
        orelse = statement.orelse
        while orelse is not None:
            branches.append(orelse.body.body)
            orelse = orelse.orelse if isinstance(orelse, cst.If) else None
        return all(_all_init(b, ctx, init_methods, in_loop) or _init_with_locals(b, ctx, init_methods)
                   for b in branches)
    if isinstance(statement, cst.With):
        return all((ctx.qualified_name(getattr(i.item, "func", i.item)) or "") == "torch.no_grad"
                   for i in statement.items) and _all_init(statement.body.body, ctx, init_methods, in_loop)
    return False


def _all_init(body, ctx, init_methods, in_loop: bool = False) -> bool:
    return bool(body) and all(is_init_statement(s, ctx, init_methods, in_loop) for s in body)


def _init_with_locals(body, ctx, init_methods) -> bool:
    """A branch that initialises with the help of local names it computes and uses itself (vit:
    `fan_in = ...; nn.init.trunc_normal_(w, std=math.sqrt(1 / fan_in))`): at least one statement
    initialises, the others only assign names those statements read. A branch of assignments alone
    (`if padding is None: padding = ...`) is no initialisation."""
    local_lines = [s for s in body if isinstance(s, cst.SimpleStatementLine) and all(_assigns_locals(x) for x in s.body)]
    initialising = [s for s in body if s not in local_lines]
    if not initialising or not all(is_init_statement(s, ctx, init_methods) for s in initialising):
        return False
    assigned = {n.value for s in local_lines for small in s.body for t in small.targets for n in _names(t.target)}
    used = {n.value for s in initialising for n in find_all(s, cst.Name)}
    return assigned <= used


def _assigns_locals(small: cst.BaseSmallStatement) -> bool:
    """`bound = ...`, `init, kwargs = ...`: assigns local names only."""
    return isinstance(small, cst.Assign) and all(_names(t.target) is not None for t in small.targets)


def _names(target: cst.BaseExpression) -> list[cst.Name] | None:
    if isinstance(target, cst.Name):
        return [target]
    if isinstance(target, cst.Tuple) and all(isinstance(e.value, cst.Name) for e in target.elements):
        return [e.value for e in target.elements]
    return None


def _is_docstring_and(body, ctx, init_methods) -> bool:
    if body and m.matches(body[0], m.SimpleStatementLine([m.Expr(m.SimpleString() | m.ConcatenatedString())])):
        body = body[1:]
    if body and m.matches(body[-1], m.SimpleStatementLine([m.Return(value=None)])):
        body = body[:-1]
    return _all_init(body, ctx, init_methods) or _init_with_locals(body, ctx, init_methods)


def _is_init_small(small: cst.BaseSmallStatement, ctx: ConversionContext, init_methods: set[str],
                   in_loop: bool = False) -> bool:
    if isinstance(small, (cst.Pass, cst.Continue)):
        return True
    if not isinstance(small, cst.Expr) or not isinstance(small.value, cst.Call):
        return False
    func = small.value.func
    qualified = ctx.qualified_name(func) or ""
    if qualified.startswith("torch.nn.init."):
        return True
    if isinstance(func, cst.Name):
        local_function = func.value not in BUILTIN_NAMES and func.value not in ctx.bound_imports
        return bool(INIT_FUNCTION_NAME.match(func.value)) or func.value == "named_apply" \
            or (local_function and _given_a_parameter(small.value))
    if not isinstance(func, cst.Attribute):
        return False
    method = func.attr.value
    if m.matches(func.value, m.Name("self")):
        return method == "apply" or method in init_methods
    if in_loop and type(func.value) is cst.Name and not small.value.args and _initialises_in_every_class(method, ctx):
        return True  # `for m in self.modules(): m.zero_init_last()` (timm's ResNet)
    receiver = func.value
    return method in INPLACE_FILLS and isinstance(receiver, cst.Attribute) \
        and receiver.attr.value in PARAMETER_ATTRIBUTES


def _initialises_in_every_class(method: str, ctx: ConversionContext) -> bool:
    """A method that only initialises in each module class of the file (read so far) defining it."""
    return method not in ctx.other_methods and any(method in each for each in ctx.init_methods.values())


def _given_a_parameter(call: cst.Call) -> bool:
    """`init(self.conv.weight, **kwargs)`: the first argument is a layer's parameter."""
    first = call.args[0] if call.args else None
    return first is not None and first.keyword is None and not first.star \
        and m.matches(first.value, m.Attribute(attr=m.OneOf(*map(m.Name, PARAMETER_ATTRIBUTES))))


def _iterates_modules(iterable: cst.BaseExpression) -> bool:
    """self.modules(), self.named_modules(), ... (also wrapped: enumerate(self.modules()))."""
    return any(m.matches(call.func, m.Attribute(value=m.Name("self"), attr=m.OneOf(*map(m.Name, MODULE_ITERATORS))))
               for call in m.findall(iterable, m.Call()))
