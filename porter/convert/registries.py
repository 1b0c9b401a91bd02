"""Module classes reached through registries: containers of layer constructors, and what is picked from them.

Real model code keeps its building blocks in literals and picks one by key or position:

    ENCODERS = {"resnet": {"encoder": ResNetEncoder, "params": {...}}, ...}   # a registry of the file
    Encoder = ENCODERS[name]["encoder"]; Encoder(**params)                   # a name bound from it
    blocks = [BasicConv2d, Inception, InceptionAux]; blocks[0](3, 64)        # googlenet

Each such call builds a module and needs `rngs=` like `ResNetEncoder(...)` itself. A literal of constructors
at any depth is a layer constructor for porter's analysis (porter/convert/passes/analyze.py:
is_layer_constructor), so a name bound to it holds constructors, and a subscript of such a name picks one.
A registry that also holds other values (the "params" dicts above) is kept by name
(ConversionContext.registries) and a subscript is followed key by key: a constant key picks its entry,
any other key may pick every entry. What the subscript may reach decides:

- only layer constructors: the call gets `rngs=` (the same injection as for `Block(...)`);
- constructors and other values (`{"a": Block, "b": make_config}[k]`): porter cannot tell; the call
  becomes `with_rngs_if_taken(f, rngs)(...)`, which passes `rngs` where the callee takes it
  (porter/emitted.py);
- nothing of the kind: an ordinary value.

A class handed to a module's constructor without a default or annotation that says what it is
(`def __init__(self, block): self.layer = block(c)`) is the same unknown: it gets the runtime helper too,
and so does a class of the file handed to a module-level function that calls it (`def make(block, c):
return block(c)` with `make(Block, 3)` in the file), which then takes rngs as a layer factory.
Where no `rngs` is in scope for the helper (a module-level call), the call is an error (PT006) instead.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import ConversionContext
from porter.convert.traverse import find_all

_CONTAINERS = (cst.List, cst.Tuple, cst.Set, cst.Dict)
_MODULE_TYPEVAR = m.Assign(targets=[m.AssignTarget(target=m.Name())], value=m.Call(
    func=m.Name("TypeVar") | m.Attribute(attr=m.Name("TypeVar")),
    args=[m.ZeroOrMore(), m.Arg(keyword=m.Name("bound"), value=m.Name("Module") | m.Attribute(attr=m.Name("Module"))),
          m.ZeroOrMore()]))
HELPER = "with_rngs_if_taken"


def leaves(literal: cst.BaseExpression) -> list[cst.BaseExpression] | None:
    """The values of a container literal at any depth (None where one is unpacked: `[*more, A]`)."""
    if not isinstance(literal, _CONTAINERS):
        return [literal]
    found = []
    for element in literal.elements:
        if isinstance(element, (cst.StarredElement, cst.StarredDictElement)):
            return None
        inner = leaves(element.value)
        if inner is None:
            return None
        found += inner
    return found


def holds_only(literal: cst.BaseExpression, is_constructor) -> bool:
    """A container literal whose values, at any depth, are all layer constructors."""
    values = leaves(literal)
    return bool(values) and all(is_constructor(v) for v in values)


def note(module: cst.Module, ctx: ConversionContext) -> None:
    """Module-level `NAME = {...}` / `[...]` literals with a name among their values: the registries
    that a subscript may pick a module class from (what the values are is asked at the pick: the
    classes of the file are not all known before the analysis has read them). And the module-level
    functions handed a class that they call (ConversionContext.handed_classes)."""
    _note_handed_classes(module, ctx)
    ctx.top_level_functions = {id(s) for s in module.body if type(s) is cst.FunctionDef}
    for statement in module.body:
        for small in statement.body if isinstance(statement, cst.SimpleStatementLine) else ():
            if m.matches(small, _MODULE_TYPEVAR):  # ModelT = TypeVar("ModelT", bound=nn.Module)
                ctx.module_typevars.add(small.targets[0].target.value)
        for small in statement.body if isinstance(statement, cst.SimpleStatementLine) else ():
            if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                    and isinstance(small.targets[0].target, cst.Name) and isinstance(small.value, _CONTAINERS):
                values = leaves(small.value)
                if values and any(isinstance(v, (cst.Name, cst.Attribute)) for v in values):
                    ctx.registries[small.targets[0].target.value] = small.value
                elif not values:  # `encoders = {}`, filled as the module runs (`encoders.update(resnet_encoders)`)
                    ctx.registries[small.targets[0].target.value] = None


def _note_handed_classes(module: cst.Module, ctx: ConversionContext) -> None:
    """`def make(block, c): return block(c)` called somewhere in the file as `make(Block, 3)`, Block a class
    of the file (or a module class of the tree, or torch's `nn.X`): `block` may be a module class, its call
    gets rngs where the class takes them (with_rngs_if_taken). Only parameters with neither default nor
    annotation (a default or annotation says what it is: the analysis reads those) that the function calls,
    or hands on to another function of the file (`def make(block, c): return build(block, c)`).
    A tree's other files call the file's functions too: ctx.handed_in names the parameters they hand a class
    (by position or keyword), and ctx.handed_out records the calls of this file that hand a class (or a
    parameter handed one) to a function of another file (porter/convert/tree.py takes it there): those
    handing a class directly as the analysis reads them (note_handing), those handing one on here."""
    functions = {s.name.value: s for s in module.body if type(s) is cst.FunctionDef}
    ctx.file_classes = {s.name.value for s in module.body if type(s) is cst.ClassDef}
    ctx.top_level_names = set(functions) | ctx.file_classes
    bare = {name: _bare_params(function) for name, function in functions.items()}
    called = {name: _called_names(functions[name], params) for name, params in bare.items() if params}
    classes = ctx.file_classes | ctx.module_classes
    handed: set[tuple[str, str]] = set()  # (function, parameter) handed a class

    def hand(function: str, where: int | str) -> None:
        name = where if isinstance(where, str) else _positional_names(functions[function])[where] \
            if where < len(_positional_names(functions[function])) else None
        if name in bare[function] and (function, name) not in handed:
            handed.add((function, name))
            for call in called[function]:  # handed on: `build(block, c)`
                for where_next, arg in _arguments(call):
                    if type(arg.value) is cst.Name and arg.value.value == name:
                        hand_to(call.func, where_next)

    def hand_to(func: cst.BaseExpression, where: int | str) -> None:
        if type(func) is cst.Name and func.value in called:
            hand(func.value, where)
        else:
            _hand_out(func, where, ctx)

    try:
        for function, where in ctx.handed_in:
            if function in called:
                hand(function, where)
        if not called:
            return
        for call in find_all(module, cst.Call):
            for where, arg in _arguments(call):
                if _is_class(arg.value, classes):
                    hand_to(call.func, where)
    finally:
        hand = hand_to = None  # each closure holds the other: a reference cycle keeping the file's nodes alive
    for function, name in handed:
        if _calls_or_stores(functions[function], holders(functions[function], {name})):
            ctx.handed_classes.setdefault(function, set()).add(name)
            ctx.rngs_functions.add(function)  # a layer factory, from the start (the analysis reads it)


def holders(function: cst.FunctionDef, seeds: set[str]) -> set[str]:
    """`seeds` and what holds one of them in `function`: a name or self attribute bound to it or to a partial of
    it (`fn = partial(block, c)`, `self.block_cls = block`), dotted (`self.block_cls`)."""
    held = set(seeds)
    assigns = [a for a in find_all(function.body, cst.Assign) if len(a.targets) == 1]
    loops = find_all(function.body, (cst.For, cst.CompFor))
    for _ in range(2):  # `fn = partial(block); self.fn = fn`
        for assign in assigns:
            target = _dotted(assign.targets[0].target)
            if target is not None and target not in held and _holds(assign.value, held) \
                    and (type(assign.targets[0].target) is cst.Name or target.startswith("self.")):
                held.add(target)
        held |= {loop.target.value for loop in loops  # `[b(c, c) for b in blocks]`, blocks handed [A, B]
                 if type(loop.target) is cst.Name and _dotted(loop.iter) in held}
    return held


def _holds(value: cst.BaseExpression, held: set[str]) -> bool:
    if type(value) in (cst.BooleanOperation, cst.IfExp):  # `norm_layer or nn.LayerNorm`: may be what is held
        return any(_holds(v, held) for v in _choices(value) if v is not value)
    if type(value) is cst.Call and (_dotted(value.func) or "").rsplit(".", 1)[-1] == "partial" and value.args \
            and value.args[0].keyword is None and not value.args[0].star:
        value = value.args[0].value
    return _dotted(value) in held


def _choices(value: cst.BaseExpression) -> list[cst.BaseExpression]:
    """What `value` may be: each side of `a or b` and of `a if c else b`, at any depth."""
    if type(value) is cst.BooleanOperation and type(value.operator) is cst.Or:
        return _choices(value.left) + _choices(value.right)
    if type(value) is cst.IfExp:
        return _choices(value.body) + _choices(value.orelse)
    return [value]


def _is_none(node) -> bool:
    return type(node) is cst.Name and node.value == "None"


def _calls_or_stores(function: cst.FunctionDef, held: set[str]) -> bool:
    """One of `held` is called in `function`, or put in a container (an error there: stored_in_containers)."""
    return any(_dotted(call.func) in held for call in find_all(function.body, cst.Call)) \
        or bool(stored_in_containers(function, held))


def stored_in_containers(function: cst.FunctionDef, held: set[str]) -> list[cst.BaseExpression]:
    """The container literals of `function` holding one of `held` at any depth (`{"b": block}`, `[block_fn]`)."""
    return [literal for literal in find_all(function.body, _CONTAINERS)
            if any(_dotted(v) in held or _holds(v, held) for v in leaves(literal) or ())]


def note_handing(call: cst.Call, ctx: ConversionContext) -> None:
    """A call of the analysis (converting a tree) that hands a class of the file, a module class of the tree or
    torch's `nn.X` to a function that may be another file's: ctx.handed_out."""
    for where, arg in _arguments(call):
        if _is_class(arg.value, ctx.file_classes | ctx.module_classes):
            _hand_out(call.func, where, ctx)


def _hand_out(func: cst.BaseExpression, where: int | str, ctx: ConversionContext) -> None:
    """(a module class of the tree given a class, `Mlp(act_layer=nn.GELU)`, reads it in its own constructor)"""
    if ctx.handed_out is not None and (type(func) is cst.Name and func.value not in ctx.top_level_names
                                       or type(func) is cst.Attribute and _dotted(func) is not None) \
            and _dotted(func) not in ctx.module_classes:
        ctx.handed_out.add((_dotted(func), where))  # a function of another file, maybe


def _bare_params(function: cst.FunctionDef) -> set[str]:
    params = function.params
    return {p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]
            if p.default is None and p.annotation is None}


def _called_names(function: cst.FunctionDef, names: set[str]) -> list[cst.Call]:
    """The calls of `function` that call one of `names` or pass one on as an argument."""
    return [call for call in find_all(function.body, cst.Call)
            if type(call.func) is cst.Name and call.func.value in names
            or any(type(a.value) is cst.Name and a.value.value in names for a in call.args)]


def _arguments(call: cst.Call):
    """(position or keyword, argument) of a call's arguments, up to a star argument."""
    for position, arg in enumerate(call.args):
        if arg.star != "":
            return
        yield (arg.keyword.value if arg.keyword is not None else position), arg


def _dotted(node: cst.BaseExpression) -> str | None:
    if type(node) is cst.Name:
        return node.value
    if type(node) is cst.Attribute:
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr.value}"
    return None


