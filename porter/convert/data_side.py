"""The data side of a script stays torch's (issue 18).

torch.utils.data is kept (PT011), and a Dataset or DataLoader takes torch tensors: so the statements whose
values reach one stay torch too. Which they are is decided by data flow, not by where they sit: from the
arguments of each torch.utils.data call (or of a Dataset subclass of the file) back through the
assignments that reach it, the in-place edits of those names anywhere (`images[labels == 3] += 0.5`,
`tokens[i, n:] = 0` in a loop), the names each of those reads, the arguments given to a function's
parameters and the values a function returns; a Dataset subclass of the file is left whole. Those
statements are left exactly as they are: drawn from torch's global generator, they hold the very same
numbers as the original's. One that runs the converted model (a teacher's logits put in a TensorDataset)
cannot stay torch: it is converted and reported (PT043).

The boundary is where a torch tensor meets the converted code: a batch of a loader (`for x, y in loader`,
`enumerate(loader)`, a comprehension's `for t, y in val_loader`, `x, y = batch`) or a torch-side tensor
read as an argument, an operand or the receiver of a tensor method in a converted statement becomes
`jnp.asarray(...)` there (`model(jnp.asarray(x))`, `jnp.asarray(labels[128:])`). Reads that mean the same
on both (`y.shape[0]`, `len(x)`, `print(x)`) stay as they are. The forward pass that the training pass
moves into its jitted step gets its batches converted at the step's call instead (unwrap below).
"""

from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext
from porter.convert.traverse import find_all

DATA_PREFIX = "torch.utils.data."
# builtins that take a torch tensor as it is: no boundary at their arguments
NEUTRAL_CALLS = frozenset({"print", "len", "str", "repr", "type", "isinstance", "id", "format", "hasattr",
                           "getattr", "range", "enumerate", "zip", "iter", "next", "sorted", "reversed"})
# a tensor's attributes and methods that read the same on a torch tensor in the converted code
# (`y.shape[0]`, `x.size(0)` -> `x.shape[0]`, `loss.item()`)
NEUTRAL_MEMBERS = frozenset({"shape", "ndim", "size", "dim", "item", "tolist", "numpy", "device"})
# methods of a tensor that give no tensor
NOT_TENSOR_METHODS = frozenset({"item", "tolist", "size", "dim", "numel", "shape", "ndim", "dtype", "device"})
# torch functions that give no tensor
NOT_TENSOR_PREFIXES = ("torch.utils.", "torch.cuda.", "torch.backends.", "torch.distributed.", "torch.nn.",
                       "torch.optim.")
NOT_TENSOR_FUNCTIONS = frozenset({"torch.device", "torch.Generator", "torch.manual_seed", "torch.finfo",
                                  "torch.iinfo", "torch.get_default_dtype", "torch.is_tensor", "torch.numel",
                                  "torch.Size", "torch.seed", "torch.initial_seed"})
# torch values the converted code computes as well: the data side does not keep them (`rank = dist.get_rank()`
# given to a DistributedSampler becomes jax.process_index()). A torch.device the data is moved to stays torch's.
CONVERTED_PREFIXES = ("torch.distributed.", "torch.cuda.", "torch.backends.", "torch.nn.", "torch.optim.",
                      "torch.set_default_")
# placement methods: converted, `x.to(device)` is x (porter/convert/devices.py)
PLACEMENT = frozenset({"to", "cuda", "cpu"})
# iterating one of these over a loader yields its batches
LOADER_WRAPPERS = frozenset({"tqdm", "iter"})
# draws that pick which rows a batch takes (`ix = torch.randint(len(data) - T, (B,))`): kept torch's where the
# indices are only iterated or used as indices (index_draws)
INDEX_DRAWS = frozenset({"torch.randint", "torch.randperm"})
RANDOM_DRAWS = frozenset({"torch.rand", "torch.randn", "torch.randint", "torch.randperm", "torch.normal",
                          "torch.bernoulli", "torch.multinomial", "torch.poisson", "torch.rand_like",
                          "torch.randn_like", "torch.randint_like"})
LINES = (cst.SimpleStatementLine, cst.SimpleStatementSuite)  # `x = 1` on its line, or after `if c:` on one line
# the nodes DataSide.statements holds: statements, and a Dataset subclass of the file as a whole
KEPT_NODES = frozenset({*LINES, cst.ClassDef})
SEEDS = ("torch.manual_seed", "torch.random.manual_seed")
_LAST = math.inf


@dataclass
class DataSide:
    """What the analysis found (ConversionContext.data_side); ids are of the original module's nodes."""

    statements: set[int] = field(default_factory=set)  # simple statement lines left as torch
    boundaries: set[int] = field(default_factory=set)  # reads (x, x[i], x.to(d)) that become jnp.asarray(...)
    words: frozenset[str] = frozenset()  # the names read at those boundaries (the rewrite's prefilter)
    tensors: list[str] = field(default_factory=list)  # torch-side tensors (the PT011 message)
    draws: bool = False  # a torch-side statement draws from torch's global generator
    first: cst.CSTNode | None = None  # the first torch.utils.data call: where PT011 is reported
    seeds: list[cst.Call] = field(default_factory=list)  # torch.manual_seed calls (kept too: PT011 may go there)
    arguments: set[int] = field(default_factory=set)  # cst.Args left as torch: given to a function for its loader
    # statements that would stay torch but run the converted model (PT043): id -> (statement, the model's name)
    conflicts: dict[int, tuple[cst.CSTNode, str]] = field(default_factory=dict)
    index_draws: list[cst.Call] = field(default_factory=list)  # batch-index draws kept (find_index_draws)
    index_names: set[str] = field(default_factory=set)  # the names they are bound to
    index_functions: set[str] = field(default_factory=set)  # the top-level functions holding one (get_batch)


