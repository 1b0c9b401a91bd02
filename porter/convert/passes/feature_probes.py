"""The feature probe concern (passes/concerns.py): `hasattr(torch.nn.functional, 'scaled_dot_product_attention')`
asks whether the installed torch has a function; when porter converts that name (a rule in rules/*.toml), the
converted code has it, so the probe becomes `True` with a PT007 note, and `True and x` becomes `x` (nanoGPT's
flash switch: `self.flash = hasattr(...) and config.flash`). A probe of a name porter does not convert stays,
its torch module reported as any other reference.

The probe is decided when the traversal enters the call: its module argument is kept unvisited (not reported)
and the call is replaced at its leave (`scope.replaced_unvisited`).
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import code_of

_PROBE = m.Call(func=m.Name("hasattr"), args=[m.Arg(keyword=None), m.Arg(value=m.SimpleString(), keyword=None)])


class FeatureProbes:
    TRIGGER_WORDS = frozenset({"hasattr"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        self._probes: set[int] = set()  # ids of the original probes replaced by True

    def visit_Call(self, node: cst.Call) -> None:
        name = self._converted_name(node)
        if name is None:
            return
        module = node.args[0].value
        self.scope.replaced_unvisited[id(module)] = _keep
        self.scope.replaced_unvisited[id(node)] = self._true
        self._probes.add(id(node))

    def leave_BooleanOperation(self, original_node: cst.BooleanOperation, updated_node):
        if id(original_node.left) in self._probes and isinstance(original_node.operator, cst.And) \
                and isinstance(updated_node, cst.BooleanOperation):
            return updated_node.right  # `True and x` is x
        return updated_node

    def _converted_name(self, call: cst.Call) -> str | None:
        """`torch.nn.functional.scaled_dot_product_attention` for a probe of a name a rule converts."""
        if type(call.func) is not cst.Name or call.func.value != "hasattr" or not m.matches(call, _PROBE) \
                or "hasattr" in self.ctx.imports:  # (the cheap test first: every call of the file comes here)
            return None
        module = self.ctx.qualified_name(call.args[0].value)
        attribute = call.args[1].value.evaluated_value
        if not module or module.split(".")[0] != "torch" or not isinstance(attribute, str):
            return None
        name = f"{module}.{attribute}"
        rule = self.ctx.rules.lookup(name)
        return name if rule is not None and rule.kind != "decorator" else None

    def _true(self, original_node: cst.Call, visitor) -> cst.Name:
        name = self._converted_name(original_node)
        rule = self.ctx.rules.lookup(name)
        new = cst.Name("True")
        self.scope.report("PT007", original_node,
                          f"{code_of(original_node)} is True: porter converts {name} "
                          f"({rule.id}), so the converted code has it")
        self.scope.record(rule.id, original_node, new)
        return new


def _keep(node: cst.CSTNode, visitor) -> cst.CSTNode:
    return node