def _positional_names(function: cst.FunctionDef) -> list[str]:
    return [p.name.value for p in [*function.params.posonly_params, *function.params.params]]


def _is_class(value: cst.BaseExpression, classes: set[str]) -> bool:
    """A class of the file or the tree, torch's `nn.X`, or a list or tuple of them (`make([A, B], c)`: a loop over
    the parameter it is handed binds each, holders)."""
    if type(value) is cst.Name:
        return value.value in classes
    if type(value) in (cst.List, cst.Tuple):
        return bool(value.elements) and all(type(e) is cst.Element and _is_class(e.value, classes)
                                            for e in value.elements)
    return m.matches(value, m.Attribute(value=m.Name("nn") | m.Attribute(value=m.Name("torch"), attr=m.Name("nn"))))


def picked(subscript: cst.Subscript) -> tuple[cst.BaseExpression, list[cst.BaseExpression | None]]:
    """`REG[name]["encoder"]` -> (REG, [name, "encoder"]); a slice or several indices are None keys."""
    keys = []
    node: cst.BaseExpression = subscript
    while isinstance(node, cst.Subscript):
        index = node.slice[0].slice if len(node.slice) == 1 else None
        keys.insert(0, index.value if isinstance(index, cst.Index) else None)
        node = node.value
    return node, keys


