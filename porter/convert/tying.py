"""Layers inside nn.ModuleDict / nested attributes, and output heads tied to an embedding.

`self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(...), ...))` (nanoGPT): the analysis records
`transformer.wte` as an nn.Embedding (ConversionContext.sublayers), so `self.transformer.wte.weight`
is read as the converted layer's variable (`self.transformer.wte.embedding[...]`) as `self.wte.weight`
is.

Tying: in a module class's __init__, `self.lm_head.weight = self.transformer.wte.weight` (or the
reverse, `self.transformer.wte.weight = self.lm_head.weight`) makes one Parameter of a bias-free
nn.Linear head's weight and an nn.Embedding's, both (vocab, dim). Converted (the weight tying concern,
passes/weight_tying.py), the class builds no head and computes it with the embedding's attend
(`x @ embedding.T`, nnx.Embed): one variable, whose gradient sums both uses as the tied Parameter's does in torch. porter weights / load_torch_state_dict
load torch's two names of the tensor into it once (porter/weights/plan.py), and porter check compares
the head's rows against it (porter/check/equivalence.py). A tie that is not of this shape (a head with
a bias, two Linears, a head used other than by calling it) keeps the PT006 error modules.py reports
for assigning a layer's parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

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


def init_body(class_node: cst.ClassDef) -> list[cst.BaseStatement]:
    for item in class_node.body.body:
        if isinstance(item, cst.FunctionDef) and item.name.value == "__init__" \
                and isinstance(item.body, cst.IndentedBlock):
            return list(item.body.body)
    return []


def single_assign(statement: cst.BaseStatement) -> cst.Assign | None:
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
    body = init_body(class_node)
    declarations = {}
    for statement in body:
        assign = single_assign(statement)
        path = self_path(assign.targets[0].target) if assign else None
        if path and "." not in path:
            declarations.setdefault(path, []).append(assign.value)
    ties = []
    for statement in body:
        assign = single_assign(statement)
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
