"""Classes and factories of installed packages in converted module classes (PT013, PT014).

porter converts the tree it is given; a class of another installed package stays torch. A module class
deriving from such an nn.Module (`class Encoder(ResNet)` with torchvision's ResNet), or building one
(`self.seq = Sequential(...)` from a helper package, `timm.create_model(...)`), would hold torch layers
inside an nnx module and fail at its first call: an error (PT013) naming the package and the class. A base
that is not an nn.Module (a mixin, of the package or of the tree) stays a base of the nnx.Module where it works
there, and is otherwise dropped with a warning naming what the class loses (PT014; porter/convert/mixins.py
reads it, passes/outside_code.py drops it).

Reads the original tree after the analysis (ctx.module_classes, ctx.rngs_functions); what a name of an
installed package is comes from porter/convert/outside.py, which reads that package's source.
"""

from __future__ import annotations

import libcst as cst

from porter.convert import mixins
from porter.convert.context import ConversionContext, code_of
from porter.convert.outside import (
    CLASS, FACTORY, MODULE, UNKNOWN, OutsideName, converted_packages, in_tree, is_installed, is_stdlib, what_is,
)
from porter.convert.source_index import SourceIndex
from porter.convert.traverse import find_all

_NOT_CONVERTED = "porter converts only the tree it is given"


def check(module: cst.Module, ctx: ConversionContext, index: SourceIndex) -> None:
    """Reports the module classes (and layer factories) of the file that use an installed package's modules,
    and decides which of their bases that are no nn.Module (mixins) go (ConversionContext.dropped_bases)."""
    names = outside_imports(module, ctx)
    for statement in module.body:
        if type(statement) is cst.ClassDef and statement.name.value in ctx.module_classes:
            _check_tree_mixins(statement, module, names, ctx, index)
    if not names:
        return
    for statement in module.body:
        if type(statement) is cst.ClassDef:
            _check_class(statement, names, ctx, index)
        elif type(statement) is cst.FunctionDef and statement.name.value in ctx.rngs_functions:
            _check_uses(statement, f"the layer factory {statement.name.value}", names, ctx, index,
                        "so it would build a torch module where nnx ones are expected")


def outside_imports(module: cst.Module, ctx: ConversionContext) -> dict[str, str]:
    """Local name -> dotted name, for the file's top-level imports of installed packages outside its tree
    (torch, the standard library and what the tree told porter about excepted)."""
    names = {}
    for local, dotted in _imports(module.body):
        top = dotted.partition(".")[0]
        if top == "torch" or is_stdlib(top) or local in ctx.module_classes or local in ctx.rngs_functions:
            continue
        # a package porter cannot find is still outside the tree when the file's place is known (not beside it)
        if not in_tree(top, ctx.filename) and (ctx.filename or is_installed(top)):
            names[local] = dotted
    return names


def _imports(statements):
    """(local name, dotted name) of absolute imports, also inside top-level `try:` and `if` blocks."""
    for statement in statements:
        if type(statement) is cst.SimpleStatementLine:
            for small in statement.body:
                if type(small) is cst.Import:
                    for alias in small.names:
                        dotted = code_of(alias.name)
                        if alias.asname is not None and type(alias.asname.name) is cst.Name:
                            yield alias.asname.name.value, dotted
                        elif alias.asname is None:
                            yield dotted.partition(".")[0], dotted.partition(".")[0]
                elif type(small) is cst.ImportFrom and not small.relative and small.module is not None \
                        and not isinstance(small.names, cst.ImportStar):
                    where = code_of(small.module)
                    for alias in small.names:
                        if type(alias.name) is cst.Name:
                            local = alias.asname.name.value if alias.asname is not None \
                                and type(alias.asname.name) is cst.Name else alias.name.value
                            yield local, f"{where}.{alias.name.value}"
        elif type(statement) in (cst.Try, cst.If):
            yield from _imports(statement.body.body)


def _dotted(node: cst.BaseExpression, names: dict[str, str]) -> str | None:
    """`ResNet` -> torchvision.models.resnet.ResNet, `timm.create_model` -> timm.create_model (None: not one)."""
    if type(node) is cst.Subscript:
        node = node.value
    parts = []
    while type(node) is cst.Attribute:
        parts.append(node.attr.value)
        node = node.value
    if type(node) is not cst.Name or node.value not in names:
        return None
    return ".".join([names[node.value], *reversed(parts)])