def reached(literal: cst.BaseExpression, keys: list) -> list[cst.BaseExpression] | None:
    """What `literal[k1][k2]...` may be; None where porter cannot follow it (a key past the literal, `*more`)."""
    values = [literal]
    for key in keys:
        step = []
        for value in values:
            entries = _entries(value, key)
            if entries is None:
                return None
            step += entries
        values = step
    return values


def _entries(container: cst.BaseExpression, key) -> list[cst.BaseExpression] | None:
    if not isinstance(container, _CONTAINERS) or isinstance(container, cst.Set):
        return None
    if any(isinstance(e, (cst.StarredElement, cst.StarredDictElement)) for e in container.elements):
        return None
    constant = _constant(key)
    if isinstance(container, cst.Dict):
        if constant is not None:
            return [e.value for e in container.elements if _constant(e.key) == constant]
        return [e.value for e in container.elements]
    values = [e.value for e in container.elements]
    if isinstance(constant, int) and -len(values) <= constant < len(values):
        return [values[constant]]
    return values


def _constant(node) -> str | int | None:
    if isinstance(node, cst.SimpleString):
        return node.evaluated_value
    if isinstance(node, cst.Integer):
        return int(node.value)
    if m.matches(node, m.UnaryOperation(operator=m.Minus(), expression=m.Integer())):
        return -int(node.expression.value)
    return None


