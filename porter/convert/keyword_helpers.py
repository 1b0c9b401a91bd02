"""Module-level functions that hand keyword arguments to torch calls: `def to(x): return {'device':
x.device, 'dtype': x.dtype}` used as `torch.zeros(n, **to(x))`. torch's signature cannot be matched
through `**`, so the call is converted as if the dict's entries were written out as keywords
(`torch.zeros(n, device=x.device, dtype=x.dtype)`), with the function's parameters replaced by the
call's arguments. Only where that is the same program: one `return {...}` of string keys, plain
parameters, arguments that are names or attribute chains (evaluated again, the same value and no
effect)."""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst


@dataclass(frozen=True)
class KeywordHelper:
    params: tuple[str, ...]
    entries: tuple[tuple[str, cst.BaseExpression], ...]  # (keyword, value) in the dict's order


def keyword_helpers(module: cst.Module) -> dict[str, KeywordHelper]:
    """The module's top-level functions whose whole body is `return {'key': value, ...}`."""
    found = {}
    for statement in module.body:
        if isinstance(statement, cst.FunctionDef) and not statement.decorators:
            helper = _helper(statement)
            if helper is not None:
                found[statement.name.value] = helper
    return found


def _helper(function: cst.FunctionDef) -> KeywordHelper | None:
    params = function.params
    if params.star_arg is not cst.MaybeSentinel.DEFAULT or params.star_kwarg or params.kwonly_params \
            or params.posonly_params or any(p.default is not None for p in params.params):
        return None
    body = function.body.body if isinstance(function.body, cst.IndentedBlock) else function.body.body
    if len(body) != 1 or not isinstance(body[0], cst.SimpleStatementLine) or len(body[0].body) != 1:
        return None
    returned = body[0].body[0]
    if not isinstance(returned, cst.Return) or not isinstance(returned.value, cst.Dict):
        return None
    entries = []
    for element in returned.value.elements:
        if not isinstance(element, cst.DictElement) or not isinstance(element.key, cst.SimpleString):
            return None
        key = element.key.evaluated_value
        if not isinstance(key, str) or not key.isidentifier() or _binds_names(element.value):
            return None
        entries.append((key, element.value))
    return KeywordHelper(tuple(p.name.value for p in params.params), tuple(entries))


def _binds_names(node: cst.CSTNode) -> bool:
    """A lambda or comprehension in the value: its own names could shadow a parameter."""
    found = []

    class Finder(cst.CSTVisitor):
        def visit_Lambda(self, node):
            found.append(node)

        def visit_CompFor(self, node):
            found.append(node)

        def visit_NamedExpr(self, node):
            found.append(node)

    node.visit(Finder())
    return bool(found)


def expand(call: cst.Call, helpers: dict[str, KeywordHelper]) -> cst.Call | None:
    """`call` with each `**helper(args)` written out as keywords; None where there is none or it cannot be."""
    args, expanded = [], False
    for arg in call.args:
        inner = arg.value
        if arg.star == "**" and isinstance(inner, cst.Call) and isinstance(inner.func, cst.Name) \
                and inner.func.value in helpers:
            keywords = _keywords(inner, helpers[inner.func.value])
            if keywords is None:
                return None
            args.extend(keywords)
            expanded = True
        else:
            args.append(arg)
    named = [a.keyword.value for a in args if a.keyword is not None]
    if not expanded or len(named) != len(set(named)):  # a keyword given twice: torch's TypeError stays
        return None
    return call.with_changes(args=[a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in args])


def _keywords(call: cst.Call, helper: KeywordHelper) -> list[cst.Arg] | None:
    if len(call.args) != len(helper.params) or any(a.star or a.keyword for a in call.args):
        return None
    if not all(_plain(a.value) for a in call.args):
        return None
    given = dict(zip(helper.params, (a.value for a in call.args)))
    return [cst.Arg(value.visit(_Substitute(given)), keyword=cst.Name(key),
                    equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                          whitespace_after=cst.SimpleWhitespace("")))
            for key, value in helper.entries]


def _plain(node: cst.BaseExpression) -> bool:
    """A name or an attribute chain on one: evaluated again, the same value and no effect."""
    while isinstance(node, cst.Attribute):
        node = node.value
    return isinstance(node, cst.Name)


class _Substitute(cst.CSTTransformer):
    def __init__(self, given: dict[str, cst.BaseExpression]) -> None:
        super().__init__()
        self.given = given

    def leave_Attribute(self, original_node, updated_node):
        return updated_node.with_changes(attr=original_node.attr)  # `x.dtype`: the `dtype` is no parameter

    def leave_Arg(self, original_node, updated_node):
        return updated_node.with_changes(keyword=original_node.keyword)

    def leave_Name(self, original_node, updated_node):
        value = self.given.get(original_node.value)
        return updated_node if value is None else value
