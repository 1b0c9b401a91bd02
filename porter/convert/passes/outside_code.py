"""The outside-code concern (passes/concerns.py): what passes/outside_classes.py decided about code of other
packages, applied. A module class's bases that are no nn.Module and do not work on an nnx.Module
(porter/convert/mixins.py, PT014) go from its bases; a module class or layer factory of a package converted
with the tree (--with) that the tree's analysis did not resolve (`timm.create_model(...)` after `import timm`),
built in a module's constructor, gets `rngs` (PT007)."""

from __future__ import annotations

import libcst as cst

from porter.convert.context import code_of


class OutsideCode:
    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        # the statements naming a dropped base or an outside constructor are visited
        self.TRIGGER_WORDS = frozenset(base.split(".")[0].split("[")[0]
                                       for bases in self.ctx.dropped_bases.values() for base in bases) \
            | frozenset(self.ctx.outside_constructions.values())

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node):
        dropped = self.ctx.dropped_bases.get(original_node.name.value)
        if not dropped or not isinstance(updated_node, cst.ClassDef):
            return updated_node
        kept = [new for old, new in zip(original_node.bases, updated_node.bases)
                if old.keyword is not None or code_of(old.value) not in dropped]
        if kept:
            kept[-1] = kept[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT)
        new = updated_node.with_changes(bases=kept)
        if not kept:
            new = new.with_changes(lpar=cst.MaybeSentinel.DEFAULT, rpar=cst.MaybeSentinel.DEFAULT)
        self.ctx.record_change("mixin-dropped", *self.scope.position(original_node.bases[0].value),
                               _bases(original_node.bases), _bases(kept))
        return new

    def leave_Call(self, original_node: cst.Call, updated_node):
        if id(original_node) in self.ctx.outside_constructions and isinstance(updated_node, cst.Call):
            return self.scope.add_rngs(original_node, updated_node)
        return updated_node


def _bases(args) -> cst.Tuple:
    """The bases as a tuple, for the change log: `(nn.Module, HubMixin)` -> `(nnx.Module,)`."""
    return cst.Tuple([cst.Element(arg.value) for arg in args if arg.keyword is None])
