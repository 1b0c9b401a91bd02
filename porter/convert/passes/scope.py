"""The traversal state the rewrite passes share: where we are, and positions
of the original nodes (so every diagnostic names the user's line)."""

from __future__ import annotations

import libcst as cst
from libcst.metadata import PositionProvider

from porter.convert.context import ConversionContext


class ScopedTransformer(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, ctx: ConversionContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []

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
        start = self.get_metadata(PositionProvider, node).start
        return start.line, start.column + 1

    def report(self, code: str, node: cst.CSTNode, message: str) -> None:
        self.ctx.report(code, *self.position(node), message)

    def record(self, rule: str, original: cst.CSTNode, updated: cst.CSTNode) -> None:
        self.ctx.record_change(rule, *self.position(original), original, updated)
