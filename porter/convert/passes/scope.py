"""The traversal state the rewrite passes share: where we are, and positions
of the original nodes (so every diagnostic names the user's line).

Positions come from porter/convert/source_index.py (the same numbers as
libcst's PositionProvider, at a fraction of the cost); `get_metadata(
PositionProvider, node)` still works. The pipeline skips statements that hold
none of the pass's `trigger_words()`: a pass that reacts to a new identifier
adds it to its class's TRIGGER_WORDS (or to `trigger_words()` when it depends
on what the pass has seen); tests/test_convert_properties.py checks that
skipping never changes the output.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterable

import libcst as cst
from libcst.metadata import PositionProvider

from porter.convert.context import CONVENTIONAL_ALIASES, ConversionContext
from porter.convert.precedence import fit_all_operands, fit_operands, keep_parentheses
from porter.convert.source_index import STATEMENT_TYPES, SourceIndex
from porter.convert.passes.concerns import Final, hook_table
from porter.convert.transforms import expr, keyword_arg

TENSOR_METHOD_PREFIX = "torch.Tensor."


_TENSOR_METHODS: dict[int, tuple[object, frozenset[str]]] = {}


def _tensor_methods(rules) -> frozenset[str]:
    """Names of the tensor methods the rules convert (x.view(...), x.sum(...)), once per rule set."""
    found = _TENSOR_METHODS.get(id(rules))
    if found is None or found[0] is not rules:
        found = _TENSOR_METHODS[id(rules)] = (rules, frozenset(
            symbol[len(TENSOR_METHOD_PREFIX):] for symbol in rules.by_symbol if symbol.startswith(TENSOR_METHOD_PREFIX)))
    return found[1]


@dataclass
class LoopOptions:
    """What concerns other than the training loops' change about converting a training loop (distributed)."""

    converts_checkpoints: bool = True  # False: checkpoints are written another way (torch.save kept by training)
    batches_as_they_are: bool = False  # True: the step's call takes the batch names without jnp.asarray
    last_batch: list[str] = field(default_factory=list)  # the batch arguments of the loop converted last
    # called with (original loop, converted loop, len(ctx.training_steps) before it) after each loop
    adapters: list = field(default_factory=list)