def _what(node: cst.BaseExpression, names: dict[str, str], ctx: ConversionContext) -> OutsideName | None:
    dotted = _dotted(node, names)
    if dotted is None or ctx.rules.lookup(dotted) is not None:  # porter converts it (einops' layers)
        return None
    if dotted.partition(".")[0] in converted_packages() and _known(node, ctx):
        return None  # converted with the tree (--with), and the tree knows what it is
    return what_is(dotted)


def _known(node: cst.BaseExpression, ctx: ConversionContext) -> bool:
    text = code_of(node.value if type(node) is cst.Subscript else node)
    return text in ctx.module_classes or text in ctx.rngs_functions


def _check_class(node: cst.ClassDef, names: dict[str, str], ctx: ConversionContext, index: SourceIndex) -> None:
    name = node.name.value
    bases_of_other_kinds, derives = [], name in ctx.module_classes
    for base in node.bases:
        found = _what(base.value, names, ctx) if base.keyword is None else None
        if found is None:
            continue
        if found.kind == MODULE and found.package in converted_packages():
            derives = True
            _report_unseen(base.value, f"{name} derives from", found, ctx, index)
        elif found.kind == MODULE:
            derives = True
            ctx.report("PT013", *index.start(base.value),
                       f"{name} derives from {code_of(base.value)} ({found.where}), an nn.Module of the installed "
                       f"package {found.package}: {_NOT_CONVERTED}, so {name} stays a torch class. "
                       + _what_to_do(found, name))
        elif found.kind == CLASS:
            bases_of_other_kinds.append((base.value, found))
        elif found.kind == UNKNOWN and not derives and _defines(node, "forward"):
            base_name = code_of(base.value)
            ctx.report("PT013", *index.start(base.value),
                       f"{name} derives from {base_name} ({found.where or found.name}), which porter cannot read "
                       f"({found.why}), and defines forward: if {base_name} is an nn.Module, {name} stays a torch "
                       f"class, as {_NOT_CONVERTED}. Install {found.package} where porter runs so that porter can "
                       f"tell, and copy the file defining {base_name} into your tree to have it converted")
    if derives:
        for base, found in bases_of_other_kinds:
            _report_mixin(node, base, f"{found.where}, of the installed package {found.package}", found.hazards,
                          found.offers, ctx, index)
    if name in ctx.module_classes:
        _check_uses(node.body, f"the module class {name}", names, ctx, index,
                    "so the nnx module would hold a torch module")


def _defines(node: cst.ClassDef, method: str) -> bool:
    return any(type(s) is cst.FunctionDef and s.name.value == method for s in node.body.body)


def _report_mixin(node: cst.ClassDef, base: cst.BaseExpression, where: str, hazards, offers,
                  ctx: ConversionContext, index: SourceIndex) -> None:
    """A base that is not an nn.Module: kept where nothing in it gets in nnx's way (mixins.py), else dropped
    from the converted class's bases with a warning naming what the class loses; the class's own uses of
    what it loses (`self.save_pretrained(...)`) are errors."""
    name = node.name.value
    if "forward" in offers and not _defines(node, "forward"):  # module code, not a mixin: kept, and it is wrong
        ctx.report("PT006", *index.start(base),
                   f"{name} takes its forward from {code_of(base)} ({where}), which is not an nn.Module: porter "
                   f"converts forward (to __call__) in nn.Module classes only, so the converted {name} would run "
                   f"its other bases' __call__ instead; left as a base. Move that forward into {name} (or make "
                   f"{code_of(base)} an nn.Module) and convert again")
        return
    if not hazards:
        return
    ctx.dropped_bases.setdefault(name, set()).add(code_of(base))
    lost = f"{'/'.join(offers)} of {code_of(base)}" if offers else f"what {code_of(base)} gives"
    ctx.report("PT014", *index.start(base),
               f"{name} also derives from {code_of(base)} ({where}), which is not an nn.Module and does not work on "
               f"an nnx.Module: {'; '.join(hazards)}. Dropped from the converted {name}'s bases: it loses {lost}")
    for use in find_all(node.body, cst.Attribute):
        if type(use.value) is cst.Name and use.value.value == "self" and use.attr.value in offers \
                and not _defines(node, use.attr.value):
            ctx.report("PT006", *index.start(use),
                       f"{code_of(use)} is {code_of(base)}'s, dropped from {name}'s bases (PT014): the converted "
                       f"{name} has no {use.attr.value}; rewrite it for nnx or drop its use")


