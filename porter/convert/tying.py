"""Layers inside nn.ModuleDict / nested attributes, and output heads tied to an embedding.

`self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(...), ...))` (nanoGPT): the analysis records
`transformer.wte` as an nn.Embedding (ConversionContext.sublayers), so `self.transformer.wte.weight`
is read as the converted layer's variable (`self.transformer.wte.embedding[...]`) as `self.wte.weight`
is.

Tying: in a module class's __init__, `self.lm_head.weight = self.transformer.wte.weight` (or the
reverse, `self.transformer.wte.weight = self.lm_head.weight`) makes one Parameter of a bias-free
nn.Linear head's weight and an nn.Embedding's, both (vocab, dim). Converted, the class builds no head
and computes it with the embedding's attend (`x @ embedding.T`, nnx.Embed): one variable, whose
gradient sums both uses as the tied Parameter's does in torch. porter weights / load_torch_state_dict
load torch's two names of the tensor into it once (porter/weights/plan.py), and porter check compares
the head's rows against it (porter/check/equivalence.py). A tie that is not of this shape (a head with
a bias, two Linears, a head used other than by calling it) keeps the PT006 error modules.py reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m
from libcst.metadata import PositionProvider

from porter.convert.context import code_of

HEAD = "torch.nn.Linear"
EMBEDDING = "torch.nn.Embedding"
MODULE_DICT = "torch.nn.ModuleDict"
WEIGHT = "weight"


# ModuleDict entries -----------------------------------------------------------------------------------
def module_dict_entries(call: cst.Call) -> dict[str, cst.BaseExpression]:
    """{key: value} of `nn.ModuleDict(dict(k=v, ...))` or `nn.ModuleDict({'k': v, ...})`; {} otherwise."""
    if len(call.args) != 1 or call.args[0].keyword:
        return {}
    value = call.args[0].value
    if m.matches(value, m.Call(func=m.Name("dict"))) and all(a.keyword for a in value.args):
        return {a.keyword.value: a.value for a in value.args}
    if isinstance(value, cst.Dict) and all(isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)
                                           for e in value.elements):
        return {e.key.evaluated_value: e.value for e in value.elements}
    return {}


def note_sublayers(ctx, class_name: str, attribute: str, call: cst.Call, qualified_of) -> None:
    """Records the layers of `self.<attribute> = nn.ModuleDict(...)` as `attribute.key` (nested dicts too)."""
    if qualified_of(call.func) != MODULE_DICT:
        return
    for key, value in module_dict_entries(call).items():
        if isinstance(value, cst.Call):
            qualified = qualified_of(value.func)
            if qualified:
                ctx.sublayers.setdefault(class_name, {})[f"{attribute}.{key}"] = qualified
                note_sublayers(ctx, class_name, f"{attribute}.{key}", value, qualified_of)


def self_path(node: cst.BaseExpression) -> str | None:
    """'transformer.wte' for `self.transformer.wte`; None for anything not a dotted path from self."""
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    return ".".join(reversed(parts)) if m.matches(node, m.Name("self")) and parts else None


def layer_of(ctx, class_name: str, path: str) -> str | None:
    """The qualified torch layer at `self.<path>` of the class: an attribute or a ModuleDict entry."""
    return ctx.layer_attributes.get(class_name, {}).get(path) or ctx.sublayers.get(class_name, {}).get(path)


def sublayer_parameter(rewrite, node: cst.BaseExpression):
    """As ModuleStructure._layer_parameter, for `self.<dict>.<key>.<parameter>` of a ModuleDict entry."""
    if not rewrite.module_class or not isinstance(node, cst.Attribute) or not isinstance(node.value, cst.Attribute):
        return None
    path = self_path(node.value)
    qualified = rewrite.ctx.sublayers.get(rewrite.module_class, {}).get(path) if path else None
    rule = rewrite.ctx.rules.lookup(qualified) if qualified else None
    if rule is None or rule.kind != "layer" or node.attr.value not in rule.layout:
        return None
    return qualified, node.attr.value, rule.layout[node.attr.value]


# ties -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tie:
    assign: cst.Assign  # the original `self.lm_head.weight = self.transformer.wte.weight`
    head: str  # 'lm_head'
    embedding: str  # 'transformer.wte'


def _init_body(class_node: cst.ClassDef) -> list[cst.BaseStatement]:
    for item in class_node.body.body:
        if isinstance(item, cst.FunctionDef) and item.name.value == "__init__" \
                and isinstance(item.body, cst.IndentedBlock):
            return list(item.body.body)
    return []


def _single_assign(statement: cst.BaseStatement) -> cst.Assign | None:
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 \
            and isinstance(statement.body[0], cst.Assign) and len(statement.body[0].targets) == 1:
        return statement.body[0]
    return None


def _bias_free(call: cst.BaseExpression) -> bool:
    """nn.Linear(..., bias=False) or nn.Linear(in, out, False)."""
    if not isinstance(call, cst.Call):
        return False
    bias = next((a.value for a in call.args if a.keyword and a.keyword.value == "bias"), None)
    if bias is None and len(call.args) >= 3 and not call.args[2].keyword:
        bias = call.args[2].value
    return m.matches(bias, m.Name("False"))


def find_ties(ctx, class_node: cst.ClassDef) -> list[Tie]:
    """The convertible ties of an original module class's __init__ (see the module's docstring)."""
    name = class_node.name.value
    body = _init_body(class_node)
    declarations = {}
    for statement in body:
        assign = _single_assign(statement)
        path = self_path(assign.targets[0].target) if assign else None
        if path and "." not in path:
            declarations.setdefault(path, []).append(assign.value)
    ties = []
    for statement in body:
        assign = _single_assign(statement)
        if assign is None or not all(isinstance(n, cst.Attribute) and n.attr.value == WEIGHT
                                     for n in (assign.targets[0].target, assign.value)):
            continue
        paths = self_path(assign.targets[0].target.value), self_path(assign.value.value)
        kinds = tuple(layer_of(ctx, name, p) if p else None for p in paths)
        if sorted(kinds, key=str) != sorted((HEAD, EMBEDDING)):
            continue
        head, embedding = paths if kinds[0] == HEAD else paths[::-1]
        if len(declarations.get(head, ())) == 1 and _bias_free(declarations[head][0]):
            ties.append(Tie(assign, head, embedding))
    return ties


class _TieHead(cst.CSTTransformer):
    """On the converted class: the head's declaration and the tie statement go (their comments stay, with a
    note of the tie), and `self.<head>(x)` becomes `self.<embedding>.attend(x)`."""

    def __init__(self, tie: Tie) -> None:
        self.tie = tie
        self.other_uses = 0  # `self.<head>` not called: its weight read, the layer passed on
        self._called: set[int] = set()

    def _is_head(self, node: cst.BaseExpression) -> bool:
        return m.matches(node, m.Attribute(value=m.Name("self"), attr=m.Name(self.tie.head)))

    def visit_Call(self, node: cst.Call) -> None:
        if self._is_head(node.func):
            self._called.add(id(node.func))

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        return not self._removed(node)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        if self._is_head(node) and id(node) not in self._called:
            self.other_uses += 1
        return True

    def _removed(self, statement: cst.SimpleStatementLine) -> bool:
        assign = _single_assign(statement)
        return assign is not None and (self._is_tie(assign) or self._is_head(assign.targets[0].target))

    def _is_tie(self, assign: cst.Assign) -> bool:
        # by value: a transform of the class before this one (statements injected in __init__) rebuilt its nodes
        return assign.deep_equals(self.tie.assign)

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if self._is_head(updated_node.func):
            return updated_node.with_changes(func=cst.parse_expression(f"self.{self.tie.embedding}.attend"))
        return updated_node

    def leave_IndentedBlock(self, original_node, updated_node):
        body, carried = [], []
        for statement in updated_node.body:
            if isinstance(statement, cst.SimpleStatementLine) and self._removed(statement):
                carried += list(statement.leading_lines)
                if statement.trailing_whitespace.comment:  # `...weight  # tie them`: the comment stays
                    carried.append(cst.EmptyLine(comment=statement.trailing_whitespace.comment))
                if self._is_tie(statement.body[0]):
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


def tie_heads(rewrite, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
    """The converted class with its convertible ties made one variable (ModuleStructure.leave_ClassDef)."""
    for tie in find_ties(rewrite.ctx, original):
        transformer = _TieHead(tie)
        tied = updated.visit(transformer)
        if transformer.other_uses:
            continue
        for statement in _init_body(original):
            assign = _single_assign(statement)
            if assign is tie.assign or (assign is not None and self_path(assign.targets[0].target) == tie.head):
                rewrite.ctx.forget_reports(*_lines(rewrite, statement))  # PT006, the head's conversion
        updated = tied
        rewrite.record("tied-head", tie.assign, cst.parse_expression(f"self.{tie.embedding}.attend"))
        rewrite.report("PT007", tie.assign,
                       f"{code_of(tie.assign.targets[0].target)} tied to {code_of(tie.assign.value)}: one variable, "
                       f"self.{tie.head}(x) is computed as self.{tie.embedding}.attend(x) (x @ embedding.T); "
                       f"porter weights loads torch's {tie.head}.weight into {tie.embedding}'s embedding")
    return updated


def _lines(rewrite, node: cst.CSTNode) -> tuple[int, int]:
    span = rewrite.get_metadata(PositionProvider, node)
    return span.start.line, span.end.line
