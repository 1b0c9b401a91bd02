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
STATE_DICT = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("state_dict")), args=[])
LOAD_STATE_DICT = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("load_state_dict")))


@dataclass
class Checkpoints:
    """What the file saves and restores, found before the rewrite (original nodes' ids)."""

    models: set[str] = field(default_factory=set)  # names bound only to converted models
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
    owners = state_owners(ctx, found.models)
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
    found.loads |= {id(a.value) for a in assigns if a.targets[0].target.value in sources
                    and type(a.value) is cst.Call and (ctx.qualified_name(a.value.func) or "") in LOAD}
    for block in [module, *(b for b in nodes if type(b) is cst.IndentedBlock)]:
        for first, second in zip(block.body, block.body[1:]):
            _find_saved_name(first, second, owners, ctx, found)
    found.saves = bool(found.saved_names) or any(type(c) is cst.Call and (ctx.qualified_name(c.func) or "") in SAVE
                                                 and saves_owner_state(c, owners) for c in nodes)
    return found


def _find_saved_name(first: cst.BaseStatement, second: cst.BaseStatement, owners: set[str],
                     ctx: ConversionContext, found: Checkpoints) -> None:
    """`state = {... X.state_dict() ...}` then `torch.save(state, path)`."""
    # (plain type tests, not matchers: this runs for every pair of statements in the file)
    if type(first) is not cst.SimpleStatementLine or type(second) is not cst.SimpleStatementLine \
            or len(first.body) != 1 or len(second.body) != 1 or type(first.body[0]) is not cst.Assign \
            or len(first.body[0].targets) != 1 or type(first.body[0].targets[0].target) is not cst.Name \
            or type(second.body[0]) is not cst.Expr or type(second.body[0].value) is not cst.Call:
        return
    assign, save = first.body[0], second.body[0].value
    if (ctx.qualified_name(save.func) or "") in SAVE and save.args and save.args[0].keyword is None \
            and m.matches(save.args[0].value, m.Name(assign.targets[0].target.value)) \
            and saves_owner_state(assign.value, owners):
        found.saved_names.add(id(save))
        found.snapshots |= {id(c) for c in find_all(assign.value, cst.Call) if m.matches(c, STATE_DICT)}


def state_owners(ctx: ConversionContext, models: set[str]) -> set[str]:
    """Names whose state_dict() converts: the converted models and the optimizers (and what they train)."""
    return models | {i.name for i in ctx.optimizers.values()} | {i.model for i in ctx.optimizers.values() if i.model}


def _model_names(assigns: list[cst.Assign], ctx: ConversionContext) -> set[str]:
    """Names every assignment of which builds a module class of the file (or an imported one porter knows)
    or a torch.nn layer."""
    kinds: dict[str, set[bool]] = {}
    for assign in assigns:
        kinds.setdefault(assign.targets[0].target.value, set()).add(_builds_a_model(assign.value, ctx))
    return {name for name, built in kinds.items() if built == {True}}


def _builds_a_model(value: cst.BaseExpression, ctx: ConversionContext) -> bool:
    if type(value) is not cst.Call:
        return False
    if type(value.func) is cst.Name and value.func.value in ctx.module_classes:
        return True
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


def convert_snapshot(state_dict: cst.Call) -> cst.Call:
    return cst.Call(cst.Name("numpy_state"), [cst.Arg(state_dict.func.value)])


def convert_load(call: cst.Call) -> cst.Call | str:
    """torch.load(f, map_location=..., weights_only=...) -> load_pickle(f[, weights_only=...]); a str says why not."""
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
    return cst.Call(cst.Name("load_pickle"), args)


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
