"""Parentheses in rewritten expressions: the user's kept, the needed added.

libcst prints a tree as it is: it never adds a parenthesis. A rule that turns
`torch.add(a, b)` into `a + b` is right on its own, and wrong under an operator
or before a dot: `-torch.add(a, b)` would print as `-a + b`, and
`torch.add(a, b).sum()` as `a + b.sum()` (both still compile, both silently
mean something else). Python's parser only ever builds trees whose operands bind
at least as tightly as their place needs, so an operand that binds less tightly
than its place needs, without parentheses, is always a replacement; it gets
parentheses here.
"""

from __future__ import annotations

import libcst as cst

from porter.convert import traverse

# how tightly each operator binds (Python's table, low to high); atoms and primaries bind tightest
_BINARY = {cst.BitOr: 6, cst.BitXor: 7, cst.BitAnd: 8, cst.LeftShift: 9, cst.RightShift: 9, cst.Add: 10,
           cst.Subtract: 10, cst.Multiply: 11, cst.Divide: 11, cst.FloorDivide: 11, cst.Modulo: 11,
           cst.MatrixMultiply: 11, cst.Power: 13}
_NAMED, _LAMBDA, _IF, _OR, _AND, _NOT, _COMPARISON, _UNARY, _POWER, _AWAIT, _PRIMARY = \
    -1, 0, 1, 2, 3, 4, 5, 12, 13, 14, 15


def binding(node: cst.CSTNode) -> int:
    """How tightly `node` binds as an operand: _PRIMARY for atoms, calls, attributes, subscripts and
    anything in parentheses."""
    if getattr(node, "lpar", None):
        return _PRIMARY
    kind = type(node)
    if kind is cst.BinaryOperation:
        return _BINARY[type(node.operator)]
    if kind is cst.UnaryOperation:
        return _NOT if type(node.operator) is cst.Not else _UNARY
    if kind is cst.BooleanOperation:
        return _AND if type(node.operator) is cst.And else _OR
    return {cst.Comparison: _COMPARISON, cst.IfExp: _IF, cst.Lambda: _LAMBDA, cst.NamedExpr: _NAMED,
            cst.Await: _AWAIT}.get(kind, _PRIMARY)


def _needs(node: cst.CSTNode) -> dict[str, int]:
    """Operand field -> the least binding it needs without parentheses (an operand on the side an operator
    does not group towards needs to bind more tightly than the operator)."""
    kind = type(node)
    if kind is cst.BinaryOperation:
        level = _BINARY[type(node.operator)]
        if level == _POWER:  # right-associative; `2 ** -x` is fine, `(-x) ** 2` is not `-x ** 2`
            return {"left": _AWAIT, "right": _UNARY}
        return {"left": level, "right": level + 1}
    if kind is cst.UnaryOperation:
        return {"expression": _NOT if type(node.operator) is cst.Not else _UNARY}
    if kind is cst.BooleanOperation:
        level = _AND if type(node.operator) is cst.And else _OR
        return {"left": level, "right": level + 1}
    if kind is cst.Comparison:
        return {"left": _COMPARISON + 1}
    if kind is cst.ComparisonTarget:
        return {"comparator": _COMPARISON + 1}
    if kind is cst.IfExp:
        return {"body": _IF + 1, "test": _IF + 1, "orelse": _LAMBDA}
    if kind is cst.Attribute or kind is cst.Subscript:
        return {"value": _PRIMARY}
    if kind is cst.Call:
        return {"func": _PRIMARY}
    if kind is cst.Await:
        return {"expression": _PRIMARY}
    return {}


_ADDED = cst.LeftParen()  # the parentheses added here, told from the user's by identity


def _parenthesized(node: cst.BaseExpression) -> cst.BaseExpression:
    return node.with_changes(lpar=[_ADDED], rpar=[cst.RightParen()])


def without_added_parentheses(node: cst.BaseExpression) -> cst.BaseExpression:
    """`node` without the parentheses fit_operands gave it: a receiver moving into a function's arguments
    (`a.div(2).floor()`: `jnp.floor(a / 2)`, not `jnp.floor((a / 2))`); where it lands as an operand again,
    the replacement gets them back."""
    if len(node.lpar) == 1 and node.lpar[0] is _ADDED:
        return node.with_changes(lpar=[], rpar=[])
    return node


def fit_operands(node: cst.CSTNode) -> cst.CSTNode:
    """`node` with each operand that binds less tightly than its place needs in parentheses (and an integer
    before a dot: `1.real` does not parse)."""
    changes = {}
    for field, least in _needs(node).items():
        operand = getattr(node, field)
        if binding(operand) < least or (field == "value" and type(node) is cst.Attribute
                                        and type(operand) is cst.Integer and not operand.lpar):
            changes[field] = _parenthesized(operand)
    return node.with_changes(**changes) if changes else node


class _FitOperands(cst.CSTTransformer):
    def on_visit(self, node: cst.CSTNode) -> bool:
        return True

    def on_leave(self, original_node, updated_node):
        return fit_operands(updated_node)


def fit_all_operands(node: cst.CSTNode) -> cst.CSTNode:
    """fit_operands throughout `node`'s subtree (a replacement a rule built, whose inner nodes no pass left).
    Whitespace and punctuation have no operands, nor anything inside that has: not walked."""
    return traverse._Walker(_FitOperands(), None, traverse.trivia()).walk(node)


def keep_parentheses(replaced: cst.CSTNode, new):
    """`new` in the parentheses `replaced` had, unless `new` is that node or brings parentheses of its own
    (inside which any line break is as valid as inside the user's)."""
    if new is replaced or not getattr(replaced, "lpar", None) or not isinstance(new, cst.BaseExpression) \
            or new.lpar:
        return new
    return new.with_changes(lpar=replaced.lpar, rpar=replaced.rpar)
