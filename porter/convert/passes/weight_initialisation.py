"""The weight initialisation concern (passes/concerns.py): a module class's constructor statements and methods
that only initialise weights (porter/convert/weight_init.py says which) go, with a PT005 saying so.

They are decided before anything inside them is converted: entering a module class marks its init-only methods,
entering its constructor marks the initialisation statements, as statements the rewrite replaces unvisited
(`scope.replaced_unvisited`, passes/concerns.py). No other concern sees them; at their leave they become what
`_remove` returns.
"""

from __future__ import annotations

import libcst as cst
from libcst.metadata import PositionProvider

from porter.convert.weight_init import is_init_statement


class WeightInitialisation:
    # `self.apply(self._init_weights)`, timm's initialisers (the init-only methods' names: passes/scope.py)
    TRIGGER_WORDS = frozenset({"apply", "named_apply", "trunc_normal_", "lecun_normal_"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if node.name.value in self.ctx.module_classes:
            methods = self.ctx.init_methods.get(node.name.value, set())
            self._replace(s for s in node.body.body if isinstance(s, cst.FunctionDef) and s.name.value in methods)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        scope = self.scope  # (before the scope enters the function)
        if node.name.value == "__init__" and scope.module_class and not scope.function_stack:
            methods = self.ctx.init_methods.get(scope.module_class, set())
            self._replace(s for s in node.body.body if is_init_statement(s, self.ctx, methods))

    def _replace(self, statements) -> None:
        for statement in statements:
            self.scope.replaced_unvisited[id(statement)] = self._remove

    def _remove(self, original_node, visitor):
        """A removed method's decorators stand above the lines it reports: they are converted (and their
        changes logged) as the decorators of any method."""
        scope = self.scope
        for decorator in getattr(original_node, "decorators", ()):
            decorator.visit(visitor)
        span = scope.get_metadata(PositionProvider, original_node)
        first, last = span.start.line, span.end.line
        lines = f"line {first}" if first == last else f"lines {first}-{last}"
        what = f"method {original_node.name.value}" if isinstance(original_node, cst.FunctionDef) else lines
        scope.report("PT005", original_node,
                     f"weight initialisation removed ({what}): the converted layers start from flax's initialisers; "
                     "load the original's weights (porter weights / load_torch_state_dict), or port this "
                     "initialisation by hand to train from scratch")
        scope.record("weight-init", original_node, cst.Pass())
        return cst.RemoveFromParent()
