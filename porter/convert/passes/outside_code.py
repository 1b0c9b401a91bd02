"""The outside-code concern (passes/concerns.py): what passes/outside_classes.py decided about code of other
packages, applied. A module class's bases that are no nn.Module and do not work on an nnx.Module
(porter/convert/mixins.py, PT014) go from its bases; a module class or layer factory of a package converted
with the tree (--with) that the tree's analysis did not resolve (`timm.create_model(...)` after `import timm`),
built in a module's constructor, gets `rngs` (PT007). A module class whose own `__new__` handed the constructor's
arguments on (`super().__new__(cls, *args, **kwargs)`, to the dropped mixin's `__new__`) hands on only `cls`: with
nothing but nnx.Module left among its bases, the next `__new__` is object's, which takes no more."""

from __future__ import annotations

import libcst as cst

import libcst.matchers as m

from porter.convert.context import code_of
from porter.convert.passes.analyze import MODULE_BASES

_SUPER_NEW = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super"), args=[]), attr=m.Name("__new__")),
                    args=[m.Arg(keyword=None, star=""), m.AtLeastN(n=1)])


class OutsideCode:
    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        # the statements naming a dropped base or an outside constructor are visited
        self.TRIGGER_WORDS = frozenset(base.split(".")[0].split("[")[0]
                                       for bases in self.ctx.dropped_bases.values() for base in bases) \
            | frozenset(self.ctx.outside_constructions.values()) \
            | (frozenset({"__new__"}) if self.ctx.dropped_bases else frozenset())

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
        if self.scope.method == "__new__" and isinstance(updated_node, cst.Call) and m.matches(updated_node, _SUPER_NEW) \
                and self._only_the_module_base_left(self.scope.module_class):
            new = updated_node.with_changes(args=[updated_node.args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT)])
            self.ctx.record_change("mixin-new", *self.scope.position(original_node), updated_node, new)
            return new
        return updated_node

    def _only_the_module_base_left(self, name: str | None) -> bool:
        node = self.ctx.module_class_nodes.get(name)
        dropped = self.ctx.dropped_bases.get(name)
        if node is None or not dropped:
            return False
        kept = [base for base in node.bases if base.keyword is None and code_of(base.value) not in dropped]
        return all(self.ctx.qualified_name(base.value) in MODULE_BASES for base in kept)


def _bases(args) -> cst.Tuple:
    """The bases as a tuple, for the change log: `(nn.Module, HubMixin)` -> `(nnx.Module,)`."""
    return cst.Tuple([cst.Element(arg.value) for arg in args if arg.keyword is None])