def _check_tree_mixins(node: cst.ClassDef, module: cst.Module, names: dict[str, str], ctx: ConversionContext,
                       index: SourceIndex) -> None:
    """The bases of a module class that are plain classes of the tree (of this file or imported from another)."""
    for base in node.bases:
        if base.keyword is not None or type(base.value) is not cst.Name:
            continue
        local = base.value.value
        if local in ctx.module_classes or local in names or ctx.qualified_name(base.value):
            continue
        imported = _tree_import(module, local)
        if imported is None and not any(type(s) is cst.ClassDef and s.name.value == local for s in module.body):
            continue
        dots, where, original = imported or (0, "", local)
        found = mixins.tree_class(ctx.filename, module.code if not where else "", original, dots, where,
                                  outside_class=_outside_plain_class)
        if found is not None:
            _report_mixin(node, base.value, f"{'.' * dots}{where or 'this file'}", *found, ctx, index)


def _outside_plain_class(dotted: str) -> tuple[list[str], list[str]] | None:
    """(hazards, offers) of a class of an installed package that is no nn.Module, as outside.py reads it."""
    if dotted.partition(".")[0] == "torch" or is_stdlib(dotted):
        return None
    found = what_is(dotted)
    return (list(found.hazards), list(found.offers)) if found.kind == CLASS else None


def _tree_import(module: cst.Module, local: str) -> tuple[int, str, str] | None:
    """(dots, module, name) of a top-level `from X import name [as local]` of the file."""
    for statement in module.body:
        for small in statement.body if type(statement) is cst.SimpleStatementLine else ():
            if type(small) is cst.ImportFrom and small.module is not None and not isinstance(small.names,
                                                                                            cst.ImportStar):
                for alias in small.names:
                    bound = alias.asname.name if alias.asname is not None else alias.name
                    if type(bound) is cst.Name and bound.value == local and type(alias.name) is cst.Name:
                        return len(small.relative), code_of(small.module), alias.name.value
    return None


def _check_uses(node: cst.CSTNode, owner: str, names: dict[str, str], ctx: ConversionContext,
                index: SourceIndex, outcome: str) -> None:
    uses = _Uses(names)
    node.visit(uses)
    for used, called in uses.found:
        target = used.func if called else used
        found = _what(target, names, ctx)
        if found is not None and found.kind == UNKNOWN and id(used) in uses.stored and not is_installed(found.package):
            _report_unread(used, owner, found, ctx, index, outcome)
        if found is None or found.kind not in (MODULE, FACTORY):
            continue
        line, col = index.start(used)
        if ctx.already_reported(line, col):
            continue
        text = code_of(target)
        if found.package in converted_packages():
            if called and id(used) in uses.in_constructor:
                _pass_rngs(used, found, ctx, index)
            else:
                _report_unseen(target, f"{owner} {'calls' if called else 'uses'}", found, ctx, index)
            continue
        if id(used) in uses.type_checks and found.kind == MODULE:
            ctx.report("PT013", line, col, f"{owner} tests whether a module is a {text} ({found.where}), an nn.Module "
                                           f"of the installed package {found.package}: {_NOT_CONVERTED}, so no "
                                           "converted module is one and the test is always false. " + _what_to_do(found))
            continue
        if found.kind == MODULE:
            what = f"{'builds' if called else 'uses'} {text} ({found.where}), an nn.Module"
        else:
            what = f"{'calls' if called else 'uses'} {text} ({found.where}), which returns an nn.Module ({found.why})"
        ctx.report("PT013", line, col, f"{owner} {what} of the installed package {found.package}: {_NOT_CONVERTED}, "
                                       f"{outcome}. " + _what_to_do(found))


def _report_unread(call: cst.Call, owner: str, found: OutsideName, ctx: ConversionContext, index: SourceIndex,
                   outcome: str) -> None:
    """`self.encoder = timm.create_model(...)` in a module's constructor, timm not installed where porter runs:
    what it builds may be an nn.Module, which would stay torch (an installed package's function porter cannot
    read, numpy's compiled ones, is not asked about)."""
    line, col = index.start(call)
    if ctx.already_reported(line, col):
        return
    text = code_of(call.func)
    ctx.report("PT013", line, col,
               f"{owner} stores what {text} builds, and porter cannot read {found.package} ({found.why}): if it is an "
               f"nn.Module, it stays torch ({_NOT_CONVERTED}), {outcome}. Install {found.package} where porter runs "
               f"and convert the modules of it your tree reaches with it: porter convert SRC -o OUT --with "
               f"{found.package} (or rewrite that part with flax.nnx)")