def picks(subscript: cst.Subscript, ctx: ConversionContext, is_constructor) -> str | None:
    """What a subscript picks: "constructor" (only layer constructors), "unknown" (constructors and
    other values of a registry of the file), "runtime" (anything: a registry filled as the module runs,
    `encoders = {}; encoders.update(resnet_encoders)`) or None (no constructor, or not a registry)."""
    root, keys = picked(subscript)
    if isinstance(root, cst.Name) and root.value in ctx.registries:
        if ctx.registries[root.value] is None:  # filled at run time: any value
            return "runtime"
        values = reached(ctx.registries[root.value], keys)
        if values is None:
            return "unknown"
        found = [leaves(value) for value in values]
        constructors = [each is not None and all(is_constructor(v) for v in each) for each in found]
        if constructors and all(constructors):
            return "constructor"
        return "unknown" if any(constructors) else None
    return "constructor" if is_constructor(root) else None


def constructs(value: cst.BaseExpression, ctx: ConversionContext, is_constructor) -> bool:
    """A literal holding only layer constructors, or a subscript picking only such (is_layer_constructor)."""
    if isinstance(value, cst.Subscript):
        return picks(value, ctx, is_constructor) == "constructor"
    return holds_only(value, is_constructor)


def note_unknown_constructions(function: cst.FunctionDef, ctx: ConversionContext, is_constructor,
                               module_init: bool, report=None, returns_module: bool = False,
                               module_class: cst.ClassDef | None = None) -> None:
    """The calls of `function` whose callee may or may not be a module class: ConversionContext.unknown_constructions.
    A class handed to it and put in a container is reported (`report(node, message)`): porter does not follow
    it out of the container, so what calls it there gets no rngs. `returns_module`: a top-level function annotated
    to return a module (`def create_model(...) -> nn.Module`), whose callers pass it rngs. `module_class`: the
    module class whose method `function` is."""
    handed = ctx.handed_classes.get(function.name.value)
    if handed and report is not None:
        for literal in stored_in_containers(function, holders(function, handed)):
            report(literal, f"{' or '.join(sorted(handed))} is handed a module class (a call of {function.name.value} "
                            "in this tree) and put in a container here: porter does not follow it out of the "
                            "container, so the module it builds gets no rngs; call it directly, or pass rngs=rngs "
                            "where it is built; left unchanged")
    names = unknown_names(function, ctx, is_constructor, module_init)
    if returns_module:
        names |= _returned_callees(function, is_constructor)
    built_by_method = _built_from_constructor_attributes(module_class, function) if module_class is not None \
        else set()
    if built_by_method:  # (as a method building layers: its callers pass rngs)
        ctx.methods_needing_rngs.setdefault(module_class.name.value, set()).add(function.name.value)
        names |= built_by_method
    if not names and not ctx.registries:  # nothing else is unknown: a pick of a registry of the file
        return
    in_scope = _takes_rngs(function, ctx, is_constructor, module_init)
    returned = _returned_values(function) if id(function) in ctx.top_level_functions else ()
    for call in find_all(function.body, cst.Call):
        if is_unknown_construction(call, ctx, names, is_constructor, in_scope or id(call) in returned):
            ctx.unknown_constructions[id(call)] = _root_name(call.func)
            if id(function) in ctx.top_level_functions:  # a layer factory now: the analysis's prefilter may skip
                ctx.rngs_functions.add(function.name.value)  # the statement (`return Encoder(**params)`)


