"""The parameter groups concern (passes/concerns.py): nanoGPT's `configure_optimizers`, the two groups of a
torch optimizer split by the parameters' number of dimensions,

    param_dict = {pn: p for pn, p in self.named_parameters()}
    param_dict = {pn: p for pn, p in param_dict.items() if p.requires_grad}
    decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
    nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
    optim_groups = [{'params': decay_params, 'weight_decay': weight_decay},
                    {'params': nodecay_params, 'weight_decay': 0.0}]
    optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

becomes one optax transformation whose weight decay is masked by the same test over the nnx state:

    param_dict = nnx.state(self, nnx.Param)
    decay_params = [p for p in jax.tree.leaves(param_dict) if p.ndim >= 2]
    nodecay_params = [p for p in jax.tree.leaves(param_dict) if p.ndim < 2]
    optimizer = nnx.Optimizer(self, optax.inject_hyperparams(optax.adamw, static_args="mask")(
        learning_rate=learning_rate, b1=betas[0], b2=betas[1], weight_decay=weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)), wrt=nnx.Param)

torch's AdamW decays each group by its own weight_decay; optax's masked decay is the same update (a group with
weight decay 0 is the masked-out part). The learning rate is injected (optax.inject_hyperparams): a torch optimizer
returned to a script may get its rate set through `param_groups` (nanoGPT's train.py does, every iteration), an
optax one only through its injected hyperparameters. The groups' lists stay (the counts printed from them are
torch's: a tied weight is one Param, as named_parameters() lists it once); the dict of names goes (nnx's paths are
not torch's names), so the idiom is converted only where the names are not read. `**extra_args` holding only
keywords the optimizer's rule drops (`fused=`) goes, and the probe `'fused' in
inspect.signature(torch.optim.AdamW).parameters` becomes False: optax has no such switch (XLA fuses the update).

Anything else (groups by name, groups that differ in more than the weight decay, two decays) is left to the
optimizer builder, which reports what it cannot convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import libcst as cst
import libcst.matchers as m

from porter.convert.context import OptimizerInfo, code_of
from porter.convert.transforms import NO_VALUE, literal

_OPTIMIZER_BUILDER = "porter.convert.training_builders.optimizer"
_COMPLEMENTS = {cst.GreaterThanEqual: cst.LessThan, cst.LessThan: cst.GreaterThanEqual,
                cst.GreaterThan: cst.LessThanEqual, cst.LessThanEqual: cst.GreaterThan,
                cst.Equal: cst.NotEqual, cst.NotEqual: cst.Equal}
_SIGNATURE_PROBE = m.Comparison(
    left=m.SimpleString(),
    comparisons=[m.ComparisonTarget(operator=m.In(), comparator=m.Attribute(
        value=m.Call(func=m.Attribute(value=m.Name("inspect"), attr=m.Name("signature")), args=[m.Arg(keyword=None)]),
        attr=m.Name("parameters")))])


@dataclass
class _Groups:
    """One recognised configure_optimizers: what becomes what."""

    model: str  # the receiver of named_parameters() ("self")
    names: str  # the dict of named parameters ("param_dict")
    variable: str  # the parameter in the group tests ("p")
    decay: cst.BaseExpression  # the decayed group's weight_decay
    test: cst.Comparison  # the decayed group's test on `variable`
    dropped_star: cst.Arg | None  # `**extra_args` holding dropped keywords only


class ParameterGroups:
    TRIGGER_WORDS = frozenset({"named_parameters", "signature"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        self._calls: dict[int, _Groups] = {}  # optimizer calls, by id of the original
        self._converted_tests: dict[int, str] = {}  # id of a group's original test -> its converted code
        self._words: set[str] = set()

    def trigger_words(self):
        return self._words

    def trigger_state(self):
        return len(self._words)

    # ------------------------------------------------------------------ finding the idiom
    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if not self.scope.mentions("named_parameters") or not isinstance(node.body, cst.IndentedBlock):
            return
        statements = list(node.body.body)
        for statement in statements:
            call = _optimizer_call(statement)
            if call is None:
                continue
            rule = self.ctx.rules.lookup(self.ctx.qualified_name(call.func) or "")
            if rule is None or rule.builder != _OPTIMIZER_BUILDER:
                continue
            found = self._match(statements, call, rule)
            if found is not None:
                self._calls[id(call)] = found

    def _match(self, statements, call: cst.Call, rule) -> _Groups | None:
        if not call.args or call.args[0].keyword or call.args[0].star or type(call.args[0].value) is not cst.Name:
            return None
        assigned = _assignments(statements)
        groups_name = call.args[0].value.value
        groups = _single(assigned, groups_name)
        if groups is None or _reads(statements, groups_name) != 1:
            return None
        parsed = [_group(element) for element in getattr(groups.value, "elements", ())]
        if type(groups.value) is not cst.List or len(parsed) != 2 or None in parsed:
            return None
        lists = [_single(assigned, name) for name, _ in parsed]
        tests = [_group_test(a.value) if a is not None else None for a in lists]
        if None in tests:
            return None
        (names_a, variable_a, test_a), (names_b, variable_b, test_b) = tests
        if names_a != names_b or not _complementary(test_a, test_b, variable_a, variable_b):
            return None
        zero = [literal(decay) == 0 for _, decay in parsed]
        if zero.count(True) != 1:
            return None
        decayed = zero.index(False)
        model = self._named_parameters_source(statements, assigned, names_a, lists)
        if model is None:
            return None
        star = self._dropped_star(call, assigned, rule)
        if star is False:
            return None
        self.scope.replaced_unvisited[id(_line_of(statements, groups))] = self._removed
        self._replace_names(statements, assigned, names_a, model)
        for assign, (name, _) in zip(lists, parsed):
            self.scope.replaced_unvisited[id(_line_of(statements, assign))] = self._group_list(names_a)
        self._words |= {groups_name, names_a, *(name for name, _ in parsed)}  # statements with no torch word
        return _Groups(model, names_a, (variable_a, variable_b)[decayed], parsed[decayed][1],
                       (test_a, test_b)[decayed], star)

    def _named_parameters_source(self, statements, assigned, names: str, lists) -> str | None:
        """The model of `names = {n: p for n, p in MODEL.named_parameters()}` (then filtered by requires_grad,
        optionally), when `names` is read nowhere else than there and in the groups' lists."""
        bindings = assigned.get(names, [])
        if not 1 <= len(bindings) <= 2:
            return None
        first = bindings[0].value
        if not m.matches(first, m.DictComp(for_in=m.CompFor(
                iter=m.Call(func=m.Attribute(value=m.Name() | m.Attribute(), attr=m.Name("named_parameters")),
                            args=[]), ifs=[], inner_for_in=None))):
            return None
        model = code_of(first.for_in.iter.func.value)
        if model != "self" and type(first.for_in.iter.func.value) is not cst.Name:
            return None
        if len(bindings) == 2 and not _requires_grad_filter(bindings[1].value, names):
            return None
        if _reads(statements, names) != len(bindings) - 1 + len(lists):
            return None
        return model

    def _replace_names(self, statements, assigned, names: str, model: str) -> None:
        first, *filters = assigned[names]
        self.scope.replaced_unvisited[id(_line_of(statements, first))] = \
            lambda original, visitor: original.with_changes(body=[cst.Assign(
                targets=[cst.AssignTarget(cst.Name(names))],
                value=cst.parse_expression(f"nnx.state({model}, nnx.Param)"))])
        for assign in filters:
            self.scope.replaced_unvisited[id(_line_of(statements, assign))] = self._removed

    def _dropped_star(self, call: cst.Call, assigned, rule) -> cst.Arg | None | bool:
        """`**extra_args` where extra_args holds only keywords the rule drops: that argument (None: no star
        argument; False: one that stays, so the call is not converted here)."""
        stars = [arg for arg in call.args if arg.star]
        if not stars:
            return None
        if len(stars) > 1 or stars[0].star != "**" or type(stars[0].value) is not cst.Name:
            return False
        binding = _single(assigned, stars[0].value.value)
        if binding is None:
            return False
        keywords = _dict_keywords(binding.value)
        return stars[0] if keywords is not None and keywords <= set(rule.drop) else False

    # ------------------------------------------------------------------ rewriting
    def _removed(self, original: cst.CSTNode, visitor) -> cst.RemovalSentinel:
        self.scope.record("parameter-groups", original, cst.Pass())
        return cst.RemoveFromParent()

    def _group_list(self, names: str):
        def replace(original: cst.SimpleStatementLine, visitor) -> cst.SimpleStatementLine:
            assign = original.body[0]
            comprehension = assign.value
            variable = comprehension.elt.value
            test = comprehension.for_in.ifs[0].test
            converted = test.visit(visitor)
            self._converted_tests[id(test)] = code_of(converted)
            new = cst.parse_expression(f"[{variable} for {variable} in jax.tree.leaves({names}) "
                                       f"if {code_of(converted)}]")
            self.scope.record("parameter-groups", original, new)
            return original.with_changes(body=[assign.with_changes(value=new)])
        return replace

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call):
        found = self._calls.get(id(original_node))
        if found is None:
            return updated_node
        # the optimizer over the whole model with the decayed group's weight decay; the mask is added once the
        # optimizer's rule has built the transformation (after_leave_Call)
        args = [a for a in updated_node.args[1:] if not (a.keyword and a.keyword.value == "weight_decay")
                and not (found.dropped_star is not None and a.star)]
        args = [cst.Arg(cst.parse_expression(f"{found.model}.parameters()")), *args,
                cst.Arg(found.decay, keyword=cst.Name("weight_decay"))]
        self.ctx.optimizers[id(original_node)] = OptimizerInfo("", found.model, scheduled=True)
        return updated_node.with_changes(args=[a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in args])

    def after_leave_Call(self, original_node: cst.Call, updated_node):
        found = self._calls.get(id(original_node))
        if found is None or not isinstance(updated_node, cst.Call) or code_of(updated_node.func) != "nnx.Optimizer":
            return updated_node
        variable = found.variable
        tree = "params" if variable != "params" else "tree"
        mask = f"lambda {tree}: jax.tree.map(lambda {variable}: {self._converted_tests[id(found.test)]}, {tree})"
        with_mask = _MaskAdder(mask)
        new = updated_node.visit(with_mask)
        if not with_mask.added:
            return updated_node
        self.scope.report("PT007", original_node,
                          "parameter groups by number of dimensions -> one optax transformation, its weight decay "
                          f"masked by the same test ({code_of(found.test)}); the learning rate is injected "
                          "(optax.inject_hyperparams) so that a caller can set it, as torch's param_groups allow"
                          + ("; fused= dropped: XLA fuses the update" if found.dropped_star is not None else ""))
        return new

    # the probe `'fused' in inspect.signature(torch.optim.AdamW).parameters`
    def visit_Comparison(self, node: cst.Comparison) -> bool | None:
        if m.matches(node, _SIGNATURE_PROBE) \
                and self._probed_drop(node) is not None:
            self.scope.replaced_unvisited[id(node)] = self._probe
            return False  # its torch name is not reported: the probe goes whole
        return None

    def _probed_drop(self, node: cst.Comparison) -> str | None:
        """The keyword probed, where the probed torch function's rule drops it."""
        probed = node.comparisons[0].comparator.value.args[0].value
        rule = self.ctx.rules.lookup(self.ctx.qualified_name(probed) or "")
        keyword = node.left.evaluated_value
        return keyword if rule is not None and keyword in rule.drop else None

    def _probe(self, original: cst.Comparison, visitor) -> cst.Name:
        keyword = self._probed_drop(original)
        probed = code_of(original.comparisons[0].comparator.value.args[0].value)
        self.scope.report("PT007", original, f"{code_of(original)} is False: the converted {probed} has no "
                                             f"{keyword}= (porter drops it; XLA compiles the update)")
        new = cst.Name("False")
        self.scope.record("parameter-groups", original, new)
        return new


