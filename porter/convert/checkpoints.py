"""Checkpoints as scripts write them: torch.save / torch.load of state dicts -> the emitted pickle helpers
(porter/emitted_training.py).

    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])

becomes

    save_pickle({"model": numpy_state(model), "optimizer": numpy_state(optimizer), "epoch": epoch}, path)
    ckpt = load_pickle(path)
    load_numpy_state(model, ckpt["model"])

for `model` a converted model and `optimizer` an nnx.Optimizer (the owners). A torch.save converts when what
it saves holds an owner's state_dict() and no other; a torch.load when what it loads goes into an owner's
load_state_dict(); `copy.deepcopy(X.state_dict())` (a snapshot: best weights so far) is numpy_state(X) too.
`X.state_dict()` elsewhere stays (torch's aliases the live parameters, a copy would not),
and so does any torch.save / torch.load of other data (a dataset of tensors kept on torch's side).

A distributed script (porter/convert/passes/distributed.py) writes Orbax checkpoints instead, from every
process: `torch.save(obj, path)` -> `save_checkpoint(path, obj)`, each owner's state_dict() the pure dict
of its state, `nnx.to_pure_dict(nnx.state(X, nnx.Not(nnx.RngState)))` (jax arrays, sharded as they are),
and `torch.load(path)` -> `load_checkpoint(path)`; load_state_dict is load_numpy_state for both. A file
that writes no checkpoint of its own (a sampling script) reads with load_checkpoint, which takes either
format: the script that wrote it may be distributed or not. nanoGPT's
forms are followed: owners through aliases (`raw_model = model.module if ddp else model`,
`model = torch.compile(model)`) and an optimizer from the model's `configure_optimizers(...)`; the dict
saved statements after it is built (`checkpoint = {...}; print(...); torch.save(checkpoint, path)`); the
restored dict read through names (`state_dict = checkpoint['model']; model.load_state_dict(state_dict)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext, code_of
from porter.convert.transforms import keyword_arg
from porter.convert.traverse import find_all

SAVE = ("torch.save", "torch.serialization.save")
LOAD = ("torch.load", "torch.serialization.load")
NOT_LAYERS = ("torch.nn.Parameter", "torch.nn.Buffer")
DEEPCOPY = ("copy.deepcopy", "deepcopy")
# a call of one of these on a model is the same model (`torch.compile(model)`, `DDP(model)`)
MODEL_WRAPPERS = ("torch.compile", "torch.nn.parallel.DistributedDataParallel", "torch.nn.DataParallel",
                  "torch.nn.parallel.DataParallel", "torch.distributed.fsdp.FullyShardedDataParallel")
# calls between a checkpoint dict and its torch.save that leave the state alone
HARMLESS_FUNCTIONS = frozenset({"print", "len", "str", "repr", "format", "int", "float"})
HARMLESS_METHODS = frozenset({"info", "debug", "warning", "log", "write", "flush", "join", "makedirs", "format"})
FROM_PRETRAINED = "from_pretrained"
# methods of a model that build its optimizer (nanoGPT's `optimizer = model.configure_optimizers(...)`)
OPTIMIZER_METHODS = ("configure_optimizers",)
STATE_DICT = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("state_dict")), args=[])
LOAD_STATE_DICT = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("load_state_dict")))


@dataclass
class Checkpoints:
    """What the file saves and restores, found before the rewrite (original nodes' ids)."""

    models: set[str] = field(default_factory=set)  # names bound only to converted models
    owners: set[str] = field(default_factory=set)  # names whose state_dict() converts (state_owners)
    loads: set[int] = field(default_factory=set)  # torch.load calls whose result goes into a load_state_dict()
    saves: bool = False  # a torch.save the rewrite converts (so the file reads back its own checkpoints)
    # `state = {"model": model.state_dict(), ...}` right before `torch.save(state, path)`: those state_dict()
    # calls (snapshots, as nothing runs in between) and that torch.save
    snapshots: set[int] = field(default_factory=set)
    saved_names: set[int] = field(default_factory=set)


def find_checkpoints(module: cst.Module, ctx: ConversionContext) -> Checkpoints:
    nodes = find_all(module, (cst.Assign, cst.Call, cst.Expr, cst.IndentedBlock))
    assigns = [a for a in nodes if type(a) is cst.Assign and len(a.targets) == 1
               and type(a.targets[0].target) is cst.Name]
    found = Checkpoints(models=_model_names(assigns, ctx))
    owners = found.owners = state_owners(ctx, found.models) | _optimizer_names(assigns, found.models)
    sources: set[str] = set()
    restores = [e.value for e in nodes if type(e) is cst.Expr and _calls_method(e.value, "load_state_dict")
                and m.matches(e.value, LOAD_STATE_DICT)]
    for call in restores:
        if call.func.value.value in owners and isinstance(convert_load_state_dict(call), cst.Call):
            value = call.args[0].value
            if type(value) is cst.Call and (ctx.qualified_name(value.func) or "") in LOAD:
                found.loads.add(id(value))
            while type(value) is cst.Subscript:
                value = value.value
            if type(value) is cst.Name:
                sources.add(value.value)
    sources = _read_from(sources, assigns)
    found.loads |= {id(a.value) for a in assigns if a.targets[0].target.value in sources
                    and type(a.value) is cst.Call and (ctx.qualified_name(a.value.func) or "") in LOAD}
    for block in [module, *(b for b in nodes if type(b) is cst.IndentedBlock)]:
        for at in range(len(block.body)):
            _find_saved_name(block.body, at, owners, ctx, found)
    found.saves = bool(found.saved_names) or any(type(c) is cst.Call and (ctx.qualified_name(c.func) or "") in SAVE
                                                 and saves_owner_state(c, owners) for c in nodes)
    return found


def _read_from(sources: set[str], assigns: list[cst.Assign]) -> set[str]:
    """The names a restored state may come from: `state_dict = checkpoint['model']` adds checkpoint."""
    pending = set(sources)
    while pending:
        name = pending.pop()
        for assign in (a for a in assigns if a.targets[0].target.value == name and type(a.value) is cst.Subscript):
            value = assign.value
            while type(value) is cst.Subscript:
                value = value.value
            if type(value) is cst.Name and value.value not in sources:
                sources.add(value.value)
                pending.add(value.value)
    return sources


def _find_saved_name(body: list[cst.BaseStatement], at: int, owners: set[str], ctx: ConversionContext,
                     found: Checkpoints) -> None:
    """`state = {... X.state_dict() ...}`, then `torch.save(state, path)` (body[at]) later in the same block."""
    # (plain type tests, not matchers: this runs for every statement of the file)
    save = body[at]
    if type(save) is not cst.SimpleStatementLine or len(save.body) != 1 or type(save.body[0]) is not cst.Expr \
            or type(save.body[0].value) is not cst.Call:
        return
    save = save.body[0].value
    if (ctx.qualified_name(save.func) or "") not in SAVE or not save.args or save.args[0].keyword is not None \
            or type(save.args[0].value) is not cst.Name:
        return
    name = save.args[0].value.value
    bound = next((i for i in range(at - 1, -1, -1) if _binds(body[i], name)), None)
    if bound is None or not all(_leaves_state_alone(s, owners) for s in body[bound + 1:at]):
        return  # (torch's state_dict() aliases the parameters: trained in between, the save holds the new values)
    assign = body[bound].body[0] if type(body[bound]) is cst.SimpleStatementLine else None
    if type(assign) is cst.Assign and len(assign.targets) == 1 and type(assign.targets[0].target) is cst.Name \
            and saves_owner_state(assign.value, owners):
        found.saved_names.add(id(save))
        found.snapshots |= {id(c) for c in find_all(assign.value, cst.Call) if m.matches(c, STATE_DICT)}


def _leaves_state_alone(statement: cst.BaseStatement, owners: set[str]) -> bool:
    """A statement that cannot change an owner's state: a simple one that reads no owner and calls only
    print, logging and file-system functions (`print(f"saving checkpoint to {out_dir}")`)."""
    if type(statement) is not cst.SimpleStatementLine:
        return False
    if any(type(n) is cst.Name and n.value in owners for n in find_all(statement, cst.Name)):
        return False
    return all(type(c.func) is cst.Name and c.func.value in HARMLESS_FUNCTIONS
               or type(c.func) is cst.Attribute and c.func.attr.value in HARMLESS_METHODS
               for c in find_all(statement, cst.Call))


def _binds(statement: cst.BaseStatement, name: str) -> bool:
    """Whether a statement of a block may bind `name` (a compound one is taken to, as a safe answer)."""
    if type(statement) is not cst.SimpleStatementLine:
        return any(type(n) is cst.Name and n.value == name for n in find_all(statement, cst.Name))
    return any(type(small) in (cst.Assign, cst.AugAssign, cst.AnnAssign)
               and any(type(n) is cst.Name and n.value == name
                       for t in (small.targets if type(small) is cst.Assign else [small])
                       for n in find_all(t.target, cst.Name))
               for small in statement.body)


def state_owners(ctx: ConversionContext, models: set[str]) -> set[str]:
    """Names whose state_dict() converts: the converted models and the optimizers (and what they train)."""
    return models | {i.name for i in ctx.optimizers.values()} | {i.model for i in ctx.optimizers.values() if i.model}


def _model_names(assigns: list[cst.Assign], ctx: ConversionContext) -> set[str]:
    """Names every assignment of which builds a module class of the file (or an imported one porter knows)
    or a torch.nn layer, or gives such a model again (`torch.compile(model)`, `model.module if ddp else
    model`)."""
    values: dict[str, list[cst.BaseExpression]] = {}
    for assign in assigns:
        values.setdefault(assign.targets[0].target.value, []).append(assign.value)
    models = {name for name, bound in values.items()
              if any(_builds_a_model(v, ctx) for v in bound) or any(_model_alias(v, values, ctx) for v in bound)}
    while True:  # the largest set whose every binding builds one of them or gives one of them again
        kept = {name for name in models
                if all(_builds_a_model(v, ctx) or _model_alias(v, models, ctx) for v in values[name])}
        if kept == models:
            return models
        models = kept


def _model_alias(value: cst.BaseExpression, models, ctx: ConversionContext) -> bool:
    if type(value) is cst.Name:
        return value.value in models
    if type(value) is cst.Attribute:  # DDP's `model.module`
        return value.attr.value == "module" and _model_alias(value.value, models, ctx)
    if type(value) is cst.IfExp:
        return _model_alias(value.body, models, ctx) and _model_alias(value.orelse, models, ctx)
    if type(value) is cst.Call and value.args and value.args[0].keyword is None:
        return (ctx.qualified_name(value.func) or "") in MODEL_WRAPPERS and _model_alias(value.args[0].value,
                                                                                          models, ctx)
    return False


def _optimizer_names(assigns: list[cst.Assign], models: set[str]) -> set[str]:
    """Names every assignment of which is `model.configure_optimizers(...)` of a converted model."""
    kinds: dict[str, set[bool]] = {}
    for assign in assigns:
        value = assign.value
        kinds.setdefault(assign.targets[0].target.value, set()).add(
            type(value) is cst.Call and m.matches(value.func, m.Attribute(value=m.Name(), attr=m.Name()))
            and value.func.value.value in models and value.func.attr.value in OPTIMIZER_METHODS)
    return {name for name, built in kinds.items() if built == {True}}


def _builds_a_model(value: cst.BaseExpression, ctx: ConversionContext) -> bool:
    if type(value) is not cst.Call:
        return False
    if type(value.func) is cst.Name and value.func.value in ctx.module_classes:
        return True
    if m.matches(value.func, m.Attribute(value=m.Name(), attr=m.Name(FROM_PRETRAINED))) \
            and value.func.value.value in ctx.module_classes:
        return True  # nanoGPT's `GPT.from_pretrained(init_from, override_args)`: a classmethod building one
    qualified = ctx.qualified_name(value.func) or ""
    layer = qualified.removeprefix("torch.nn.")
    return layer != qualified and "." not in layer and layer[:1].isupper() and qualified not in NOT_LAYERS


def saves_owner_state(save: cst.CSTNode, owners: set[str]) -> bool:
    """Whether a torch.save call (or a value) holds an owner's state_dict() and no other state_dict(), or saves
    an owner itself."""
    if type(save) is cst.Call and save.args and type(save.args[0].value) is cst.Name \
            and save.args[0].value.value in owners:
        return True
    calls = [c for c in find_all(save, cst.Call) if m.matches(c.func, m.Attribute(attr=m.Name("state_dict")))]
    return bool(calls) and all(m.matches(c, STATE_DICT) and c.func.value.value in owners for c in calls)


class _StateDicts(cst.CSTTransformer):
    """`X.state_dict()` -> `numpy_state(X)`."""

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.BaseExpression:
        if m.matches(updated_node, STATE_DICT):
            return cst.Call(cst.Name("numpy_state"), [cst.Arg(updated_node.func.value)])
        return updated_node


def convert_save(call: cst.Call, owners: set[str]) -> cst.Call | str:
    """torch.save(obj, f) -> save_pickle(obj, f) with each owner's state_dict() a numpy_state(); a str says why not."""
    positional = [a.value for a in call.args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    obj = positional[0] if positional else keywords.pop("obj", None)
    f = positional[1] if len(positional) > 1 else keywords.pop("f", None)
    if obj is None or f is None or len(positional) > 2 or keywords:
        return f"torch.save with {', '.join(keywords) or 'these arguments'} is not converted"
    if type(obj) is cst.Name and obj.value in owners:
        return f"torch.save({obj.value}, ...) pickles the whole object: save {obj.value}.state_dict() instead"
    return cst.Call(cst.Name("save_pickle"), [cst.Arg(obj.visit(_StateDicts())), cst.Arg(f)])


def copies_owner_state(call: cst.Call, owners: set[str]) -> bool:
    """`copy.deepcopy(X.state_dict())` of an owner (a snapshot, as numpy_state's is)."""
    return len(call.args) == 1 and m.matches(call.args[0].value, STATE_DICT) \
        and call.args[0].value.func.value.value in owners and code_of(call.func) in DEEPCOPY


def convert_copy(call: cst.Call) -> cst.Call:
    return convert_snapshot(call.args[0].value)


def convert_snapshot(state_dict: cst.Call, orbax: bool = False) -> cst.Call:
    if orbax:
        return orbax_state(code_of(state_dict.func.value))
    return cst.Call(cst.Name("numpy_state"), [cst.Arg(state_dict.func.value)])


def convert_load(call: cst.Call, orbax: bool = False) -> cst.Call | str:
    """torch.load(f, map_location=..., weights_only=...) -> load_pickle(f[, weights_only=...]), or
    load_checkpoint(f[, weights_only=...]) where the checkpoint may be Orbax's; a str says why not."""
    positional = [a.value for a in call.args if a.keyword is None]
    keywords = {a.keyword.value: a.value for a in call.args if a.keyword is not None}
    f = positional[0] if positional else keywords.pop("f", None)
    keywords.pop("map_location", None)  # arrays go to JAX's default device when loaded into the model
    weights_only = keywords.pop("weights_only", None)
    if f is None or len(positional) > 2 or keywords:
        return f"torch.load with {', '.join(keywords) or 'these arguments'} is not converted"
    args = [cst.Arg(f)]
    if weights_only is not None and not m.matches(weights_only, m.Name("True")):
        args.append(keyword_arg("weights_only", weights_only))
    return cst.Call(cst.Name("load_checkpoint" if orbax else "load_pickle"), args)


def convert_load_state_dict(call: cst.Call) -> cst.Call | str:
    """X.load_state_dict(state) -> load_numpy_state(X, state); a str says why not."""
    strict = [a.value for a in call.args if a.keyword is not None and a.keyword.value == "strict"]
    others = [a for a in call.args if a.keyword is not None and a.keyword.value != "strict"]
    if len(call.args) - len(strict) != 1 or others or call.args[0].keyword is not None \
            or any(not m.matches(s, m.Name("True")) for s in strict):
        return f"`{code_of(call)}`: only load_state_dict(state) with strict=True is converted"
    return cst.Call(cst.Name("load_numpy_state"), [cst.Arg(call.func.value), cst.Arg(call.args[0].value)])


def _calls_method(node: cst.BaseExpression, name: str) -> bool:
    return type(node) is cst.Call and type(node.func) is cst.Attribute and node.func.attr.value == name


def orbax_state(owner: str) -> cst.Call:
    """`X.state_dict()` in a checkpoint Orbax writes: X's state as a pure dict, its jax arrays as they are."""
    return cst.parse_expression(f"nnx.to_pure_dict(nnx.state({owner}, nnx.Not(nnx.RngState)))")


def convert_call(site, found: Checkpoints, qualified: str, original: cst.Call, updated: cst.Call) \
        -> cst.CSTNode | None:
    """One call of a checkpoint converted, for the training loops' concern (`site`: its ctx, report, record,
    loops and scope); None: the call is not one of those. In a distributed script (Orbax checkpoints)
    torch.save itself is the distributed concern's."""
    orbax = not site.loops.converts_checkpoints
    owners = found.owners
    if qualified in SAVE and not orbax and (saves_owner_state(original, owners) or id(original) in found.saved_names):
        new, helpers = convert_save(updated, owners), ("save_pickle", "numpy_state")
        note = ("PT007", "torch.save -> save_pickle: the checkpoint is a pickle of numpy arrays (numpy_state: "
                         "nnx.state as a pure dict), not a torch checkpoint: load_pickle reads it, torch.load "
                         "does not (`porter weights` converts torch checkpoints)")
    elif qualified in LOAD and id(original) in found.loads:
        # a file that writes no checkpoint reads another script's: Orbax (distributed) or pickle
        either = orbax or not found.saves
        new, helpers = convert_load(updated, either), ("load_checkpoint" if either else "load_pickle",)
        note = _load_note(orbax, found.saves)
    elif id(original) in found.snapshots:
        new, note = convert_snapshot(updated, orbax), None
        helpers = () if orbax else ("numpy_state",)
    elif copies_owner_state(original, owners):
        new, helpers, note = convert_copy(updated), ("numpy_state",), None
    elif m.matches(original, LOAD_STATE_DICT) and original.func.value.value in owners \
            and id(original) in site.scope.statement_calls:
        new, helpers, note = convert_load_state_dict(updated), ("load_numpy_state",), None
        if any(i.name == original.func.value.value and i.lr_scheduler for i in site.ctx.optimizers.values()):
            note = ("PT005", f"{original.func.value.value} has a learning-rate scheduler: the rate comes back "
                             "from the checkpoint, but the converted scheduler keeps its own count of steps "
                             "and sets the rate from it at its next step() (torch's goes on from the loaded "
                             "rate): check the rates after resuming")
    else:
        return None
    if isinstance(new, str):
        site.report("PT004", original, f"{new}; left unchanged")
        return updated
    for helper in helpers:
        site.ctx.need_helper(helper)
    if note:
        code, message = note
        site.report(code, original, message)
    site.record("checkpoint", original, new)
    return new


def _load_note(orbax: bool, reads_its_own: bool) -> tuple[str, str]:
    if orbax and reads_its_own:
        return ("PT007", "torch.load -> load_checkpoint: it reads the Orbax checkpoints save_checkpoint writes "
                         "(keys kept, arrays as numpy), not torch checkpoints (`porter weights` converts those); "
                         "map_location has no counterpart: the arrays go to the devices as they are loaded")
    if reads_its_own:
        return ("PT007", "torch.load -> load_pickle: it reads the pickles save_pickle writes, not torch "
                         "checkpoints (`porter weights` converts those); map_location has no counterpart: the "
                         "arrays go to JAX's default device")
    return ("PT005", "torch.load -> load_checkpoint: it reads checkpoints converted scripts wrote (an Orbax "
                     "directory from save_checkpoint, a file from save_pickle), not torch checkpoints: convert one "
                     "of those with `porter weights`")