def _root_name(func: cst.BaseExpression) -> str:
    root = picked(func)[0] if isinstance(func, cst.Subscript) else func
    if type(root) is cst.Attribute:  # self.block_cls(c): the word of the statement is the attribute's
        return root.attr.value
    return root.value if isinstance(root, cst.Name) else ""


def unknown_names(function: cst.FunctionDef, ctx: ConversionContext, is_constructor, module_init: bool) -> set[str]:
    """Names of `function` that may hold a module class porter cannot tell from anything else: bound
    from a registry pick reaching both, a parameter handed a class of the file (ConversionContext.handed_classes)
    or annotated with a TypeVar bound to nn.Module (`model_cls: Callable[..., ModelT]`), or (in a module class's
    constructor or a layer factory) a parameter with neither a default nor an annotation whose call is stored on
    the module (`self.layer = block(c)`)."""
    names = set()
    in_scope = _takes_rngs(function, ctx, is_constructor, module_init)
    returned = _returned_values(function) if id(function) in ctx.top_level_functions else ()
    for assign in _single_name_assigns(function) if ctx.registries else ():  # (no registry: no pick is unknown)
        target = assign.targets[0].target.value
        if isinstance(assign.value, cst.Subscript) and _unknown_pick(assign.value, ctx, is_constructor,
                                                                     in_scope or target in returned):
            names.add(target)
    handed = set(ctx.handed_classes.get(function.name.value, ()))
    if ctx.module_typevars:  # model_cls: Callable[..., ModelT], ModelT a TypeVar bound to nn.Module
        params = function.params
        handed |= {p.name.value for p in [*params.posonly_params, *params.params, *params.kwonly_params]
                   if p.annotation is not None and any(n.value in ctx.module_typevars
                                                       for n in find_all(p.annotation, cst.Name))}
    if handed:  # called directly, or through a name bound to it or to a partial of it (`fn = partial(block)`)
        held = holders(function, handed)
        names |= {_dotted(call.func) for call in find_all(function.body, cst.Call) if _dotted(call.func) in held}
    if in_scope:
        bare = _untyped_params(function)
        bare |= _loop_names(function)  # `for block_fn, planes in zip(block_fns, channels)`: timm's make_blocks
        bare |= {a.targets[0].target.value for a in _single_name_assigns(function)  # norm_layer = get_norm_layer(x)
                 if type(a.value) is cst.Call}
        if bare:  # `self.block_cls = block; self.one = self.block_cls(c)`, `fn = partial(block, c); self.one = fn(c)`
            held = holders(function, bare)
            names |= {_dotted(call.func) for call in _stored_calls(function)
                      if _dotted(call.func) in held and not is_constructor(call.func)}
    return names


