"""The weight tying concern (passes/concerns.py): an output head tied to an embedding becomes the embedding's attend.

`self.lm_head.weight = self.transformer.wte.weight` (porter/convert/tying.py says which ties convert) is
decided when the traversal enters the module class, from the original class: a tie whose head is used only by
calling it (`self.lm_head(x)`) is taken. Its statements (the tie and the head's declarations) are replaced
unvisited (`scope.replaced_unvisited`): no other concern converts or reports them (the PT006 modules.py reports
for assigning a layer's parameter is for the ties this concern does not take). `self.<head>(x)` becomes
`self.<embedding>.attend(x)` as the traversal leaves it; once the class is converted, the tie's statements go,
their comments kept with a note of the tie.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import code_of
from porter.convert.tying import Tie, find_ties, init_body, self_path, single_assign
from porter.convert.weight_init import is_init_statement


class WeightTying:
    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        self._ties: list[list[Tie]] = []  # the ties taken in each module class the traversal is in
        self._heads: frozenset[str] = frozenset()  # their heads: the words of the statements that call them

    def trigger_words(self):
        return self._heads

    def trigger_state(self):
        return self._heads

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if node.name.value not in self.ctx.module_classes:
            return
        ties = [tie for tie in find_ties(self.ctx, node) if not self._other_uses(node, tie)]
        for tie in ties:
            for statement in _tie_statements(node, tie):
                self.scope.replaced_unvisited[id(statement)] = self._keep
            self.scope.record("tied-head", tie.assign, cst.parse_expression(f"self.{tie.embedding}.attend"))
            self.scope.report("PT007", tie.assign,
                              f"{code_of(tie.assign.targets[0].target)} tied to {code_of(tie.assign.value)}: one "
                              f"variable, self.{tie.head}(x) is computed as self.{tie.embedding}.attend(x) "
                              f"(x @ embedding.T); porter weights loads torch's {tie.head}.weight into "
                              f"{tie.embedding}'s embedding")
        self._ties.append(ties)
        self._heads = self._heads | {tie.head for tie in ties}

    def after_leave_Call(self, original_node: cst.Call, updated_node):
        if not self._heads or not isinstance(updated_node, cst.Call):
            return updated_node
        tie = next((t for ties in self._ties for t in ties if _is_head(updated_node.func, t)), None)
        if tie is None:
            return updated_node
        return updated_node.with_changes(func=cst.parse_expression(f"self.{tie.embedding}.attend"))

    def after_leave_ClassDef(self, original_node: cst.ClassDef, updated_node):
        if original_node.name.value not in self.ctx.module_classes:
            return updated_node
        ties = self._ties.pop()
        self._heads = frozenset(tie.head for ties in self._ties for tie in ties)
        for tie in ties:  # after the class's other changes (statements injected at the end of __init__)
            updated_node = updated_node.visit(_DropTie(tie))
        return updated_node

    @staticmethod
    def _keep(statement, visitor):
        return statement  # unconverted: the class's leave drops it (_DropTie)

    def _other_uses(self, class_node: cst.ClassDef, tie: Tie) -> bool:
        """Whether the class uses `self.<head>` other than by calling it, in what the conversion keeps (the
        weight initialisation's statements and methods go)."""
        methods = self.ctx.init_methods.get(class_node.name.value, set())
        dropped = {id(s) for s in _tie_statements(class_node, tie)}
        dropped |= {id(s) for s in class_node.body.body if isinstance(s, cst.FunctionDef) and s.name.value in methods}
        dropped |= {id(s) for s in init_body(class_node) if is_init_statement(s, self.ctx, methods)}
        uses = _HeadUses(tie, dropped)
        class_node.visit(uses)
        return uses.other > 0


def _is_head(node: cst.BaseExpression, tie: Tie) -> bool:
    return m.matches(node, m.Attribute(value=m.Name("self"), attr=m.Name(tie.head)))


def _dropped(statement: cst.BaseStatement, tie: Tie) -> bool:
    """The tie (by value: the class's conversion rebuilt its nodes) or a declaration of the head."""
    assign = single_assign(statement)
    return assign is not None and (assign.deep_equals(tie.assign) or _is_head(assign.targets[0].target, tie))


def _tie_statements(class_node: cst.ClassDef, tie: Tie) -> list[cst.SimpleStatementLine]:
    return [s for s in _statements(class_node) if _dropped(s, tie)]


def _statements(node: cst.CSTNode):
    return m.findall(node, m.SimpleStatementLine())


class _HeadUses(cst.CSTVisitor):
    """Counts `self.<head>` other than called, outside the statements the conversion drops."""

    def __init__(self, tie: Tie, dropped: set[int]) -> None:
        self.tie, self.dropped = tie, dropped
        self.other = 0
        self._called: set[int] = set()

    def on_visit(self, node: cst.CSTNode) -> bool:
        if id(node) in self.dropped:
            return False
        if isinstance(node, cst.Call) and _is_head(node.func, self.tie):
            self._called.add(id(node.func))
        elif isinstance(node, cst.Attribute) and _is_head(node, self.tie) and id(node) not in self._called:
            self.other += 1
        return True


class _DropTie(cst.CSTTransformer):
    """The tie's statements go from the converted class; their comments stay, the tie's with a note of it."""

    def __init__(self, tie: Tie) -> None:
        self.tie = tie

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return False

    def leave_IndentedBlock(self, original_node, updated_node):
        body, carried = [], []
        for statement in updated_node.body:
            if isinstance(statement, cst.SimpleStatementLine) and _dropped(statement, self.tie):
                carried += list(statement.leading_lines)
                if statement.trailing_whitespace.comment:  # `...weight  # tie them`: the comment stays
                    carried.append(cst.EmptyLine(comment=statement.trailing_whitespace.comment))
                if statement.body[0].deep_equals(self.tie.assign):
                    carried.append(cst.EmptyLine(comment=cst.Comment(
                        f"# {self.tie.head} is tied to {self.tie.embedding} (torch's {self.tie.head}.weight is "
                        f"{self.tie.embedding}.weight): computed by self.{self.tie.embedding}.attend")))
                continue
            if carried:
                statement = statement.with_changes(leading_lines=[*carried, *statement.leading_lines])
                carried = []
            body.append(statement)
        if carried:  # the block ended with the tie: the comments close it
            return updated_node.with_changes(body=body or [cst.SimpleStatementLine([cst.Pass()])],
                                             footer=[*carried, *updated_node.footer])
        return updated_node.with_changes(body=body)