def analyse(module: cst.Module, ctx: ConversionContext) -> DataSide | None:
    """The data side of `module` (the original), or None when it uses no torch.utils.data."""
    analysis = _Analysis(module, ctx)
    analysis.find_index_draws()
    if analysis.data.first is None and not analysis.data.index_draws:
        return None
    analysis.mark_torch_side()
    analysis.find_boundaries()
    return analysis.data


# PT011, said once per file: by the analysis where data feeds a loader (with what stays torch), else by the
# call pass at the first torch.utils.data call or seed it keeps
KEPT = ("torch's data loading and seeding are kept: the same batches in the same order as the original where "
        "each shuffle has a seeded generator of its own")
INDEX_DRAWS_KEPT = ("{names}, drawn by {draws} and used only as indices (which rows a batch takes), stay torch's "
                    "draws: torch's global generator, seeded by the torch.manual_seed the script keeps, a fresh draw "
                    "each time, so the converted script reads the very same rows as the original (jax.random could "
                    "not: another generator, other numbers) and `porter check --script` compares the two step by "
                    "step; the rows read become jax arrays")


def message(data: DataSide) -> str:
    """PT011's message for what the analysis keeps."""
    parts = [KEPT] if data.first is not None else []
    if data.index_draws:
        parts.append(INDEX_DRAWS_KEPT.format(names=", ".join(sorted(data.index_names)),
                                             draws=", ".join(sorted({_call_name(c) for c in data.index_draws}))))
    tensors = [t for t in data.tensors if t not in data.index_names]
    if tensors:
        drawn = ", drawn from torch's global generator: the very same numbers as the original where drawn " \
                "before a model is built (building one draws from it in torch only)" if data.draws else ""
        parts.append(f"the data they load ({', '.join(tensors)}) stays torch's{drawn}")
    if data.first is not None:
        parts.append("its batches become jax arrays where they meet the converted code")
    return "; ".join(parts)


def _call_name(call: cst.Call) -> str:
    from porter.convert.context import code_of
    return code_of(call.func)


def to_jax(node: cst.BaseExpression) -> cst.Call:
    return cst.Call(cst.Attribute(cst.Name("jnp"), cst.Name("asarray")), [cst.Arg(node)])


def unwrap(node: cst.CSTNode, names: set[str]) -> cst.CSTNode:
    """`node` with `jnp.asarray(x)` back to `x` for the given names: inside a train step, whose call
    converts its batches already."""
    return node.visit(_Unwrap(names)) if names else node


class _Unwrap(cst.CSTTransformer):
    def __init__(self, names: set[str]) -> None:
        super().__init__()
        self.names = names

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if m.matches(updated_node, m.Call(func=m.Attribute(m.Name("jnp"), m.Name("asarray")),
                                          args=[m.Arg(m.Name(), keyword=None, star="")])) \
                and updated_node.args[0].value.value in self.names:
            return updated_node.args[0].value
        return updated_node


# the statements of a scope, in source order ---------------------------------------------------------------
@dataclass
class _Unit:
    node: cst.CSTNode  # a SimpleStatementLine, or a For/With whose header binds names
    index: int
    top: bool  # runs whenever the scope does (not under an if, a loop, a try)
    binds: set[str] = field(default_factory=set)
    edits: set[str] = field(default_factory=set)  # names whose tensor it changes in place
    reads: set[str] = field(default_factory=set)
    sinks: list[cst.Call] = field(default_factory=list)  # torch.utils.data calls (Dataset classes of the file)
    calls: list[cst.Call] = field(default_factory=list)  # calls of the file's top-level functions by name
    returns: list[cst.BaseExpression] = field(default_factory=list)


@dataclass
class _Scope:
    node: cst.Module | cst.FunctionDef
    params: list[str]
    parent: _Scope | None
    units: list[_Unit] = field(default_factory=list)

    def binds(self, name: str) -> bool:
        return name in self.params or any(name in u.binds for u in self.units)