class _MaskAdder(cst.CSTTransformer):
    """Adds `mask=` to the call that takes the weight decay (the factory's weight_decay=, or
    optax.add_decayed_weights); an injected factory takes it as a static argument."""

    def __init__(self, mask: str) -> None:
        super().__init__()
        self.mask = mask
        self.added = False

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        decays = any(a.keyword and a.keyword.value == "weight_decay" for a in updated_node.args) \
            or code_of(updated_node.func) == "optax.add_decayed_weights"
        if not decays or self.added:
            return updated_node
        self.added = True
        func = updated_node.func
        if m.matches(func, m.Call(func=m.Attribute(value=m.Name("optax"), attr=m.Name("inject_hyperparams")))):
            func = func.with_changes(args=[*func.args[:-1], func.args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT),
                                           _keyword('static_args="mask"')])
        mask = _keyword(f"mask={self.mask}")
        args = [*updated_node.args[:-1], updated_node.args[-1].with_changes(comma=cst.MaybeSentinel.DEFAULT), mask]
        return updated_node.with_changes(func=func, args=args)


# ---------------------------------------------------------------------- small queries


def _keyword(source: str) -> cst.Arg:
    return cst.parse_expression(f"f({source})").args[0]


def _optimizer_call(statement: cst.BaseStatement) -> cst.Call | None:
    if type(statement) is not cst.SimpleStatementLine or len(statement.body) != 1:
        return None
    small = statement.body[0]
    value = small.value if type(small) in (cst.Assign, cst.Return) else None
    return value if type(value) is cst.Call else None


