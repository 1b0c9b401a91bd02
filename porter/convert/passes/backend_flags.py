"""The backend flags concern (passes/concerns.py): statements that only set up torch's CUDA backend, as nanoGPT's
scripts start,

    torch.cuda.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn

go, with a PT007 note each: the converted code has no CUDA generator (its random numbers come from nnx.Rngs,
seeded where torch.manual_seed is called), and float32 matrix multiplications on a GPU already use TF32 under
JAX's default precision. `allow_tf32 = False` asks for full float32 products: the same statement becomes
`jax.config.update("jax_default_matmul_precision", "highest")`. A flag set to anything but a literal True or
False stays, reported as any torch name.

They are decided when the traversal enters them (`scope.replaced_unvisited`): the torch names inside are not
reported.
"""

from __future__ import annotations

import libcst as cst


_TF32 = ("torch.backends.cuda.matmul.allow_tf32", "torch.backends.cudnn.allow_tf32")
_CUDA_SEEDS = ("torch.cuda.manual_seed", "torch.cuda.manual_seed_all", "torch.cuda.random.manual_seed",
               "torch.cuda.random.manual_seed_all")
_HIGHEST = 'jax.config.update("jax_default_matmul_precision", "highest")'


class BackendFlags:
    TRIGGER_WORDS = frozenset({"allow_tf32", "manual_seed", "manual_seed_all"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool | None:
        if len(node.body) != 1 or self._replacement(node.body[0]) is None:
            return None
        self.scope.replaced_unvisited[id(node)] = self._replace
        return False

    def _replacement(self, statement: cst.BaseSmallStatement) -> tuple[str | None, str] | None:
        """(the statement's replacement, None to remove it; the note), or None: not a backend flag."""
        if type(statement) is cst.Assign and len(statement.targets) == 1:
            name = self.ctx.qualified_name(statement.targets[0].target) or ""
            value = statement.value
            if name in _TF32 and type(value) is cst.Name and value.value in ("True", "False"):
                if value.value == "True":
                    return None, (f"{name} = True removed: float32 matrix products on a GPU use TF32 under JAX's "
                                  "default precision")
                return _HIGHEST, (f"{name} = False -> full float32 matrix products "
                                  "(jax_default_matmul_precision 'highest', for every matrix product)")
        if type(statement) is cst.Expr and type(statement.value) is cst.Call:
            name = self.ctx.qualified_name(statement.value.func) or ""
            if name in _CUDA_SEEDS:
                return None, (f"{name}(...) removed: the converted code has no CUDA generator; its random numbers "
                              "come from nnx.Rngs, seeded where torch.manual_seed is called")
        return None

    def _replace(self, original: cst.SimpleStatementLine, visitor):
        code, note = self._replacement(original.body[0])
        self.scope.report("PT007", original, note)
        if code is None:
            self.scope.record("backend-flag", original, cst.Pass())
            return cst.RemoveFromParent()
        new = original.with_changes(body=[cst.Expr(cst.parse_expression(code))])
        self.scope.record("backend-flag", original, new)
        return new