class _Analysis:
    def __init__(self, module: cst.Module, ctx: ConversionContext) -> None:
        self.ctx = ctx
        self.data = DataSide()
        self.dataset_classes: dict[str, cst.ClassDef] = {}
        self.module_classes: list[cst.ClassDef] = []  # the model's classes (not analysed: converted code)
        self.module_scope = _Scope(module, [], None)
        self.scopes = [self.module_scope]
        self.functions: dict[str, _Scope] = {}  # top-level functions by name
        self._collect(module.body, self.module_scope)
        for scope in self.scopes:
            self._units(_body(scope.node), scope, True)
        self.models = {name for scope in self.scopes for unit in scope.units
                       for name in unit.binds if self._builds_model(_value_of(unit.node, name))}

    # scopes and units -----------------------------------------------------------------------------------
    def _collect(self, statements, scope: _Scope) -> None:
        """Function scopes (not the model's code), and the file's Dataset subclasses."""
        for statement in statements:
            if isinstance(statement, cst.FunctionDef):
                params = statement.params
                names = [p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]]
                names += [p.name.value for p in (params.star_arg, params.star_kwarg) if isinstance(p, cst.Param)]
                function = _Scope(statement, names, self.module_scope)
                self.scopes.append(function)
                if scope is self.module_scope:
                    self.functions[statement.name.value] = function
                self._collect(_body(statement), function)
            elif isinstance(statement, cst.ClassDef):
                if statement.name.value in self.ctx.module_classes:
                    self.module_classes.append(statement)
                    continue
                if any((self.ctx.qualified_name(b.value) or "").startswith(DATA_PREFIX) for b in statement.bases):
                    self.dataset_classes[statement.name.value] = statement
                    continue
                self._collect(_body(statement), scope)
            else:
                self._collect(_inner_statements(statement), scope)

    def _units(self, statements, scope: _Scope, top: bool) -> None:
        for statement in statements:
            if isinstance(statement, LINES):
                scope.units.append(self._simple(statement, len(scope.units), top))
            elif isinstance(statement, (cst.For, cst.While, cst.If, cst.Try)):
                if isinstance(statement, cst.For):
                    scope.units.append(_Unit(statement, len(scope.units), False, _bound(statement.target),
                                             reads=_reads(statement.iter)))
                self._units(_inner_statements(statement), scope, False)
            elif isinstance(statement, cst.With):
                binds = set().union(*(_bound(i.asname.name) for i in statement.items if i.asname))
                scope.units.append(_Unit(statement, len(scope.units), top, binds,
                                         reads=set().union(*(_reads(i.item) for i in statement.items))))
                self._units(_body(statement), scope, top)
            elif isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
                scope.units.append(_Unit(statement, len(scope.units), top, {statement.name.value}))

    def _simple(self, line: cst.SimpleStatementLine | cst.SimpleStatementSuite, index: int, top: bool) -> _Unit:
        unit = _Unit(line, index, top)
        for small in line.body:
            if isinstance(small, (cst.Assign, cst.AnnAssign, cst.AugAssign)):
                targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
                for target in targets:
                    unit.binds |= _bound(target)
                    unit.edits |= _edited(target)
                    unit.reads |= _reads(target) - _bound(target) if not isinstance(small, cst.AugAssign) \
                        else _reads(target)
                unit.reads |= _reads(small.value) if small.value is not None else set()
            else:
                unit.reads |= _reads(small)
                if isinstance(small, cst.Expr):
                    unit.edits |= _edited_by_method(small.value)
                elif isinstance(small, cst.Return) and small.value is not None:
                    unit.returns.append(small.value)
        for call in find_all(line, cst.Call):
            if self._is_sink(call):
                unit.sinks.append(call)
                if self.data.first is None:
                    self.data.first = call
            elif isinstance(call.func, cst.Name):
                unit.calls.append(call)
            elif self.ctx.qualified_name(call.func) in SEEDS:
                self.data.seeds.append(call)
        return unit

    def find_index_draws(self) -> None:
        """`ix = torch.randint(len(data) - T, (B,))` where ix is only iterated (`for i in ix`, the loop
        variable only indexing: `data[i:i + T]`) or used as an index (`data[ix]`): the draw only chooses rows,
        and stays torch's (the same rows as the original, a fresh draw each time). Not in a function the model's
        code calls: traced under jit, a torch draw would be one constant."""
        traced = {c.func.value for cls in self.module_classes for c in find_all(cls, cst.Call)
                  if isinstance(c.func, cst.Name)}
        for scope in self.scopes:
            if isinstance(scope.node, cst.FunctionDef) and scope.node.name.value in traced:
                continue
            for unit in scope.units:
                line = unit.node
                if not isinstance(line, LINES) or len(line.body) != 1 or not isinstance(line.body[0], cst.Assign):
                    continue
                assign = line.body[0]
                if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name) \
                        or not isinstance(assign.value, cst.Call) \
                        or self.ctx.qualified_name(assign.value.func) not in INDEX_DRAWS \
                        or any(a.keyword is not None and a.keyword.value == "generator" for a in assign.value.args):
                    continue  # (a generator of its own is PT004 still: porter/convert/passes/calls.py)
                name = assign.targets[0].target
                if _only_indexes(scope.node, name):
                    self.data.statements.add(id(line))
                    self.data.index_draws.append(assign.value)
                    self.data.index_names.add(name.value)
                    if isinstance(scope.node, cst.FunctionDef) and scope.parent is self.module_scope:
                        self.data.index_functions.add(scope.node.name.value)

    def _builds_model(self, value: cst.BaseExpression | None) -> bool:
        """`SmallResNet(...)`, `nn.Linear(4, 3)`: a module the converted code builds."""
        if not isinstance(value, cst.Call):
            return False
        if isinstance(value.func, cst.Name) and value.func.value in self.ctx.module_classes:
            return True
        qualified = self.ctx.qualified_name(value.func) or ""
        return qualified.startswith("torch.nn.") and qualified.rsplit(".", 1)[-1][:1].isupper()

    def _is_sink(self, call: cst.Call) -> bool:
        if isinstance(call.func, cst.Name) and call.func.value in self.dataset_classes:
            return True
        return (self.ctx.qualified_name(call.func) or "").startswith(DATA_PREFIX)

    # the torch side: back from the data loading -----------------------------------------------------------
    def mark_torch_side(self) -> None:
        work: list[tuple[_Scope, str, float]] = []
        for cls in self.dataset_classes.values():
            self.data.statements |= {id(cls), *(id(s) for s in find_all(cls, LINES))}
        for scope in self.scopes:
            for unit in scope.units:
                for call in unit.sinks:  # (the call itself is kept: porter/convert/passes/calls.py, KEPT_TORCH)
                    for arg in call.args:
                        self._follow(scope, arg.value, unit.index, work)
        seen: set[tuple[int, str, float]] = set()
        while work:
            scope, name, at = work.pop()
            if (id(scope), name, at) in seen:
                continue
            seen.add((id(scope), name, at))
            if not scope.binds(name):
                if scope.parent is not None:
                    work.append((scope.parent, name, _LAST))
                continue
            if name in scope.params:
                self._arguments_of(scope, name, work)
            for unit in _reaching(scope, name, at):
                value = _value_of(unit.node, name)
                if value is not None and (isinstance(value, cst.Call) and self._is_sink(value) or self._converted(value)):
                    continue  # a Dataset (its arguments are followed), or what the converted code needs too
                if isinstance(unit.node, LINES):
                    self._mark(scope, unit, work)
                work += [(scope, read, unit.index) for read in unit.reads]
            for unit in scope.units:
                if name in unit.edits:
                    self._mark(scope, unit, work)

    def _model_called(self, node: cst.CSTNode) -> str | None:
        """The converted model (or layer) that `node` calls, `teacher(x)`, `model.encode(x)`."""
        for call in find_all(node, cst.Call):
            base = _base(call.func)
            if base is not None and base.value in self.models:
                return base.value
        return None

    def _converted(self, value: cst.BaseExpression) -> bool:
        """A value the converted code computes (a rank, the model): not the data's to keep."""
        if isinstance(value, cst.Call) and (self.ctx.qualified_name(value.func) or "").startswith(CONVERTED_PREFIXES):
            return True
        return any(isinstance(call.func, cst.Name) and call.func.value in self.ctx.module_classes
                   for call in find_all(value, cst.Call))

    def _mark(self, scope: _Scope, unit: _Unit, work: list) -> None:
        """The statement stays torch, and so does what it reads; unless it runs the converted model (PT043)."""
        model = self._model_called(unit.node)
        if model is not None:
            self.data.conflicts.setdefault(id(unit.node), (unit.node, model))
            return
        if id(unit.node) not in self.data.statements:
            self.data.statements.add(id(unit.node))
            self._follow(scope, unit.node, unit.index, work)

    def _follow(self, scope: _Scope, node: cst.CSTNode, at: float, work: list) -> None:
        """The names `node` reads must be torch's at `at`; so must what the file's functions it calls return
        (`x, y = make_data()`)."""
        work += [(scope, read, at) for read in _reads(node)]
        for call in find_all(node, cst.Call):
            function = self.functions.get(call.func.value) if isinstance(call.func, cst.Name) else None
            for returning in (u for u in function.units if u.returns) if function else ():
                self._mark(function, returning, work)

    def _arguments_of(self, function: _Scope, param: str, work: list) -> None:
        """`def make_loader(x, y): ...DataLoader(TensorDataset(x, y))`: what each call gives x and y stays torch
        (the whole statement when the call is all it computes: `loader = make_loader(images.float(), labels)`)."""
        name = function.node.name.value
        position = function.params.index(param)
        for scope in self.scopes:
            for unit in scope.units:
                for call in (c for c in unit.calls if c.func.value == name):
                    argument = _argument(call, param, position)
                    if argument is None:
                        continue
                    if any(_value_of(unit.node, n) is call for n in unit.binds) \
                            or len(unit.node.body) == 1 and m.matches(unit.node.body[0], m.Expr(call) | m.Return(call)):
                        self._mark(scope, unit, work)
                    else:
                        self.data.arguments |= {id(a) for a in call.args if a.value is argument}
                        self._follow(scope, argument, unit.index, work)

    # the boundary: forward through each scope ------------------------------------------------------------
    def find_boundaries(self) -> None:
        self.loaders = {id(s): self._loader_names(s) for s in self.scopes}
        for scope in self.scopes:  # a function's parameters given a loader (`evaluate(val_loader)`)
            for unit in scope.units:
                for call in unit.calls:
                    function = self.functions.get(call.func.value)
                    for position, param in enumerate(function.params if function else ()):
                        argument = _argument(call, param, position)
                        if argument is not None and self._is_loader(argument, scope):
                            self.loaders[id(function)].add(param)
        self.module_tensors: set[str] = set()
        self.words: set[str] = set()
        _Boundaries(self, self.module_scope).statements(_body(self.module_scope.node), set())
        for scope in self.scopes[1:]:
            own = {n for u in scope.units for n in u.binds} | set(scope.params)
            _Boundaries(self, scope).statements(_body(scope.node), self.module_tensors - own)
        self.data.words = frozenset(self.words)

    def _loader_names(self, scope: _Scope) -> set[str]:
        names: set[str] = set()
        for _ in range(2):  # `loader = DataLoader(...)`, `train_loader = make_loader(...)`, `loader = train_loader`
            for unit in scope.units:
                for small in unit.node.body if isinstance(unit.node, LINES) else ():
                    if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                            and isinstance(small.targets[0].target, cst.Name) \
                            and self._loader_value(small.value, names):
                        names.add(small.targets[0].target.value)
        return names

    def _loader_value(self, value: cst.BaseExpression, names: set[str], depth: int = 0) -> bool:
        """A DataLoader (or Dataset), a name holding one, or a call of the file's function returning one."""
        if isinstance(value, cst.Name):
            return value.value in names
        if not isinstance(value, cst.Call):
            return False
        if self._is_sink(value):
            return True
        function = self.functions.get(value.func.value) if isinstance(value.func, cst.Name) else None
        returned = [r for u in function.units for r in u.returns] if function and depth < 4 else []
        return bool(returned) and all(self._loader_value(r, self._loader_names_shallow(function), depth + 1)
                                      for r in returned)

    def _loader_names_shallow(self, scope: _Scope) -> set[str]:
        return {small.targets[0].target.value for u in scope.units
                for small in (u.node.body if isinstance(u.node, LINES) else ())
                if isinstance(small, cst.Assign) and len(small.targets) == 1
                and isinstance(small.targets[0].target, cst.Name) and isinstance(small.value, cst.Call)
                and self._is_sink(small.value)}

    def _is_loader(self, node: cst.BaseExpression, scope: _Scope) -> bool:
        if isinstance(node, cst.Call):
            return self._loader_value(node, set())
        if not isinstance(node, cst.Name):
            return False
        if node.value in self.loaders[id(scope)]:
            return True
        return scope.parent is not None and not scope.binds(node.value) \
            and node.value in self.loaders[id(self.module_scope)]

    def tensor_valued(self, node: cst.BaseExpression, env: set[str]) -> bool:
        """Whether `node`, in a torch-side statement, gives a tensor (not a loader, a count, a generator)."""
        if isinstance(node, cst.Name):
            return node.value in env
        if isinstance(node, cst.Call):
            qualified = self.ctx.qualified_name(node.func)
            if qualified is not None:
                return qualified.startswith("torch.") and not qualified.startswith(NOT_TENSOR_PREFIXES) \
                    and qualified not in NOT_TENSOR_FUNCTIONS
            if isinstance(node.func, cst.Name):  # `x, y = make_data()`, what it returns kept as torch
                function = self.functions.get(node.func.value)
                return function is not None and any(u.returns and id(u.node) in self.data.statements
                                                    for u in function.units)
            return isinstance(node.func, cst.Attribute) and node.func.attr.value not in NOT_TENSOR_METHODS \
                and self.tensor_valued(node.func.value, env)
        if isinstance(node, cst.Subscript):
            return self.tensor_valued(node.value, env)
        if isinstance(node, cst.BinaryOperation):
            return self.tensor_valued(node.left, env) or self.tensor_valued(node.right, env)
        if isinstance(node, cst.Comparison):
            return self.tensor_valued(node.left, env) or any(self.tensor_valued(c.comparator, env)
                                                             for c in node.comparisons)
        if isinstance(node, cst.UnaryOperation):
            return self.tensor_valued(node.expression, env)
        if isinstance(node, cst.IfExp):
            return self.tensor_valued(node.body, env) or self.tensor_valued(node.orelse, env)
        return False


