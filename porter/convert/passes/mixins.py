"""The mixin concern (passes/concerns.py): a module class's bases that are no nn.Module and do not work on an
nnx.Module (porter/convert/mixins.py decides, outside_classes.py reports them, PT014) go from its bases."""

from __future__ import annotations

import libcst as cst

from porter.convert.context import code_of


class Mixins:
    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        # the statement of the class is visited where it names the base
        self.TRIGGER_WORDS = frozenset(base.split(".")[0].split("[")[0]
                                       for bases in self.ctx.dropped_bases.values() for base in bases)

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


def _bases(args) -> cst.Tuple:
    """The bases as a tuple, for the change log: `(nn.Module, HubMixin)` -> `(nnx.Module,)`."""
    return cst.Tuple([cst.Element(arg.value) for arg in args if arg.keyword is None])
