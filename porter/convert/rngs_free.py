"""Module classes that build nothing random take no `rngs`.

A converted module class takes `rngs` because its layers draw their initial values (nnx.Linear), its
dropout draws masks, its code draws random numbers. One that does none of this (`F.relu` and reshapes
in its forward, nn.ReLU or nn.MaxPool2d children, children of such classes only) gets no `rngs`
parameter, and its constructions pass none.

`find` decides from the original code, before the rewrite: a plain nn.Module subclass of this file whose
body calls no torch layer or function that takes rngs or draws, no layer factory or layer constructor
held by a name, and constructs only module classes that are themselves rngs-free (here, or in another
file of the tree: ConversionContext.rngs_free_classes, given by the tree as "plain-module"). Its name
must appear only as the callee of direct calls in this file (a class passed as a value, used as a base
or named in a string may be called elsewhere with rngs=). What the analysis cannot see (a forward whose
F.dropout becomes an nnx.Dropout the constructor builds) `still_random` finds in the result: the file is
then converted again with that class taking rngs (porter/convert/pipeline.py).
"""

from __future__ import annotations

import re

import libcst as cst

from porter.convert.context import ConversionContext
from porter.convert.passes.analyze import IN_PLACE_DRAWS, MODULE_BASES
from porter.convert.traverse import find_all

# what makes a rule random besides taking rngs: its builder draws (porter/convert/op_builders.py's _key users)
# or builds a dropout layer (builders.dropout)
_RANDOM_WORDS = ("rand", "bernoulli", "normal", "uniform", "dropout", "multinomial", "poisson", "exponential",
                 "geometric", "init.", "xavier", "kaiming", "orthogonal")


def find(module: cst.Module, ctx: ConversionContext, source: str, keep: frozenset[str] = frozenset()) -> set[str]:
    """The module classes defined at the top of `module` that need no rngs (not those in `keep`)."""
    classes = {s.name.value: s for s in module.body
               if type(s) is cst.ClassDef and s.name.value in ctx.module_classes and s.name.value not in keep}
    plain = {name for name, node in classes.items() if _plain(name, node, ctx)}
    constructs: dict[str, set[str]] = {}
    for name in plain & _only_called(plain, source):
        built = _constructed_classes(classes[name], ctx)
        if built is not None:
            constructs[name] = built
    ctx.rngs_free_bases |= {s.name.value for s in module.body if type(s) is cst.ClassDef
                            and s.name.value in ctx.module_classes and _module_class_bases(s, ctx)
                            and _module_class_bases(s, ctx) <= ctx.rngs_free_classes}
    free = set(constructs)
    changed = True
    while changed:  # a class constructing one that needs rngs needs them too
        changed = False
        for name in list(free):
            if not constructs[name] <= free | ctx.rngs_free_classes:
                free.discard(name)
                changed = True
    return free


def _module_class_bases(node: cst.ClassDef, ctx: ConversionContext) -> set[str]:
    return {base.value.value for base in node.bases
            if type(base.value) is cst.Name and base.value.value in ctx.module_classes}


def still_random(module: cst.Module, ctx: ConversionContext) -> set[str]:
    """The rngs-free classes whose converted code uses `rngs` after all (or had statements using it
    injected into a constructor): the analysis missed what they draw."""
    wrong = {name for name in ctx.rngs_free_classes
             if any("rngs" in statement for statement in ctx.injected_init_statements.get(name, ()))}
    for statement in module.body:
        if type(statement) is cst.ClassDef and statement.name.value in ctx.rngs_free_classes \
                and any(n.value == "rngs" for n in find_all(statement.body, cst.Name)):
            wrong.add(statement.name.value)
    return wrong


def _plain(name: str, node: cst.ClassDef, ctx: ConversionContext) -> bool:
    """Right under nn.Module (not a layer's or another module class's subclass, not nn.Sequential's),
    with no method other than its constructor that builds layers."""
    return bool(node.bases) and not node.keywords \
        and all(ctx.qualified_name(base.value) in MODULE_BASES for base in node.bases) \
        and name not in ctx.layer_inheriting_classes and name not in ctx.sequential_classes \
        and not ctx.methods_needing_rngs.get(name)