class _Boundaries:
    """One scope's statements in order, with the names that may hold a torch tensor at each point (a may
    analysis: a jax array taken for one only gets a jnp.asarray that does nothing)."""

    def __init__(self, analysis: _Analysis, scope: _Scope) -> None:
        self.analysis, self.scope, self.data = analysis, scope, analysis.data

    def statements(self, statements, env: set[str]) -> set[str]:
        for statement in statements:
            env = self.statement(statement, env)
        return env

    def statement(self, statement: cst.CSTNode, env: set[str]) -> set[str]:
        if isinstance(statement, LINES):
            return self.simple(statement, env)
        if isinstance(statement, cst.For):
            return self.loop(statement, env)
        if isinstance(statement, cst.While):
            self.expression(statement.test, env, False)
            return self.loop(statement, env)
        if isinstance(statement, cst.If):
            self.expression(statement.test, env, False)
            after = self.statements(_block(statement.body), set(env))
            orelse = statement.orelse
            if isinstance(orelse, cst.If):
                return after | self.statement(orelse, set(env))
            return after | (self.statements(_block(orelse.body), set(env)) if orelse else env)
        if isinstance(statement, cst.With):
            for item in statement.items:
                self.expression(item.item, env, False)
            return self.statements(_block(statement.body), env)
        if isinstance(statement, cst.Try):
            after = self.statements(_block(statement.body), set(env))
            for handler in statement.handlers:
                after |= self.statements(_block(handler.body), set(env))
            for block in (statement.orelse, statement.finalbody):
                if block is not None:
                    after = self.statements(_block(block.body), after)
            return after
        return env  # definitions: their own scopes

    def loop(self, loop: cst.For | cst.While, env: set[str]) -> set[str]:
        inside = set(env)
        batches: set[str] = set()
        if isinstance(loop, cst.For):
            batches = self.batches(loop.target, loop.iter, env)
            if not batches:
                self.expression(loop.iter, env, False)
            inside = (inside - _bound(loop.target)) | batches
        after = inside
        for _ in range(2):  # what one pass leaves in may reach the next one's start
            after = self.statements(_block(loop.body), after | inside)
        if loop.orelse is not None:
            after = self.statements(_block(loop.orelse.body), after)
        return env | after

    def batches(self, target: cst.BaseExpression, iterable: cst.BaseExpression, env: set[str]) -> set[str]:
        """The names bound to a loader's batches by `for TARGET in ITERABLE` (enumerate, zip, tqdm too)."""
        if self.analysis._is_loader(iterable, self.scope):
            return _bound(target)
        if not isinstance(iterable, cst.Call) or not isinstance(iterable.func, cst.Name) or not iterable.args:
            return set()
        name, first = iterable.func.value, iterable.args[0].value
        if name in LOADER_WRAPPERS:
            return self.batches(target, first, env)
        if name == "enumerate" and isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == 2:
            return self.batches(target.elements[1].value, first, env)
        if name == "zip" and isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == len(iterable.args):
            return set().union(*(self.batches(e.value, a.value, env)
                                 for e, a in zip(target.elements, iterable.args)))
        return set()

    def next_batch(self, target: cst.BaseExpression, value: cst.BaseExpression, env: set[str]) -> set[str]:
        """`x, y = next(iter(loader))`: one batch."""
        if m.matches(value, m.Call(func=m.Name("next"), args=[m.Arg()])):
            return self.batches(target, value.args[0].value, env)
        return set()

    def simple(self, line: cst.SimpleStatementLine | cst.SimpleStatementSuite, env: set[str]) -> set[str]:
        torch_side = id(line) in self.data.statements
        if not torch_side and any(_edits(small) & env for small in line.body):
            self.data.statements.add(id(line))  # `x[x < 0] = 0` on a batch: edited in place, as torch
            return env
        for small in line.body:
            if torch_side:
                env = self.torch_bindings(small, env)
            else:
                env = self.converted(small, env)
        return env

    def torch_bindings(self, small: cst.BaseSmallStatement, env: set[str]) -> set[str]:
        if not isinstance(small, (cst.Assign, cst.AnnAssign)) or small.value is None:
            return env
        targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
        for target in targets:
            for name, value in _pairs(target, small.value):
                if value is not None and self.analysis.tensor_valued(value, env) \
                        and name not in self.analysis.loaders[id(self.scope)]:
                    env = env | {name}
                    if self.scope.parent is None:
                        self.analysis.module_tensors.add(name)
                    if name not in self.data.tensors:
                        self.data.tensors.append(name)
                else:
                    env = env - {name}
        for call in find_all(small.value, cst.Call):
            if self.analysis.ctx.qualified_name(call.func) in RANDOM_DRAWS:
                self.data.draws = True
        return env

    def converted(self, small: cst.BaseSmallStatement, env: set[str]) -> set[str]:
        if isinstance(small, (cst.Assign, cst.AnnAssign)) and small.value is not None:
            targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
            for target in targets:
                self.target_parts(target, env)
            self.expression(small.value, env, False)
            for target in targets:
                for name, value in _pairs(target, small.value):
                    env = env | {name} if value is not None and _torch_value(value, env) else env - {name}
                env |= self.next_batch(target, small.value, env)
            return env
        if isinstance(small, cst.AugAssign):
            self.target_parts(small.target, env)
            self.expression(small.value, env, True)
            return env
        for child in _children(small):
            self.expression(child, env, False)
        return env

    def target_parts(self, target: cst.BaseExpression, env: set[str]) -> None:
        if isinstance(target, cst.Subscript):
            self.expression(target.value, env, False)
            for element in target.slice:
                self.expression(element.slice, env, True)
        elif isinstance(target, cst.Attribute):
            self.expression(target.value, env, False)
        elif isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                self.target_parts(element.value, env)

    def expression(self, node: cst.CSTNode, env: set[str], wrap: bool) -> None:
        """Records the torch values that `node` hands to converted code (wrap: `node`'s own value goes there)."""
        if _torch_value(node, env):
            if wrap:
                self.data.boundaries.add(id(node))
                self.analysis.words |= _reads(node)
            if isinstance(node, cst.Subscript):  # (`x.to(device)`'s device: JAX places arrays itself)
                for element in node.slice:
                    self.expression(element.slice, env, False)
            return
        if isinstance(node, cst.Attribute):
            self.expression(node.value, env, node.attr.value not in NEUTRAL_MEMBERS)
        elif isinstance(node, cst.Call):
            self.call(node, env)
        elif isinstance(node, cst.BinaryOperation):
            self.expression(node.left, env, True)
            self.expression(node.right, env, True)
        elif isinstance(node, cst.Comparison):
            for operand in (node.left, *(c.comparator for c in node.comparisons)):
                self.expression(operand, env, True)
        elif isinstance(node, cst.UnaryOperation):
            self.expression(node.expression, env, True)
        elif isinstance(node, cst.Subscript):  # of a converted value: its indices meet it
            self.expression(node.value, env, True)
            for element in node.slice:
                self.expression(element.slice, env, True)
        elif isinstance(node, cst.IfExp):
            self.expression(node.test, env, False)
            self.expression(node.body, env, wrap)
            self.expression(node.orelse, env, wrap)
        elif isinstance(node, (cst.Tuple, cst.List, cst.Set)):  # `torch.cat([x, y])`: in the converted call too
            for element in node.elements:
                self.expression(element.value, env, wrap and not isinstance(element, cst.StarredElement))
        elif isinstance(node, cst.Dict):
            for element in node.elements:
                if isinstance(element, cst.DictElement):
                    self.expression(element.key, env, False)
                self.expression(element.value, env, wrap and isinstance(element, cst.DictElement))
        elif isinstance(node, (cst.ListComp, cst.SetComp, cst.GeneratorExp, cst.DictComp)):
            self.comprehension(node, env, wrap)
        elif isinstance(node, cst.Lambda):
            params = {p.name.value for p in node.params.params}
            self.expression(node.body, env - params, False)
        else:
            for child in _children(node):
                self.expression(child, env, False)

    def call(self, node: cst.Call, env: set[str]) -> None:
        func = node.func
        qualified = self.analysis.ctx.qualified_name(func) or ""
        if qualified.startswith(DATA_PREFIX) or qualified in NOT_TENSOR_FUNCTIONS:
            return  # kept torch: its arguments stay torch's
        if isinstance(func, cst.Attribute) and not qualified:
            self.expression(func.value, env, func.attr.value not in NEUTRAL_MEMBERS)
        else:
            self.expression(func, env, False)
        neutral = isinstance(func, cst.Name) and (func.value in NEUTRAL_CALLS or func.value in _emitted_names()) \
            or isinstance(func, cst.Attribute) and _base(func) is not None \
            and _base(func).value in self.analysis.ctx.bound_imports  # np.mean(y), jnp.asarray(x)
        for arg in node.args:
            if id(arg) not in self.data.arguments:  # (`make_loader(images, labels)`: torch's for its loader)
                self.expression(arg.value, env, not neutral and not arg.star)

    def comprehension(self, node, env: set[str], wrap: bool) -> None:
        inner = set(env)
        part = node.for_in
        while part is not None:
            self.expression(part.iter, inner, False)
            inner = (inner - _bound(part.target)) | self.batches(part.target, part.iter, inner)
            for condition in part.ifs:
                self.expression(condition.test, inner, False)
            part = part.inner_for_in
        if isinstance(node, cst.DictComp):
            self.expression(node.key, inner, False)
            self.expression(node.value, inner, wrap)
        else:
            self.expression(node.elt, inner, wrap)