def _assignments(statements) -> dict[str, list[cst.Assign]]:
    found: dict[str, list[cst.Assign]] = {}
    for statement in statements:
        if type(statement) is cst.SimpleStatementLine and len(statement.body) == 1 \
                and type(statement.body[0]) is cst.Assign and len(statement.body[0].targets) == 1 \
                and type(statement.body[0].targets[0].target) is cst.Name:
            found.setdefault(statement.body[0].targets[0].target.value, []).append(statement.body[0])
    return found


def _single(assigned, name: str) -> cst.Assign | None:
    bindings = assigned.get(name, [])
    return bindings[0] if len(bindings) == 1 else None


def _line_of(statements, assign: cst.Assign) -> cst.SimpleStatementLine:
    return next(s for s in statements if type(s) is cst.SimpleStatementLine and s.body[0] is assign)


def _reads(statements, name: str) -> int:
    """How many times the function's statements read `name` (assignment targets not counted)."""
    count = 0
    for statement in statements:
        for found in m.findall(statement, m.Name(name)):
            count += 1
        if type(statement) is cst.SimpleStatementLine and len(statement.body) == 1 \
                and type(statement.body[0]) is cst.Assign:
            count -= sum(1 for t in statement.body[0].targets if m.matches(t.target, m.Name(name)))
    return count