def _only_called(names: set[str], source: str) -> set[str]:
    """The names every mention of which in the file's text (attribute names aside) is a call (`class
    Name(` included) and which are defined once."""
    if not names:
        return set()
    called, other = mentions(names, source)
    defined = re.findall(r"\bclass\s+(\w+)", source)
    return {name for name in called - other if defined.count(name) == 1}


def mentions(names: set[str], text: str) -> tuple[set[str], set[str]]:
    """Which of `names` the text mentions as a callee (`Name(`), and which otherwise (a value: `act=Name`,
    `Name` passed on), attribute names (`.Name`) aside. The tree runner asks it too, of other files' text."""
    if not names:
        return set(), set()
    # (what comes before is tested in Python: a pattern that opens with a lookbehind is tried at every character,
    # one that opens with the names only where a name's first letter is)
    pattern = re.compile(r"(" + "|".join(map(re.escape, sorted(names))) + r")(?!\w)(\s*\()?")
    called, other = set(), set()
    for match in pattern.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isalnum() or before in "_.":  # inside a longer name (`MyBlock`), an attribute name (`.Block`)
            continue
        (called if match.group(2) else other).add(match.group(1))
    return called, other


def _constructed_classes(node: cst.ClassDef, ctx: ConversionContext) -> set[str] | None:
    """The module classes the class body constructs; None when it builds or draws anything else random."""
    found = find_all(node.body, (cst.Call, cst.Param, cst.Assign))
    parameters = {n.name.value for n in found if type(n) is cst.Param}
    handed_in = {target.target.attr.value for n in found if type(n) is cst.Assign  # self.act = act_layer
                 and type(n.value) is cst.Name and n.value.value in parameters
                 for target in n.targets if type(target.target) is cst.Attribute}
    built: set[str] = set()
    for call in (n for n in found if type(n) is cst.Call):
        func = call.func
        if id(call) in ctx.unknown_constructions:  # fn(c) with fn = partial(block): porter/convert/registries.py
            return None
        if type(func) is cst.Name and func.value in ctx.module_classes:
            built.add(func.value)
            continue
        if type(func) is cst.Name and (func.value in ctx.rngs_functions or func.value in parameters
                                       or func.value in ctx.constructor_globals):
            return None  # a layer factory, or a constructor handed in (`act_layer()`)
        if type(func) is cst.Attribute and (func.attr.value in IN_PLACE_DRAWS or func.attr.value in handed_in):
            return None  # t.uniform_(), self._norm_layer(c)
        for expression in (func, *(arg.value for arg in call.args)):  # partial(nn.Linear, ...) too
            if _random_torch(expression, ctx):
                return None
    return built


def _random_torch(expression: cst.BaseExpression, ctx: ConversionContext) -> bool:
    """A torch name whose rule takes rngs or draws (nn.Linear, nn.Dropout, torch.randn, F.dropout), or
    a tensor method that draws (x.bernoulli(), x.uniform_())."""
    qualified = ctx.qualified_name(expression) if type(expression) in (cst.Name, cst.Attribute) else None
    if qualified is not None:
        rule = ctx.rules.lookup(qualified)  # no rule (nn.init.xavier_uniform_, removed): rngs for the hand port
        return _random_words(qualified) or (rule is not None and (rule.uses_rngs or _random_words(rule.builder or "")))
    if type(expression) is cst.Attribute:
        rule = ctx.rules.method(expression.attr.value)
        return rule is not None and (rule.uses_rngs or _random_words(expression.attr.value)
                                     or _random_words(rule.builder or ""))
    return False


def _random_words(text: str) -> bool:
    text = text.lower().replace("normalize", "")  # F.normalize draws nothing
    return any(word in text for word in _RANDOM_WORDS)