@functools.cache
def _emitted_names() -> frozenset[str]:
    """The helpers porter emits (porter/emitted*.py): they take host arrays, torch's included (`shard_batch`),
    so converting a converted file again changes nothing. Read from their source: importing them imports jax."""
    names = set()
    for path in Path(__file__).parent.parent.glob("emitted*.py"):
        names |= {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body
                  if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return frozenset(names)


# batch indices --------------------------------------------------------------------------------------------
def _only_indexes(scope: cst.CSTNode, binding: cst.Name) -> bool:
    """Whether every other use of `binding`'s name in `scope` is as an index or the iterable of a loop (or
    comprehension) whose variables are only used as indices."""
    loops = find_all(scope, (cst.For, cst.CompFor))
    names, allowed = {binding.value}, {id(binding)}
    changed = True
    while changed:  # the loop variables of a loop over the indices are indices too
        changed = False
        for loop in loops:
            if isinstance(loop.iter, cst.Name) and loop.iter.value in names and id(loop.iter) not in allowed:
                allowed.add(id(loop.iter))
                for target in find_all(loop.target, cst.Name):
                    allowed.add(id(target))
                    names.add(target.value)
                changed = True
    indexing = {id(n) for element in find_all(scope, cst.SubscriptElement) for n in find_all(element, cst.Name)}
    uses = [n for n in find_all(scope, cst.Name) if n.value in names and n is not binding]
    return bool(uses) and all(id(n) in allowed or id(n) in indexing for n in uses)


# helpers on nodes --------------------------------------------------------------------------------------------
def _inner_statements(statement: cst.CSTNode) -> list[cst.CSTNode]:
    """The statements directly inside a compound statement (bodies, else, handlers, finally)."""
    found = []
    for block in (getattr(statement, "body", None), getattr(statement, "orelse", None),
                  getattr(statement, "finalbody", None), *getattr(statement, "handlers", ())):
        while isinstance(block, cst.If):  # elif
            found += _block(block.body)
            block = block.orelse
        if isinstance(block, (cst.Else, cst.Finally, cst.ExceptHandler)):
            block = block.body
        if isinstance(block, (cst.IndentedBlock, cst.SimpleStatementSuite)):
            found += _block(block)
    return found


def _children(node: cst.CSTNode) -> list[cst.CSTNode]:
    return [c for c in node.children if isinstance(c, cst.CSTNode)]


def _reads(node: cst.CSTNode) -> set[str]:
    """The names `node` reads (attribute names and keywords aside)."""
    names: set[str] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Name):
            names.add(current.value)
        elif isinstance(current, cst.Attribute):
            stack.append(current.value)
        elif isinstance(current, cst.Arg):
            stack.append(current.value)
        else:
            stack += _children(current)
    return names


