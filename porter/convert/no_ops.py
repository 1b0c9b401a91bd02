"""What removing a call leaves behind: `x = x.to(device)` becomes `x = x`, `a, b = a.cuda(), b.cuda()`
becomes `a, b = a, b`. Such a self-assignment does nothing (outside a class body, where it would copy
an outer name into the class): the statement goes, logged as a change, and a block it leaves empty
gets `pass`. Only statements the rewrite changed are looked at: what the user wrote stays."""

from __future__ import annotations

import libcst as cst

from porter.convert.context import code_of

_PLAIN = (cst.Name, cst.Attribute)


def is_self_assignment(statement: cst.BaseSmallStatement) -> bool:
    """`x = x`, `self.h = self.h`, `a, b = a, b` (names and attribute chains, one target)."""
    if type(statement) is not cst.Assign or len(statement.targets) != 1:
        return False
    target, value = statement.targets[0].target, statement.value
    return _plain(target) and _plain(value) and _spelled(target) == _spelled(value)


def _plain(node: cst.BaseExpression) -> bool:
    if isinstance(node, (cst.Tuple, cst.List)):
        return bool(node.elements) and all(type(e) is cst.Element and _plain(e.value) for e in node.elements)
    if type(node) is cst.Attribute:
        return _plain(node.value) and not isinstance(node.value, (cst.Tuple, cst.List))
    return type(node) is cst.Name


def _spelled(node: cst.BaseExpression) -> tuple:
    if isinstance(node, (cst.Tuple, cst.List)):
        return tuple(_spelled(e.value) for e in node.elements)
    return (code_of(node),)


def drop_self_assignments(original: cst.Module | cst.IndentedBlock, updated: cst.Module | cst.IndentedBlock,
                          dropped: callable) -> cst.Module | cst.IndentedBlock:
    """`updated` without the self-assignments in the lines the rewrite changed (not those of `original`);
    `dropped(line, what is left of it)` is told of each line that holds one (the change log) and says
    whether to drop it (False: the line is kept as it is). A line dropped whole hands its comments and blank lines on to the next."""
    kept_as_written = {id(line) for line in original.body}
    body: list[cst.BaseStatement] = []
    carried: list[cst.EmptyLine] | None = None  # the leading lines of a line dropped whole
    changed = False
    for line in updated.body:
        new = line
        if id(line) not in kept_as_written and type(line) is cst.SimpleStatementLine \
                and any(is_self_assignment(s) for s in line.body):
            rest = [s for s in line.body if not is_self_assignment(s)]
            if rest:
                rest[-1] = rest[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
            new = line.with_changes(body=rest) if rest else None
            if not dropped(line, new or cst.Pass()):
                new = line
            changed = changed or new is not line
        if new is None:
            carried = [*(carried or ()), *line.leading_lines]
            continue
        if carried is not None:
            new, carried = _with_leading(new, carried), None
        body.append(new)
    if not changed:
        return updated
    if not body and type(updated) is cst.IndentedBlock:
        body = [cst.SimpleStatementLine([cst.Pass()], leading_lines=carried or ())]
    return updated.with_changes(body=body)


def _with_leading(line: cst.BaseStatement, carried: list[cst.EmptyLine]) -> cst.BaseStatement:
    if not hasattr(line, "leading_lines") or not carried:
        return line
    if not line.leading_lines:
        return line.with_changes(leading_lines=carried)
    if any(empty.comment is not None for empty in carried):
        return line.with_changes(leading_lines=[*carried, *line.leading_lines])
    return line
