"""torch's global generator for the draws outside modules: a module-level nnx.Rngs.

A draw outside a module (`torch.randint(len(data) - T, (B,))` in a plain
get_batch) became `jax.random.randint(_rngs(), ...)`: each call of the
module-level `nnx.Rngs` gives a fresh key. This pass, run on the rewritten
tree, defines it after the file's leading imports and reseeds it right after
every `torch.manual_seed(s)` the file keeps (at any depth: `nnx.reseed`
changes it in place, no `global` needed), so the same seed gives the same
numbers from run to run, as torch's does.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext, code_of
from porter.convert.passes.imports import _after_imports, _is_import, _torch_bindings_of

SEEDING = ("torch.manual_seed", "torch.random.manual_seed")


def _seed_of(statement: cst.CSTNode, ctx: ConversionContext) -> cst.BaseExpression | None:
    """The seed of `torch.manual_seed(s)` (or `g = torch.manual_seed(s)`) as a whole statement."""
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1 \
            or not isinstance(statement.body[0], (cst.Expr, cst.Assign)):
        return None
    call = statement.body[0].value
    if not m.matches(call, m.Call(args=[m.Arg(keyword=None, star="")])) or ctx.qualified_name(call.func) not in SEEDING:
        return None
    return call.args[0].value


class _Reseed(cst.CSTTransformer):
    def __init__(self, ctx: ConversionContext) -> None:
        super().__init__()
        self.ctx = ctx

    def leave_SimpleStatementLine(self, original_node, updated_node):
        seed = _seed_of(updated_node, self.ctx)
        if seed is None:
            return updated_node
        reseed = cst.parse_statement(f"nnx.reseed({self.ctx.global_rngs}, default={code_of(seed)})\n")
        return cst.FlattenSentinel([updated_node, reseed])


def seed_global_rngs(module: cst.Module, ctx: ConversionContext) -> cst.Module:
    """The module-level Rngs defined and reseeded. Only the top-level statements that seed are visited:
    the others stay the same objects (the fast path prints those from the source text)."""
    _report_torch_draws_in_steps(ctx)
    if not ctx.global_rngs:
        return module
    seeding = m.MatchIfTrue(lambda node: _seed_of(node, ctx) is not None)
    body = []
    for statement in module.body:
        new = statement.visit(_Reseed(ctx)) if m.findall(statement, seeding) else statement
        body.extend(new.nodes if isinstance(new, cst.FlattenSentinel) else [new])
    definition = cst.parse_statement(f"{ctx.global_rngs} = nnx.Rngs(0)  # torch's global generator: the keys of "
                                     "the draws outside modules\n")
    at = _definition_index(body)
    if at < len(body) and isinstance(body[at], (cst.FunctionDef, cst.ClassDef)) and len(body[at].leading_lines) < 2:
        body[at] = body[at].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
    body.insert(at, definition.with_changes(leading_lines=[cst.EmptyLine()]))
    _report_draws_in_steps(ctx)
    return module.with_changes(body=body)


def _definition_index(body: list) -> int:
    """After the import block holding the first torch import (where porter's imports of nnx go: in a
    notebook, a later cell than the first may import torch), else after the leading imports."""
    first = next((i for i, statement in enumerate(body) if _torch_bindings_of(statement)), None)
    if first is None:
        return _after_imports(body)
    while first < len(body) and _is_import(body[first]):
        first += 1
    return first


def _report_draws_in_steps(ctx: ConversionContext) -> None:
    for name, line, col in ctx.step_calls:
        if name in ctx.drawing_functions:
            ctx.report("PT042", line, col, f"{name}() draws random numbers from {ctx.global_rngs}, the module-level "
                                           "nnx.Rngs, and is called in the forward of the jitted train step, which "
                                           f"cannot advance it (nnx raises TraceContextError): give {name} a key "
                                           "argument (or an nnx.Rngs) and pass it through the step")


def _report_torch_draws_in_steps(ctx: ConversionContext) -> None:
    data = ctx.data_side
    for name, line, col in ctx.step_calls if data is not None else ():
        if name in data.index_functions:
            ctx.report("PT042", line, col, f"{name}() draws the rows of a batch from torch's generator (kept: the "
                                           "original's batches) and is called in the forward of the jitted train "
                                           "step, where it would run once, when traced, and every step would take "
                                           f"that same batch: call {name} before the step and pass the batch in")