def _names(target: cst.CSTNode) -> list[str]:
    """The names a target binds, in order."""
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        return [n for e in target.elements for n in _names(e.value)]
    if isinstance(target, cst.StarredElement):
        return _names(target.value)
    return []


def _bound(target: cst.CSTNode) -> set[str]:
    return set(_names(target))


def _base(node: cst.CSTNode) -> cst.Name | None:
    while isinstance(node, (cst.Subscript, cst.Attribute)):
        node = node.value
    return node if isinstance(node, cst.Name) else None


def _edited(target: cst.CSTNode) -> set[str]:
    """`x[i] = v`, `x.data = v`: the tensor x is changed in place."""
    if isinstance(target, (cst.Subscript, cst.Attribute)):
        base = _base(target)
        return {base.value} if base is not None else set()
    if isinstance(target, (cst.Tuple, cst.List)):
        return set().union(*(_edited(e.value) for e in target.elements))
    return set()


def _edited_by_method(value: cst.BaseExpression) -> set[str]:
    """`x.clamp_(-1, 1)`, `x[:, 0].normal_()`: an in-place method (a trailing underscore) changes x."""
    if isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute):
        attr = value.func.attr.value
        base = _base(value.func.value)
        if attr.endswith("_") and not attr.endswith("__") and base is not None:
            return {base.value}
    return set()