def _group(element: cst.BaseElement) -> tuple[str, cst.BaseExpression] | None:
    """`{'params': decay_params, 'weight_decay': wd}` -> ('decay_params', wd)."""
    if type(element) is not cst.Element or type(element.value) is not cst.Dict:
        return None
    entries = {}
    for item in element.value.elements:
        key = literal(item.key) if type(item) is cst.DictElement else NO_VALUE
        if key not in ("params", "weight_decay") or key in entries:
            return None
        entries[key] = item.value
    if set(entries) != {"params", "weight_decay"} or type(entries["params"]) is not cst.Name:
        return None
    return entries["params"].value, entries["weight_decay"]


def _group_test(node: cst.BaseExpression) -> tuple[str, str, cst.Comparison] | None:
    """`[p for n, p in D.items() if p.dim() >= 2]` -> ('D', 'p', the test)."""
    if type(node) is not cst.ListComp or type(node.elt) is not cst.Name:
        return None
    loop = node.for_in
    if loop.inner_for_in is not None or len(loop.ifs) != 1 or loop.asynchronous is not None:
        return None
    variable = node.elt.value
    items = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("items")), args=[])
    values = m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("values")), args=[])
    if m.matches(loop, m.CompFor(target=m.Tuple(elements=[m.Element(m.Name()), m.Element(m.Name(variable))]),
                                 iter=items)) \
            and loop.target.elements[0].value.value != variable \
            and _reads([loop.ifs[0]], loop.target.elements[0].value.value) == 0:
        pass
    elif not m.matches(loop, m.CompFor(target=m.Name(variable), iter=values)):
        return None
    test = loop.ifs[0].test
    if not _is_dimension_test(test, variable):
        return None
    return loop.iter.func.value.value, variable, test


