"""`**dd` where `dd` is a dict of device and dtype: timm 1.x writes

    dd = {'device': device, 'dtype': dtype}
    self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **dd))

torch's signature cannot be matched through `**`, so a torch function's call is converted as if the entries
were written out (`torch.zeros(1, 1, embed_dim, device=dd['device'], dtype=dd['dtype'])`): the rule then
drops the device and keeps the dtype, a None dtype being the default one as in torch. Only where that is the
same program: every binding of the name in the function is a dict display of string keys, each binding has
every key, the keys are only device and dtype, and the name is used nowhere else than bound and splatted
(nothing can have added or removed an entry)."""

from __future__ import annotations

import libcst as cst

from porter.convert.traverse import find_all

KEYS = frozenset({"device", "dtype"})


def expand(call: cst.Call, function: cst.FunctionDef | None) -> cst.Call | None:
    """`call` with each `**dd` of a device/dtype dict written out as keywords; None where there is none."""
    if function is None or not any(a.star == "**" and type(a.value) is cst.Name for a in call.args):
        return None
    args, expanded = [], False
    for arg in call.args:
        keys = _keys(function, arg.value.value) if arg.star == "**" and type(arg.value) is cst.Name else None
        if keys is None:
            args.append(arg)
            continue
        args += [cst.Arg(cst.Subscript(arg.value, [cst.SubscriptElement(cst.Index(cst.SimpleString(repr(key))))]),
                         keyword=cst.Name(key), equal=cst.AssignEqual(cst.SimpleWhitespace(""),
                                                                     cst.SimpleWhitespace("")))
                 for key in sorted(keys)]
        expanded = True
    named = [a.keyword.value for a in args if a.keyword is not None]
    if not expanded or len(named) != len(set(named)):  # a keyword given twice: torch's TypeError stays
        return None
    return call.with_changes(args=[a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in args])


def _keys(function: cst.FunctionDef, name: str) -> frozenset[str] | None:
    """The keys every binding of `name` in `function` has, when they are all the same device/dtype keys."""
    bound = [a for a in find_all(function.body, cst.Assign)
             if any(type(t.target) is cst.Name and t.target.value == name for t in a.targets)]
    if not bound or any(len(a.targets) != 1 for a in bound):
        return None
    keys = None
    for assign in bound:
        displays = [assign.value.body, assign.value.orelse] if type(assign.value) is cst.IfExp else [assign.value]
        for display in displays:
            found = _display_keys(display)
            if found is None or (keys is not None and found != keys):
                return None
            keys = found
    if not keys or not keys <= KEYS or not _only_bound_and_splatted(function, name, bound):
        return None
    return keys


def _display_keys(display: cst.BaseExpression) -> frozenset[str] | None:
    if type(display) is not cst.Dict:
        return None
    keys = [e.key.evaluated_value for e in display.elements
            if type(e) is cst.DictElement and type(e.key) is cst.SimpleString]
    return frozenset(keys) if len(keys) == len(display.elements) == len(set(keys)) else None


def _only_bound_and_splatted(function: cst.FunctionDef, name: str, bound: list[cst.Assign]) -> bool:
    """Each use of `name` is a binding's target or a `**name` argument (no `dd['x'] = ...`, `dd.update()`, a
    call handed the dict itself, a `global`/`nonlocal` or a parameter of that name)."""
    params = function.params
    if any(p.name.value == name for p in [*params.posonly_params, *params.params, *params.kwonly_params]):
        return False
    allowed = {id(a.targets[0].target) for a in bound}
    allowed |= {id(a.value) for a in find_all(function.body, cst.Arg) if a.star == "**"}
    return all(id(n) in allowed for n in find_all(function.body, cst.Name) if n.value == name)