def _pass_rngs(call: cst.Call, found: OutsideName, ctx: ConversionContext, index: SourceIndex) -> None:
    """`timm.create_model(...)` in a module's constructor, its package converted with the tree (--with), reached
    through an attribute or a re-export the tree's analysis does not resolve: outside.py reads it as a module
    class or a function returning one, so the call gets rngs as `Block(...)` does."""
    root = call.func
    while type(root) is cst.Attribute:
        root = root.value
    ctx.outside_constructions[id(call)] = code_of(root)
    what = "an nn.Module" if found.kind == MODULE else f"a function returning an nn.Module ({found.why})"
    ctx.report("PT007", *index.start(call),
               f"{code_of(call.func)} is {found.where}, {what} of {found.package}, converted with the tree (--with): "
               "passed rngs (a function taking none of its own passes them on through **kwargs, or fails when "
               "called)")


def _report_unseen(node: cst.BaseExpression, said: str, found: OutsideName, ctx: ConversionContext,
                   index: SourceIndex) -> None:
    """A name of a package converted with the tree (--with) that the tree's analysis did not resolve."""
    module, _, name = (found.where or found.name).rpartition(".")
    what = "an nn.Module" if found.kind == MODULE else "a function returning an nn.Module"
    ctx.report("PT013", *index.start(node),
               f"{said} {code_of(node)} ({found.where}), {what} of {found.package}, which --with converts with the "
               f"tree, but porter does not see it as one here (reached through attributes or a star re-export, "
               f"which it does not follow), so it gets no rngs and the converted code fails when built: import it "
               f"by name from the module defining it (from {module} import {name})")


def _what_to_do(found: OutsideName, rewrite: str = "that part") -> str:
    if found.in_torch:
        return f"It is torch's own {found.where}: import it from torch so that porter converts it"
    return f"Convert the modules of {found.package} your tree reaches with it: porter convert SRC -o OUT --with " \
           f"{found.package} (or copy {found.file} into your tree, or rewrite {rewrite} with flax.nnx)"


class _Uses(cst.CSTVisitor):
    """The calls and values of imported names in a class or function body (annotations aside)."""

    def __init__(self, names: dict[str, str]) -> None:
        super().__init__()
        self.names = names
        self.found: list[tuple[cst.CSTNode, bool]] = []  # (the call or the name, called)
        self.in_constructor: set[int] = set()  # the calls found in __init__ (an rngs is in scope there)
        self._functions: list[str] = []
        self.callees: set[int] = set()
        self.type_checks: set[int] = set()  # the classes of isinstance(x, A) and issubclass(x, (A, B))
        self.stored: set[int] = set()  # calls in __init__ whose value is stored on the module: self.x = f(...)

    def visit_Annotation(self, node: cst.Annotation) -> bool:
        return False

    def visit_Assign(self, node: cst.Assign) -> None:
        if self._functions == ["__init__"] and type(node.value) is cst.Call and any(
                type(t.target) is cst.Attribute and type(t.target.value) is cst.Name and t.target.value.value == "self"
                for t in node.targets):
            self.stored.add(id(node.value))

    def visit_Call(self, node: cst.Call) -> None:
        if type(node.func) is cst.Name and node.func.value in ("isinstance", "issubclass") and len(node.args) == 2:
            classes = node.args[1].value
            listed = classes.elements if type(classes) is cst.Tuple else [cst.Element(classes)]
            self.type_checks.update(id(element.value) for element in listed)
        if _dotted(node.func, self.names) is not None:
            self.found.append((node, True))
            self.callees.add(id(node.func))
            if self._functions == ["__init__"]:
                self.in_constructor.add(id(node))

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        if _dotted(node, self.names) is None:
            node.value.visit(self)  # not .attr: `self.ResNet` is no use of ResNet
        elif id(node) not in self.callees:
            self.found.append((node, False))
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)  # not the keyword's name
        return False

    def visit_Param(self, node: cst.Param) -> bool:
        if node.default is not None:
            node.default.visit(self)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self._functions.append(node.name.value)
        for part in (*node.decorators, node.params, node.body):
            part.visit(self)
        self._functions.pop()
        return False

    def visit_Name(self, node: cst.Name) -> None:
        if node.value in self.names and id(node) not in self.callees:
            self.found.append((node, False))