def _takes_rngs(function: cst.FunctionDef, ctx: ConversionContext, is_constructor, module_init: bool) -> bool:
    """A module class's constructor or a layer factory: rngs are in scope."""
    return module_init or function.name.value in ctx.rngs_functions or _builds_layers(function, is_constructor)


def _unknown_pick(subscript: cst.Subscript, ctx: ConversionContext, is_constructor, in_scope: bool) -> bool:
    """A pick that may be a module class or something else. One of a registry filled at run time only where rngs
    are in scope or a function of the file returns what it builds (`Encoder = encoders[name]["encoder"]; return
    Encoder(**params)`): in forward, calling what it holds is most likely no construction (a cache of functions)."""
    picked_kind = picks(subscript, ctx, is_constructor)
    return picked_kind == "unknown" or picked_kind == "runtime" and in_scope


def _returned_values(function: cst.FunctionDef) -> set:
    """The ids of the calls `function` returns (`return f(x)`), the names it calls there (f) and the names it
    returns (`return model`)."""
    found = set()
    for returned in find_all(function.body, cst.Return):
        if type(returned.value) is cst.Call:
            found.add(id(returned.value))
            if type(returned.value.func) is cst.Name:
                found.add(returned.value.func.value)
        elif type(returned.value) is cst.Name:
            found.add(returned.value.value)
    return found


def _untyped_params(function: cst.FunctionDef) -> set[str]:
    """Parameters with neither a default nor an annotation, or a None default: nothing says what they hold."""
    params = function.params
    return {p.name.value for p in [*params.params, *params.kwonly_params]
            if (p.default is None and p.annotation is None or _is_none(p.default)) and p.name.value != "self"}


def _built_from_constructor_attributes(module_class: cst.ClassDef, method: cst.FunctionDef) -> set[str]:
    """`self.block_cls = block` in the constructor, `self.block_cls(3, c)` in `_make`, a method the constructor
    calls and forward does not: the self attributes `method` calls that may hold a module class."""
    methods = {s.name.value: s for s in module_class.body.body if type(s) is cst.FunctionDef}
    init, name = methods.get("__init__"), method.name.value
    if init is None or name in ("__init__", "forward") or not _calls_own_method(init, name) \
            or "forward" in methods and _calls_own_method(methods["forward"], name):
        return set()
    held = {f"self.{attribute}" for attribute in constructor_held_attributes(module_class)}
    return {_dotted(call.func) for call in find_all(method.body, cst.Call) if _dotted(call.func) in held}


def constructor_held_attributes(module_class: cst.ClassDef) -> set[str]:
    """The self attributes the constructor binds to a parameter that nothing says is not a class
    (`self.block_cls = block`), or to a partial of one."""
    init = next((s for s in module_class.body.body if type(s) is cst.FunctionDef and s.name.value == "__init__"),
                None)
    if init is None:
        return set()
    return {h.removeprefix("self.") for h in holders(init, _untyped_params(init)) if h.startswith("self.")}


def _calls_own_method(function: cst.FunctionDef, name: str) -> bool:
    return any(_dotted(call.func) == f"self.{name}" for call in find_all(function.body, cst.Call))


