"""The method keys concern (passes/concerns.py): a module's public method other than forward that draws random
numbers (nanoGPT's `generate`: torch.multinomial) takes them from an optional keyword-only argument,

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, *, rngs: nnx.Rngs | None = None):
        rngs = self.rngs if rngs is None else rngs
        ...
            idx_next = jax.random.categorical(rngs(), jnp.log(probs), axis=-1)[..., None]

so that a caller can fix the draws (`model.generate(x, n, rngs=nnx.Rngs(0))`: the same samples every call) or
thread a stream of its own; without it the method draws from the Rngs the module keeps (`self.rngs = rngs`, added
to __init__), new numbers on every call, as torch's global generator gives. forward and private helpers keep
drawing from the module's Rngs (their callers are the module's own code). A method that already has a name `rngs`
anywhere is left as it was (its draws take the module's Rngs).

Entering a method marks it (ctx.keyed_methods); a draw inside it (op_builders._key) takes `rngs()` and names
the stored Rngs; leaving the method adds the argument and the fallback line when a draw did.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.transforms import with_keyword_param

_NOT_KEYED = ("__init__", "forward", "__call__")


class MethodKeys:
    TRIGGER_WORDS = frozenset()

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        scope = self.scope  # (before the scope enters the function)
        name = node.name.value
        if scope.module_class is None or scope.function_stack or name.startswith("_") or name in _NOT_KEYED \
                or scope.module_class not in self.ctx.module_classes or node.params.star_kwarg is not None \
                or not node.params.params or node.params.params[0].name.value != "self" \
                or any(m.matches(d.decorator, m.Name("staticmethod") | m.Name("classmethod")) for d in node.decorators) \
                or (scope.mentions_within(node, ("rngs",)) and m.findall(node, m.Name("rngs"))):
            return  # (a static method's draws have no self.rngs to fall back on: left as they were)
        self.ctx.keyed_methods[(scope.module_class, name)] = None

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node):
        stored = self.ctx.keyed_methods.get((self.scope.module_class, original_node.name.value)) \
            if self.scope.module_class and len(self.scope.function_stack) == 1 else None
        if stored is None or not isinstance(updated_node, cst.FunctionDef) \
                or not isinstance(updated_node.body, cst.IndentedBlock):
            return updated_node
        argument = cst.Param(cst.Name("rngs"), annotation=cst.Annotation(cst.parse_expression("nnx.Rngs | None")),
                             default=cst.Name("None"), equal=cst.AssignEqual(
                                 whitespace_before=cst.SimpleWhitespace(" "),
                                 whitespace_after=cst.SimpleWhitespace(" ")))
        params = with_keyword_param(updated_node, argument)
        body = list(updated_node.body.body)
        at = 1 if body and _is_docstring(body[0]) else 0
        line = cst.parse_statement(f"rngs = self.{stored} if rngs is None else rngs\n")
        body.insert(at, line)
        self.scope.record("method-rngs", original_node.name, line)
        return updated_node.with_changes(params=params, body=updated_node.body.with_changes(body=body))


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return m.matches(statement, m.SimpleStatementLine(body=[m.Expr(m.SimpleString() | m.ConcatenatedString())]))