class ScopedTransformer(cst.CSTTransformer):
    METADATA_DEPENDENCIES = ()
    # identifiers this class's leave_/visit_ methods react to beyond the torch names, module classes,
    # layer factories and tensor methods every pass sees (union over the class hierarchy)
    TRIGGER_WORDS: frozenset[str] = frozenset()

    def __init__(self, ctx: ConversionContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []
        self._bodies = FunctionBodies(ctx)
        self._index: SourceIndex | None = None
        self._base_words: tuple[object, frozenset[str]] | None = None
        self.training_loops = LoopOptions()
        # original statements a concern replaces whole, decided when the traversal entered their parent (weight
        # initialisation): skipped unvisited, and at their leave replaced by what the function returns
        self.replaced_unvisited: dict[int, Callable[[cst.CSTNode, cst.CSTTransformer], object]] = {}
        # imported names and attributes another concern converts in the calls rewrite's place (module queries'
        # isinstance tests): (original, updated) -> the replacement
        self.kept_depth = 0  # > 0 inside a call whose arguments stay as they are (torch's data loading, a folded clip)
        self.statement_calls: set[int] = set()  # ids of calls that are whole expression statements
        self.replaced_references: dict[int, Callable[[cst.CSTNode, cst.CSTNode], cst.BaseExpression]] = {}
        self._visits, self._leaves = hook_table(self, [])

    def use_concerns(self, concerns: list) -> None:
        """The concerns whose node-type hooks wrap this pass's own (passes/concerns.py)."""
        self._visits, self._leaves = hook_table(self, concerns)

    def attach(self, index: SourceIndex) -> None:
        """The positions (and text) of the module this pass will visit."""
        self._index = index

    def mentions(self, word: str) -> bool:
        """Whether the identifier occurs anywhere in the file's text: a cheap test before a costly scan."""
        return self._index is None or self._index.mentions(word)

    def mentions_within(self, node: cst.CSTNode, words: Iterable[str]) -> bool:
        """Whether one of the identifiers occurs in an original node's code (True when unknown)."""
        if self._index is None or not self._index.contains(node):
            return True
        start, end = self._index.span(node)
        occurrences = self._index.word_occurrences()
        for word in words:
            offsets = occurrences.get(word, ())
            i = bisect.bisect_left(offsets, start)
            if i < len(offsets) and offsets[i] < end:
                return True
        return False

    # the statement prefilter (porter/convert/source_index.py) --------------------
    def trigger_words(self) -> Iterable[str]:
        state = self._base_trigger_state()
        if self._base_words is None or state != self._base_words[0]:
            self._base_words = (state, frozenset(self._base_trigger_words()))
        return self._base_words[1]

    def _base_trigger_words(self) -> set[str]:
        ctx = self.ctx
        words = set(CONVENTIONAL_ALIASES)
        for cls in type(self).__mro__:
            words.update(cls.__dict__.get("TRIGGER_WORDS", ()))
        words.update(ctx.imports)
        words.update(ctx.assumed_imports)
        words.update(ctx.class_words)
        words.update(ctx.rngs_functions)
        for methods in [*ctx.methods_needing_rngs.values(), *ctx.init_methods.values(),
                        *ctx.none_first_attributes.values()]:
            words.update(methods)
        for attributes in ctx.layer_attributes.values():  # buffers and parameters: `self.buf = ...` updates
            words.update(name for name, kind in attributes.items() if kind == "buffer" or kind.endswith("Parameter"))
        words.update(_tensor_methods(ctx.rules))
        return words

    def _base_trigger_state(self) -> object:
        ctx = self.ctx
        return (len(ctx.imports), len(ctx.assumed_imports), len(ctx.module_classes), len(ctx.rngs_functions),
                sum(map(len, ctx.methods_needing_rngs.values())), sum(map(len, ctx.layer_attributes.values())),
                sum(map(len, ctx.init_methods.values())), sum(map(len, ctx.none_first_attributes.values())))

    def trigger_state(self) -> object:
        return self._base_trigger_state()

    def on_leave(self, original_node, updated_node):
        """Parentheses (porter/convert/precedence.py): a leave_X hook's replacement keeps those the user wrote
        around the node it replaces (`(m.unsqueeze(-1)\n .expand(-1, n)\n .reshape(b, -1))` spans lines only
        inside them), and gets those its place needs (`torch.add(a, b).sum()`: `(a + b).sum()`), as does
        every operand the rule built inside it. Each statement built in the place of an original one is noted
        for the output gate (porter/convert/output_gate.py), which puts the original back where the new one
        does not compile."""
        leave = self._leaves[type(original_node)]
        new = updated_node if leave is None else leave(original_node, updated_node)
        if type(new) is Final:  # a lone concern's leave_X (passes/concerns.py)
            new = new.node
        if new is original_node:
            return new
        if new is updated_node:  # a child was replaced
            new = fit_operands(new)
        elif isinstance(new, cst.BaseExpression):
            new = fit_all_operands(keep_parentheses(updated_node, new))
        if type(original_node) in STATEMENT_TYPES:
            for statement in new if isinstance(new, cst.FlattenSentinel) else (new,):
                if isinstance(statement, cst.CSTNode):
                    self.ctx.rewritten_statements[id(statement)] = (statement, original_node)
        return new

    # where we are --------------------------------------------------------------
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_stack.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self.class_stack.pop()
        return updated_node

    def on_visit(self, node: cst.CSTNode) -> bool:
        self._bodies.reached(node)
        visit = self._visits[type(node)]
        return True if visit is None else visit(node) is not False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)
        enter_function(self.ctx)
        self._bodies.expect(node)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        self.function_stack.pop()
        self.ctx.shadowed.pop()
        self._bodies.forget(original_node)
        return updated_node

    @property
    def module_class(self) -> str | None:
        """The nn.Module subclass whose body we are in, directly (not in a nested function)."""
        if self.class_stack and self.class_stack[-1] in self.ctx.module_classes:
            return self.class_stack[-1]
        return None

    @property
    def method(self) -> str | None:
        return self.function_stack[-1] if self.module_class and self.function_stack else None

    @property
    def in_module_method(self) -> bool:
        """Inside a module class's method other than its constructor: code that jax.jit may trace (a
        constructor runs eagerly)."""
        return self.method not in (None, "__init__")

    def position(self, node: cst.CSTNode) -> tuple[int, int]:
        """(line, column) of an original node, 1-based both, as diagnostics print them."""
        return self._index.start(node)

    def get_metadata(self, key, node, default=...):
        if key is PositionProvider:
            if self._index.contains(node):
                return self._index.code_range(node)
            if default is not ...:
                return default
            raise KeyError(f"{type(node).__name__} is not a node of the original module")
        return super().get_metadata(key, node, default) if default is not ... else super().get_metadata(key, node)

    # layers built here: the rngs they take --------------------------------------
    def add_rngs(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        if any(arg.keyword and arg.keyword.value == "rngs" for arg in updated.args):
            return updated
        new = updated.with_changes(args=[*updated.args, keyword_arg("rngs", self.rngs(original))])
        self.record("module-construct", original, new)
        return new

    def rngs_in_scope(self) -> bool:
        """An `rngs` argument is in scope: a module's constructor, a method or a layer factory given one."""
        return bool(self.module_class and (self.method == "__init__" or self.method in
                                           self.ctx.methods_needing_rngs.get(self.module_class, ()))) \
            or bool(self.function_stack and not self.class_stack and self.function_stack[0] in self.ctx.rngs_functions)

    def rngs(self, node: cst.CSTNode) -> cst.BaseExpression:
        """Inside a module's methods and layer factories the `rngs` argument; elsewhere a seeded Rngs."""
        if self.module_class and self.method != "forward":
            return cst.Name("rngs")
        if self.function_stack and not self.class_stack and self.function_stack[0] in self.ctx.rngs_functions:
            return cst.Name("rngs")
        seed = self.ctx.seed or "0"
        self.report("PT007", node, f"layers built outside a module get their initial values from nnx.Rngs({seed}) "
                                   "(JAX's generator: not the numbers torch would draw)")
        return expr(f"nnx.Rngs({seed})")

    def report(self, code: str, node: cst.CSTNode, message: str) -> None:
        self.ctx.report(code, *self.position(node), message)

    def record(self, rule: str, original: cst.CSTNode, updated: cst.CSTNode) -> None:
        # the change log prints `original` as code: an original one-line expression is its source text
        # (what code_of would generate, without generating it)
        before = original
        if self._index is not None and self._index.contains(original):
            before = self._index.one_line_code(original) or original
        self.ctx.record_change(rule, *self.position(original), before, updated)


def enter_function(ctx: ConversionContext) -> None:
    """A function's scope: its decorators, annotations and defaults are read in the enclosing one."""
    ctx.shadowed.append(ctx.shadowed[-1] if ctx.shadowed else frozenset())


class FunctionBodies:
    """enter_body when a walk reaches a function's body: after its decorators, parameters (annotations,
    defaults) and return annotation, which are read in the enclosing scope. (An attribute hook,
    visit_FunctionDef_body, says the same, but makes the traversal call the attribute hooks for every field
    of every node: a sixth of a conversion.)"""

    def __init__(self, ctx: ConversionContext) -> None:
        self.ctx = ctx
        self._pending: dict[int, cst.FunctionDef] = {}  # id of a body -> its function

    def expect(self, function: cst.FunctionDef) -> None:
        self._pending[id(function.body)] = function

    def reached(self, node: cst.CSTNode) -> None:
        function = self._pending.pop(id(node), None)
        if function is not None:
            enter_body(self.ctx, function)

    def forget(self, function: cst.FunctionDef) -> None:
        self._pending.pop(id(function.body), None)


def enter_body(ctx: ConversionContext, node: cst.FunctionDef) -> None:
    """The function's body: the torch aliases the function binds itself (a parameter or local named `tensor`
    or `F`) are, there and in the functions it encloses, the local (ctx.qualified_name)."""
    aliases = ctx.torch_aliases
    local = {name for name in local_names(node) if name in aliases}
    if local:
        ctx.shadowed[-1] = ctx.shadowed[-1] | local


def local_names(node: cst.FunctionDef) -> set[str]:
    """Names a function binds in its own scope: parameters, and targets of its assignments, loops and
    with statements and nested definitions (statements only: comprehensions have their own scope; an
    import inside the function binds what the analysis already reads as an import)."""
    params = node.params
    names = {p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]}
    for star in (params.star_arg, params.star_kwarg):
        if isinstance(star, cst.Param):
            names.add(star.name.value)

    def bind(target: cst.BaseExpression) -> None:
        if isinstance(target, cst.Name):
            names.add(target.value)
        elif isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                bind(element.value)
        elif isinstance(target, cst.StarredElement):
            bind(target.value)

    def walk(statement: cst.CSTNode) -> None:
        kind = type(statement)
        if kind is cst.Assign:
            for target in statement.targets:
                bind(target.target)
        elif kind is cst.AnnAssign or kind is cst.AugAssign:
            bind(statement.target)
        elif kind is cst.For:
            bind(statement.target)
        elif kind is cst.With:
            for item in statement.items:
                if item.asname is not None:
                    bind(item.asname.name)
        elif kind is cst.FunctionDef or kind is cst.ClassDef:
            names.add(statement.name.value)
            return
        for field_name in _BLOCK_FIELDS.get(kind, ()):
            child = getattr(statement, field_name)
            for item in child if isinstance(child, (list, tuple)) else (() if child is None else (child,)):
                walk(item)

    walk(node.body)
    return names


# statement containers -> the fields holding the statements (or blocks) inside them
_BLOCK_FIELDS: dict[type, tuple[str, ...]] = {
    cst.IndentedBlock: ("body",), cst.SimpleStatementSuite: ("body",), cst.SimpleStatementLine: ("body",),
    cst.If: ("body", "orelse"), cst.Else: ("body",), cst.For: ("body", "orelse"), cst.While: ("body", "orelse"),
    cst.With: ("body",), cst.Try: ("body", "handlers", "orelse", "finalbody"),
    cst.TryStar: ("body", "handlers", "orelse", "finalbody"), cst.ExceptHandler: ("body",),
    cst.ExceptStarHandler: ("body",), cst.Finally: ("body",), cst.Match: ("cases",), cst.MatchCase: ("body",),
}
