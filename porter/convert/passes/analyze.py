"""First pass: read-only. Resolves torch import aliases, finds nn.Module
subclasses and the layers their constructors create."""

from __future__ import annotations

from typing import Iterable

import libcst as cst

from porter.convert.context import CONVENTIONAL_ALIASES, ConversionContext
from porter.convert.source_index import SourceIndex
from porter.convert.traverse import FastDispatch


def dotted(node: cst.BaseExpression) -> str:
    if isinstance(node, cst.Attribute):
        return f"{dotted(node.value)}.{node.attr.value}"
    if isinstance(node, cst.Name):
        return node.value
    return ""


class Analyze(FastDispatch, cst.CSTVisitor):
    """Reacts only to imports, torch names, module classes and layer factories: the pipeline skips
    the code without any of them (the prefilter of porter/convert/source_index.py)."""

    def __init__(self, ctx: ConversionContext, index: SourceIndex) -> None:
        super().__init__()
        self.ctx = ctx
        self._index = index
        self.bound_names: set[str] = set()
        self.used_names: dict[str, cst.Name] = {}
        self.class_stack: list[str] = []
        self.function_stack: list[str] = []

    def trigger_words(self) -> Iterable[str]:
        return {"import", *CONVENTIONAL_ALIASES, *self.ctx.imports, *self.ctx.module_classes, *self.ctx.rngs_functions}

    def trigger_state(self) -> object:
        return len(self.ctx.imports), len(self.ctx.module_classes), len(self.ctx.rngs_functions)

    # imports ---------------------------------------------------------------
    def visit_Import(self, node: cst.Import) -> bool:
        for alias in node.names:
            name = dotted(alias.name)
            if alias.asname:
                local = alias.asname.name.value
                self.bound_names.add(local)
                self.ctx.bound_imports.add(local)
                if name.split(".")[0] == "torch":
                    self.ctx.imports[local] = name
            else:
                head = name.split(".")[0]
                self.bound_names.add(head)
                self.ctx.bound_imports.add(head)
                if head == "torch":
                    self.ctx.imports["torch"] = "torch"
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if node.relative or node.module is None or isinstance(node.names, cst.ImportStar):
            return False
        module = dotted(node.module)
        for alias in node.names:
            name = alias.name.value
            local = alias.asname.name.value if alias.asname else name
            self.bound_names.add(local)
            self.ctx.bound_imports.add(local)
            if module.split(".")[0] == "torch" or module == "einops.layers.torch":  # einops: rules/einops.toml
                self.ctx.imports[local] = f"{module}.{name}"
        return False

    # bindings and uses, to find conventional aliases used without an import --
    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # the attribute's own name (x.F) is not a use of F
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in CONVENTIONAL_ALIASES and node.value not in self.used_names:
            self.used_names[node.value] = node

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        if isinstance(node.target, cst.Name):
            self.bound_names.add(node.target.value)

    def visit_Param(self, node: cst.Param) -> None:
        self.bound_names.add(node.name.value)

    # module classes ---------------------------------------------------------
    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_stack.append(node.name.value)
        bases = [dotted(b.value) for b in node.bases]
        if any(self._is_module_base(b) for b in bases):
            self.ctx.module_classes.add(node.name.value)
            self.ctx.layer_attributes.setdefault(node.name.value, {})
        self.bound_names.add(node.name.value)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.class_stack.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.function_stack.append(node.name.value)
        self.bound_names.add(node.name.value)

    def leave_FunctionDef(self, original_node: cst.FunctionDef) -> None:
        self.function_stack.pop()

    def visit_Assign(self, node: cst.Assign) -> None:
        """self.x = nn.Something(...) inside a module class: remember the layer type."""
        if not self.class_stack or self.class_stack[-1] not in self.ctx.module_classes:
            return
        if not isinstance(node.value, cst.Call):
            return
        for target in node.targets:
            t = target.target
            if isinstance(t, cst.Attribute) and isinstance(t.value, cst.Name) and t.value.value == "self":
                qualified = self._qualified(node.value.func)
                if qualified:
                    self.ctx.layer_attributes[self.class_stack[-1]][t.attr.value] = qualified

    def visit_Call(self, node: cst.Call) -> None:
        """Functions that build layers need an rngs argument: module methods other than
        __init__ (which has it) and module-level factories like `def conv_bn(...)`."""
        if not self.function_stack or not self._builds_layer(node):
            return
        if not self.class_stack:
            self.ctx.rngs_functions.add(self.function_stack[0])
        elif self.class_stack[-1] in self.ctx.module_classes and self.function_stack[-1] not in ("__init__", "forward"):
            self.ctx.methods_needing_rngs.setdefault(self.class_stack[-1], set()).add(self.function_stack[-1])

    def _builds_layer(self, node: cst.Call) -> bool:
        if isinstance(node.func, cst.Name) and node.func.value in self.ctx.module_classes | self.ctx.rngs_functions:
            return True
        qualified = self._qualified(node.func)
        rule = self.ctx.rules.lookup(qualified) if qualified else None
        return rule is not None and rule.uses_rngs

    def _qualified(self, node: cst.BaseExpression) -> str | None:
        name = dotted(node)
        head, _, rest = name.partition(".")
        module = self.ctx.imports.get(head) or CONVENTIONAL_ALIASES.get(head)
        if module is None:
            return None
        return f"{module}.{rest}" if rest else module

    def _is_module_base(self, base: str) -> bool:
        if base in self.ctx.module_classes:
            return True
        head, _, rest = base.partition(".")
        module = self.ctx.imports.get(head) or CONVENTIONAL_ALIASES.get(head)
        full = f"{module}.{rest}" if rest and module else module
        return full in ("torch.nn.Module", "torch.nn.modules.module.Module")

    def leave_Module(self, original_node: cst.Module) -> None:
        for name, node in self.used_names.items():
            if name in self.bound_names:
                continue
            qualified = CONVENTIONAL_ALIASES[name]
            self.ctx.assumed_imports[name] = qualified
            line, col = self._index.start(node)
            self.ctx.report(
                "PT002", line, col,
                f"'{name}' is used but never imported; assumed `import {qualified} as {name}`"
                if name != "torch" else "'torch' is used but never imported; assumed `import torch`",
            )