def _dimensions(node: cst.BaseExpression, variable: str) -> bool:
    """`p.dim()`, `p.ndimension()`, `p.ndim`, `len(p.shape)`, `len(p.size())`."""
    p = m.Name(variable)
    return m.matches(node, m.Call(func=m.Attribute(value=p, attr=m.Name("dim") | m.Name("ndimension")), args=[])
                     | m.Attribute(value=p, attr=m.Name("ndim"))
                     | m.Call(func=m.Name("len"), args=[m.Arg(m.Attribute(value=p, attr=m.Name("shape"))
                                                               | m.Call(func=m.Attribute(value=p, attr=m.Name("size")),
                                                                        args=[]))]))


def _is_dimension_test(test: cst.BaseExpression, variable: str) -> bool:
    return type(test) is cst.Comparison and len(test.comparisons) == 1 and _dimensions(test.left, variable) \
        and type(test.comparisons[0].operator) in _COMPLEMENTS \
        and isinstance(literal(test.comparisons[0].comparator), int)


def _complementary(a: cst.Comparison, b: cst.Comparison, variable_a: str, variable_b: str) -> bool:
    """Every parameter passes exactly one of the two tests (one group each, as torch requires)."""
    left_a = code_of(a.left).replace(variable_a, "_", 1)
    left_b = code_of(b.left).replace(variable_b, "_", 1)
    first, second = a.comparisons[0], b.comparisons[0]
    return left_a == left_b and literal(first.comparator) == literal(second.comparator) \
        and _COMPLEMENTS[type(first.operator)] is type(second.operator)


def _requires_grad_filter(node: cst.BaseExpression, names: str) -> bool:
    """`{pn: p for pn, p in names.items() if p.requires_grad}`."""
    if not m.matches(node, m.DictComp(key=m.Name(), value=m.Name(), for_in=m.CompFor(
            target=m.Tuple(elements=[m.Element(m.Name()), m.Element(m.Name())]),
            iter=m.Call(func=m.Attribute(value=m.Name(names), attr=m.Name("items")), args=[]),
            ifs=[m.CompIf(test=m.Attribute(value=m.Name(), attr=m.Name("requires_grad")))], inner_for_in=None))):
        return False
    key, value = node.for_in.target.elements[0].value.value, node.for_in.target.elements[1].value.value
    return node.key.value == key and node.value.value == value \
        and node.for_in.ifs[0].test.value.value == value


def _dict_keywords(node: cst.BaseExpression) -> set[str] | None:
    """The keys `dict(fused=True) if c else dict()` / `{'fused': True}` / `{}` may hold; None: not known."""
    if type(node) is cst.IfExp:
        body, orelse = _dict_keywords(node.body), _dict_keywords(node.orelse)
        return None if body is None or orelse is None else body | orelse
    if type(node) is cst.Call and m.matches(node.func, m.Name("dict")) \
            and all(a.keyword is not None and not a.star for a in node.args):
        return {a.keyword.value for a in node.args}
    if type(node) is cst.Dict:
        keys = [literal(e.key) if type(e) is cst.DictElement else NO_VALUE for e in node.elements]
        return set(keys) if all(isinstance(k, str) for k in keys) else None
    return None
