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

from typing import Iterable

import libcst as cst
from libcst.metadata import PositionProvider

from porter.convert.context import CONVENTIONAL_ALIASES, ConversionContext
from porter.convert.source_index import SourceIndex
from porter.convert.traverse import FastDispatch

TENSOR_METHOD_PREFIX = "torch.Tensor."


_TENSOR_METHODS: dict[int, tuple[object, frozenset[str]]] = {}


def _tensor_methods(rules) -> frozenset[str]:
    """Names of the tensor methods the rules convert (x.view(...), x.sum(...)), once per rule set."""
    found = _TENSOR_METHODS.get(id(rules))
    if found is None or found[0] is not rules:
        found = _TENSOR_METHODS[id(rules)] = (rules, frozenset(
            symbol[len(TENSOR_METHOD_PREFIX):] for symbol in rules.by_symbol if symbol.startswith(TENSOR_METHOD_PREFIX)))
    return found[1]


class ScopedTransformer(FastDispatch, cst.CSTTransformer):
    METADATA_DEPENDENCIES = ()
    # identifiers this class's leave_/visit_ methods react to beyond the torch names, module classes,
    # layer factories and tensor methods every pass sees (union over the class hierarchy)
    TRIGGER_WORDS: frozenset[str] = frozenset()

    def __init__(self, ctx: ConversionContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []
        self._index: SourceIndex | None = None
        self._base_words: tuple[object, frozenset[str]] | None = None

    def attach(self, index: SourceIndex) -> None:
        """The positions (and text) of the module this pass will visit."""
        self._index = index

    def mentions(self, word: str) -> bool:
        """Whether the identifier occurs anywhere in the file's text: a cheap test before a costly scan."""
        return self._index is None or self._index.mentions(word)

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
        words.update(ctx.module_classes)
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

    # where we are --------------------------------------------------------------
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_stack.append(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        self.class_stack.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        self.function_stack.pop()
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

    def report(self, code: str, node: cst.CSTNode, message: str) -> None:
        self.ctx.report(code, *self.position(node), message)

    def record(self, rule: str, original: cst.CSTNode, updated: cst.CSTNode) -> None:
        # the change log prints `original` as code: an original one-line expression is its source text
        # (what code_of would generate, without generating it)
        before = original
        if self._index is not None and self._index.contains(original):
            before = self._index.one_line_code(original) or original
        self.ctx.record_change(rule, *self.position(original), before, updated)