def _edits(small: cst.BaseSmallStatement) -> set[str]:
    """The names whose tensor a statement changes in place."""
    if isinstance(small, cst.Assign):
        return set().union(*(_edited(t.target) for t in small.targets))
    if isinstance(small, (cst.AugAssign, cst.AnnAssign)):
        return _edited(small.target)
    if isinstance(small, cst.Expr):
        return _edited_by_method(small.value)
    return set()


def _body(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The statements of a module, a function or a class."""
    return list(node.body) if isinstance(node, cst.Module) else _block(node.body)


def _block(block: cst.BaseSuite) -> list[cst.CSTNode]:
    """A block's statements; a one-line block (`def f(): return x`) is one statement of its own."""
    return list(block.body) if isinstance(block, cst.IndentedBlock) else [block]


def _pairs(target: cst.BaseExpression, value: cst.BaseExpression) -> list[tuple[str, cst.BaseExpression | None]]:
    """(name, the value it gets) for each name a target binds: `x, y = a, b` pairs them up; `x, y = batch`
    gives both the whole value (a torch batch unpacks into torch tensors)."""
    if isinstance(target, cst.Name):
        return [(target.value, value)]
    if isinstance(target, (cst.Tuple, cst.List)):
        if isinstance(value, (cst.Tuple, cst.List)) and len(value.elements) == len(target.elements) \
                and not any(isinstance(e, cst.StarredElement) for e in [*target.elements, *value.elements]):
            return [p for t, v in zip(target.elements, value.elements) for p in _pairs(t.value, v.value)]
        return [(name, value) for name in _names(target)]
    return []


def _torch_value(node: cst.CSTNode, env: set[str]) -> bool:
    """A name that may hold a torch tensor, a subscript of one (`images[128:]`, `batch[0]`), or one moved to
    a device (`x.to(device)`, `x.cuda()`: the converted code drops the move)."""
    if isinstance(node, cst.Subscript):
        return _torch_value(node.value, env)
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value in PLACEMENT \
            and not any(a.keyword is not None and a.keyword.value == "dtype" or _dtype(a.value) for a in node.args):
        return _torch_value(node.func.value, env)
    return isinstance(node, cst.Name) and node.value in env


def _dtype(node: cst.BaseExpression) -> bool:
    """`torch.float32`, `x.dtype`: a dtype (x.to(dtype) converts the values, it does not only move them)."""
    return isinstance(node, cst.Attribute) and (node.attr.value == "dtype" or _base(node) is not None
                                                and _base(node).value in ("torch", "jnp", "np"))


def _value_of(statement: cst.CSTNode, name: str) -> cst.BaseExpression | None:
    """The value a simple statement binds `name` to (None if not by a plain assignment)."""
    for small in statement.body if isinstance(statement, LINES) else ():
        if isinstance(small, (cst.Assign, cst.AnnAssign)) and small.value is not None:
            targets = [t.target for t in small.targets] if isinstance(small, cst.Assign) else [small.target]
            for target in targets:
                for bound, value in _pairs(target, small.value):
                    if bound == name:
                        return value
    return None


def _reaching(scope: _Scope, name: str, at: float) -> list[_Unit]:
    """The bindings of `name` before position `at` that may reach it: back to the last unconditional one."""
    found = []
    for unit in reversed(scope.units):
        if unit.index >= at or name not in unit.binds:
            continue
        found.append(unit)
        if unit.top:
            break
    return found


def _argument(call: cst.Call, param: str, position: int) -> cst.BaseExpression | None:
    positional = [a for a in call.args if a.keyword is None and not a.star]
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == param:
            return arg.value
    if position < len(positional) and len(positional) == len([a for a in call.args if a.keyword is None]):
        return positional[position].value
    return None