def _returned_callees(function: cst.FunctionDef, is_constructor) -> set[str]:
    """The callees of what `function` returns, `return f(...)` or `x = f(...); ...; return x`, that are not known
    layer constructors: timm's create_model returns `create_fn(...)`, create_fn looked up in its registry at run
    time. Taking rngs as a keyword of its own, the function keeps them out of the **kwargs it stores."""
    assigned: dict[str, list[cst.BaseExpression]] = {}
    for assign in _single_name_assigns(function):
        assigned.setdefault(assign.targets[0].target.value, []).append(assign.value)
    local = set(assigned) | set(_positional_names(function)) | {p.name.value for p in function.params.kwonly_params}
    found = set()
    for returned in find_all(function.body, cst.Return):
        value = returned.value
        values = assigned.get(value.value, []) if type(value) is cst.Name else [value]
        found |= {v.func.value for v in values
                  if type(v) is cst.Call and type(v.func) is cst.Name and not is_constructor(v.func)}
    return found & local  # (a function of the file or an import: the analysis knows whether it builds a module)


def _builds_layers(function: cst.FunctionDef, is_constructor) -> bool:
    """A layer factory (it will take rngs): a call of a layer constructor in its body."""
    return any(is_constructor(call.func) for call in find_all(function.body, cst.Call))


def _loop_names(function: cst.FunctionDef) -> set[str]:
    """Names a for loop or a comprehension of `function` binds (each name of a tuple target too)."""
    return {name.value for loop in find_all(function.body, (cst.For, cst.CompFor))
            for name in find_all(loop.target, cst.Name)}


def is_unknown_construction(call: cst.Call, ctx: ConversionContext, names: set[str], is_constructor,
                            in_scope: bool = False) -> bool:
    """A call whose callee may or may not be a module class: a name of `unknown_names`, or a registry
    pick reaching both (`ENCODERS[k]["encoder"](c)`)."""
    if type(call.func) in (cst.Name, cst.Attribute):
        return _dotted(call.func) in names
    return isinstance(call.func, cst.Subscript) and _unknown_pick(call.func, ctx, is_constructor, in_scope)


def _stored_calls(function: cst.FunctionDef) -> list[cst.Call]:
    """Calls whose result is stored on the module: `self.x = f(...)`, `self.x.append(f(...))`, `layers.append(f())`,
    and the calls inside such a value (`self.x = f(...) if f is not None else nn.Identity()`,
    `self.down = nn.Sequential(f(c), nn.Conv2d(c, c, 1))`)."""
    found = []
    for node in _walk(function.body):
        if isinstance(node, cst.Assign) and any(m.matches(t.target, m.Attribute(value=m.Name("self")))
                                                for t in node.targets):
            found += find_all(node.value, cst.Call)
        if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("append")), args=[m.Arg(value=m.Call())])):
            found += find_all(node.args[0].value, cst.Call)
    return found


def _single_name_assigns(function: cst.FunctionDef) -> list[cst.Assign]:
    return [a for a in _walk(function.body) if isinstance(a, cst.Assign) and len(a.targets) == 1
            and isinstance(a.targets[0].target, cst.Name)]


def _walk(node: cst.CSTNode):
    return find_all(node, (cst.Assign, cst.Call))


def with_rngs_call(call: cst.Call, rngs: cst.BaseExpression) -> cst.Call:
    """`f(args)` -> `with_rngs_if_taken(f, rngs)(args)`."""
    return call.with_changes(func=cst.Call(cst.Name(HELPER), [cst.Arg(call.func), cst.Arg(rngs)]))


def pass_rngs_if_taken(rewrite, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
    """The rewrite of a call of ConversionContext.unknown_constructions by the calls pass (`rewrite`):
    the runtime helper where an `rngs` is in scope, else an error at the call."""
    if not rewrite.scope.rngs_in_scope():
        rewrite.report("PT006", original, "porter cannot tell whether this call builds a module (its callee is "
                                          "picked from a registry that also holds other values, or handed in): "
                                          "no rngs is in scope here to pass it; left unchanged")
        return updated
    rewrite.ctx.need_helper(HELPER)
    new = with_rngs_call(updated, rewrite.scope.rngs(original))
    rewrite.record("module-construct", original, new)
    return new
