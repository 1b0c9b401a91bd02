"""A module method replacing a variable of a layer below it (nanoGPT's crop_block_size):

- `self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:n])`: a converted layer's parameter
  whose flax variable has torch's layout (an embedding) is replaced under its flax name,
  `self.transformer.wpe.embedding = nnx.Param(self.transformer.wpe.embedding[:n])`;
- `block.attn.bias = block.attn.bias[:, :, :n, :n]`: a buffer of another module (an attribute the file's module
  classes register as a buffer) set from its own value keeps its Variable, `block.attn.bias.set_value(...)`
  (assigning the array would turn the Buffer into a plain attribute, which nnx.state(model, Buffer) and the
  weight loader no longer see; `[...] =` cannot change its shape);
- `self.w = nn.Parameter(self.w[:n])`: a class's own parameter replaced by a new one stays an assignment of the
  new nnx.Param (the Variable replaced, its shape free to change), not an item assignment into the old one.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import code_of
from porter.convert.transforms import expr

PARAMETER_CLASSES = ("torch.nn.Parameter", "torch.nn.parameter.Parameter")


def replaced_parameter(ctx, original: cst.Assign, updated: cst.Assign, parameter) -> cst.Assign | None:
    """The assignment of a new nn.Parameter to a layer's parameter (`parameter`: (layer, torch name, WeightMap)
    as ModuleStructure._layer_parameter gives it) in the flax variable's name, when the layouts agree."""
    weight_map = parameter[2]
    if weight_map.layout != "same" or not isinstance(original.value, cst.Call) \
            or ctx.qualified_name(original.value.func) not in PARAMETER_CLASSES:
        return None
    target = original.targets[0].target
    return updated.with_changes(targets=[cst.AssignTarget(expr(f"{code_of(target.value)}.{weight_map.flax_name}"))])


def replaces_own_parameter(ctx, original: cst.Assign) -> bool:
    """`self.w = nn.Parameter(...)` in a method: the value is a new parameter, assigned as it is."""
    return isinstance(original.value, cst.Call) and ctx.qualified_name(original.value.func) in PARAMETER_CLASSES


def buffer_update(ctx, original: cst.Assign, updated: cst.Assign) -> cst.SimpleStatementLine | None:
    """`x.<buffer> = <expression reading x.<buffer>>`, in a module method or a script's function: the buffer's
    set_value; for `self.<buffer>` only where the value slices it (`self.bias = self.bias[:n, :n]`: the shape
    may change, which `self.bias[...] = v` cannot do)."""
    if len(original.targets) != 1:
        return None
    target = original.targets[0].target
    if not isinstance(target, cst.Attribute) or target.attr.value not in buffer_names(ctx) \
            or not m.findall(original.value, m.MatchIfTrue(lambda node: node.deep_equals(target))):
        return None
    if m.matches(target.value, m.Name("self")) and not m.findall(
            original.value, m.Subscript(value=m.MatchIfTrue(lambda node: node.deep_equals(target)))):
        return None
    return cst.Expr(cst.Call(func=cst.Attribute(updated.targets[0].target, cst.Name("set_value")),
                             args=[cst.Arg(updated.value)]))


def buffer_names(ctx) -> set[str]:
    return {name for attributes in ctx.layer_attributes.values() for name, kind in attributes.items()
            if kind == "buffer"}
