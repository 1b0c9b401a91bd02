"""`x.device` on arrays: JAX places arrays itself, and a traced array (under jit or grad) has no
`.device` at all, so a read of it works eagerly and fails in the compiled model.

Where the device only places new arrays (`torch.zeros(n, device=x.device)`, `y.to(x.device)`) the
rules drop it with the argument. A local bound to it (`device = x.device`,
`n, device = x.shape[1], x.device`, `b, *_, device = *x.shape, x.device`) whose every use places arrays is dropped with its binding here;
any other read of `.device` on an array in a module's methods (its constructor aside, which runs
eagerly) is reported (PT004) and left as it was.

The call pass (porter/convert/passes/calls.py) calls into this module from its generic visit/leave
hooks, as it does for porter/convert/inplace.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import libcst as cst

from porter.convert.builders import role_of  # how x.to(...) reads a positional argument
from porter.convert.context import ConversionContext
from porter.convert.source_index import STATEMENT_TYPES
from porter.convert.traverse import child_nodes, trivia

TRIVIA = trivia()
PLACEMENT_METHODS = frozenset({"to", "cuda"})  # x.to(device), x.cuda(device): the device is dropped
# names that hold settings, not arrays: `args.device`, `config.device`
NOT_ARRAYS = frozenset({"self", "args", "opt", "opts", "config", "cfg", "conf", "hparams", "params", "settings",
                        "options", "flags", "kwargs"})


@dataclass
class DeviceReads:
    """What one function does with `.device` (its nested functions have their own)."""

    bindings: dict[int, set[str]] = field(default_factory=dict)  # id of an Assign -> the device names it drops
    kept: list[cst.Attribute] = field(default_factory=list)  # reads that stay: reported in traced code


def analyse_function(node: cst.FunctionDef, ctx: ConversionContext, tensor_attributes: frozenset[str] = frozenset(),
                     mentions: Callable[[cst.CSTNode, frozenset[str]], bool] = lambda node, words: True
                     ) -> DeviceReads:
    """`tensor_attributes`: the module's attributes holding tensors (buffers, parameters, tensors made
    in its constructor). `mentions(statement, words)`: whether a statement's code holds one of the
    words (statements that do not are skipped: the walk is the cost). The names bound to a device
    are looked for again in every statement that mentions them."""
    reads = _Reads(ctx, tensor_attributes, mentions, frozenset({"device"}))
    reads.walk(node.body, [], nested=False)
    if reads.bound:
        reads = _Reads(ctx, tensor_attributes, mentions, frozenset({"device", *reads.bound}))
        reads.walk(node.body, [], nested=False)
    found = DeviceReads()
    droppable = {name for name in reads.bound if not reads.other_uses.get(name)}
    for assign, pairs in reads.binding_sites:
        dropped = {name for name, _ in pairs if name in droppable}
        if dropped:
            found.bindings[id(assign)] = dropped
        found.kept.extend(read for name, read in pairs if name not in droppable)
    found.kept.extend(reads.other_reads)
    return found


class _Reads:
    def __init__(self, ctx: ConversionContext, tensor_attributes: frozenset[str], mentions,
                 words: frozenset[str]) -> None:
        self.ctx = ctx
        self.tensor_attributes = tensor_attributes
        self.mentions = mentions
        self.words = words
        self.bound: set[str] = set()  # names bound to a `.device` read
        self.binding_sites: list[tuple[cst.Assign, list[tuple[str, cst.Attribute]]]] = []
        self.other_uses: dict[str, int] = {}
        self.other_reads: list[cst.Attribute] = []
        self._bindings: set[int] = set()  # ids of the `.device` reads that a binding site holds

    def walk(self, node: cst.CSTNode, parents: list[cst.CSTNode], nested: bool) -> None:
        kind = type(node)
        if kind in STATEMENT_TYPES and not self.mentions(node, self.words):
            return
        if kind is cst.FunctionDef or kind is cst.ClassDef:
            nested = True  # its names may be ours (a closure); its `.device` reads are its own
        elif kind is cst.Assign and not nested:
            self._binding(node)
        elif kind is cst.Attribute and node.attr.value == "device" and not nested:
            if id(node) not in self._bindings and self._on_array(node) and not self._placement(node, parents):
                self.other_reads.append(node)
        elif kind is cst.Name:
            parent = parents[-1] if parents else None
            if not self._placement(node, parents) and not (type(parent) is cst.Attribute and parent.attr is node) \
                    and not (type(parent) is cst.Arg and parent.keyword is node):
                self.other_uses[node.value] = self.other_uses.get(node.value, 0) + 1
            return
        parents.append(node)
        for child in child_nodes(node):
            if type(child) not in TRIVIA:  # whitespace and punctuation hold no name
                self.walk(child, parents, nested)
        parents.pop()

    def _binding(self, assign: cst.Assign) -> None:
        """`device = x.device`, `n, device = x.shape[1], x.device`: (name, read) pairs."""
        if len(assign.targets) != 1:
            return
        target, value = assign.targets[0].target, assign.value
        if isinstance(target, cst.Name):
            pairs = [(target, value)]
        elif isinstance(target, (cst.Tuple, cst.List)) and isinstance(value, (cst.Tuple, cst.List)):
            pairs = [(target.elements[t].value, value.elements[v].value)
                     for t, v in paired_elements(target.elements, value.elements)]
        else:
            return
        found = [(t.value, v) for t, v in pairs if isinstance(t, cst.Name) and isinstance(v, cst.Attribute)
                 and v.attr.value == "device" and self._on_array(v)]
        if found:
            self.binding_sites.append((assign, found))
            self.bound.update(name for name, _ in found)
            self._bindings.update(id(read) for _, read in found)
            # the binding's own target names are no uses
            for name, _ in found:
                self.other_uses[name] = self.other_uses.get(name, 0) - 1

    def _on_array(self, read: cst.Attribute) -> bool:
        """`x.device`, `self.w.device` (a tensor attribute), `self.fc.weight.device`, `f(x).device`: not
        `self.device` or `self.config.device` (the module's own settings), `args.device`, torch.device or
        an imported module's."""
        receiver = read.value
        if isinstance(receiver, cst.Name):
            return receiver.value not in NOT_ARRAYS and receiver.value not in self.ctx.bound_imports
        if isinstance(receiver, cst.Attribute):
            if self.ctx.qualified_name(read) is not None:
                return False
            if isinstance(receiver.value, cst.Name) and receiver.value.value == "self":
                return receiver.attr.value in self.tensor_attributes
            return receiver.attr.value in ("weight", "bias")
        return isinstance(receiver, (cst.Call, cst.Subscript))

    def _placement(self, node: cst.CSTNode, parents: list[cst.CSTNode]) -> bool:
        """The argument that places a new array: device= of a torch call, or of x.to(...)/x.cuda(...)."""
        if len(parents) < 2 or type(parents[-1]) is not cst.Arg or parents[-1].value is not node:
            return False
        arg, call = parents[-1], parents[-2]
        if type(call) is not cst.Call:
            return False
        func = call.func
        if isinstance(func, cst.Attribute) and func.attr.value in PLACEMENT_METHODS \
                and self.ctx.qualified_name(func) is None:
            return arg.keyword is None and role_of(node) == "device" or (arg.keyword is not None
                                                                   and arg.keyword.value == "device")
        qualified = self.ctx.qualified_name(func)
        return bool(qualified and qualified.startswith("torch.") and arg.keyword is not None
                    and arg.keyword.value == "device")


def paired_elements(targets, values) -> list[tuple[int, int]]:
    """(target index, value index) of the elements an unpacking binds one to one: all of them without
    stars (same length); with stars, those before the first star and after the last, on both sides
    (`b, *axis, device = *x.shape, x.device` pairs `device` with `x.device`)."""
    def starred(e):
        return isinstance(e, cst.StarredElement)
    if not any(map(starred, [*targets, *values])):
        return list(zip(range(len(targets)), range(len(values)))) if len(targets) == len(values) else []
    if sum(map(starred, targets)) > 1:
        return []
    pairs = []
    for t, v in zip(range(len(targets)), range(len(values))):
        if starred(targets[t]) or starred(values[v]):
            break
        pairs.append((t, v))
    for t, v in zip(range(len(targets) - 1, -1, -1), range(len(values) - 1, -1, -1)):
        if starred(targets[t]) or starred(values[v]) or (t, v) in pairs:
            break
        pairs.append((t, v))
    return pairs


def drop_bindings(updated: cst.Assign, names: set[str]) -> cst.Assign | cst.RemovalSentinel:
    """The assignment without its device names: `n, device = x.shape[1], x.device` -> `n = x.shape[1]`,
    `b, n, device = *x.shape, x.device` -> `b, n = *x.shape,`."""
    target = updated.targets[0].target
    if isinstance(target, cst.Name):
        return cst.RemoveFromParent()
    targets, values = target.elements, updated.value.elements
    dropped = [(t, v) for t, v in paired_elements(targets, values)
               if isinstance(targets[t].value, cst.Name) and targets[t].value.value in names]
    kept_targets = [e for i, e in enumerate(targets) if i not in {t for t, _ in dropped}]
    kept_values = [e for i, e in enumerate(values) if i not in {v for _, v in dropped}]
    if not kept_targets:
        return cst.RemoveFromParent()
    if len(kept_targets) == 1 and len(kept_values) == 1 and not isinstance(kept_targets[0], cst.StarredElement) \
            and not isinstance(kept_values[0], cst.StarredElement):  # `n, = a,` binds as `n = a`
        return updated.with_changes(targets=[updated.targets[0].with_changes(target=kept_targets[0].value)],
                                    value=kept_values[0].value)

    def last_without_comma(elements):
        return [*elements[:-1], elements[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)] if len(elements) > 1 \
            else [elements[0].with_changes(comma=cst.Comma())]
    return updated.with_changes(
        targets=[updated.targets[0].with_changes(target=target.with_changes(elements=last_without_comma(kept_targets)))],
        value=updated.value.with_changes(elements=last_without_comma(kept_values)))
