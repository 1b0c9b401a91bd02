"""The decode loops concern (passes/concerns.py): a module method's token-by-token sampling loop in nanoGPT's
shape,

    for _ in range(max_new_tokens):
        idx_cond = idx if idx.shape[1] <= self.config.block_size else idx[:, -self.config.block_size:]
        logits, _ = self(idx_cond)
        ...
        idx_next = jax.random.categorical(rngs(), jnp.log(probs), axis=-1)[..., None]
        idx = jnp.concatenate((idx, idx_next), axis=1)

(as the rest of the rewrite converted it), runs its step compiled: the step (everything between the crop and
the append) becomes a method of its own under `nnx.jit`, and the loop writes each token into a buffer of the
final size instead of growing `idx`,

    step = fast_partial(type(self)._generate_step, self, rngs, static_argnames=("temperature", "top_k"))
    length = idx.shape[1]
    idx = token_buffer(idx, max_new_tokens)
    for t in range(length, length + max_new_tokens):
        width = min(t, self.config.block_size)
        idx_cond = jax.lax.dynamic_slice_in_dim(idx, t - width, width, axis=1)
        idx_next = step(idx_cond, temperature=temperature, top_k=top_k)
        idx = jax.lax.dynamic_update_slice_in_dim(idx, idx_next.astype(idx.dtype), t, axis=1)

    @nnx.jit(static_argnames=("temperature", "top_k"))
    def _generate_step(self, rngs, idx_cond, temperature, top_k):
        logits, _ = self(idx_cond)
        ...
        return idx_next

(fast_partial, porter/emitted_training.py: the module and its Rngs are split once per call of generate, and each
token costs one jax.jit call: nnx.jit, or nnx.cached_partial, walks them at every token, which costs more than a
small model's step). Eagerly, every token gives every operation a new shape, so each step compiles op by op; here the step compiles
once per context width (the widths up to the block size, then one for every later token) and the window is
the one the crop took, so the model sees the same tokens at the same positions (the step's logits are the
eager loop's; the step draws from the same Rngs in the same order: the same tokens). The window is not padded
to one width: a model whose forward keeps only the last position's logits (nanoGPT's, in inference) would read
a padding token there.

Only that shape is taken; any other loop stays as the rest of the rewrite left it (eager). The step's other
inputs must be the method's parameters with literal defaults (`temperature=1.0`, `top_k=None`): they become
static arguments of the compiled step (a new value compiles again); the step may read `self`, the method's
`rngs` (passes/method_keys.py) and module-level names, and must not carry a value from one token to the next.
"""

from __future__ import annotations

import libcst as cst
import libcst.matchers as m

from porter.convert.context import code_of

_STOPS = (cst.Return, cst.Break, cst.Continue, cst.Yield, cst.Await, cst.Global, cst.Nonlocal, cst.FunctionDef,
          cst.ClassDef, cst.Lambda)


class DecodeLoops:
    TRIGGER_WORDS = frozenset()

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx = scope.ctx
        self.methods: dict[int, set[str]] = {}  # id(method) -> the names its class defines
        self.class_names: list[set[str]] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.class_names.append({s.name.value for s in node.body.body if isinstance(s, (cst.FunctionDef,
                                                                                          cst.ClassDef))})

    def after_leave_ClassDef(self, original_node, updated_node):
        self.class_names.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        scope = self.scope  # (before the scope enters the function)
        if scope.module_class in self.ctx.module_classes and not scope.function_stack and self.class_names \
                and node.params.params and node.params.params[0].name.value == "self":
            self.methods[id(node)] = self.class_names[-1]

    def after_leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node):
        names = self.methods.pop(id(original_node), None)
        if names is None or type(updated_node) is not cst.FunctionDef or updated_node.decorators \
                or not isinstance(updated_node.body, cst.IndentedBlock):  # (torch.no_grad() is gone by now)
            return updated_node
        body = list(updated_node.body.body)
        for at, statement in enumerate(body):
            loop = _DecodeLoop.match(statement, updated_node, names)
            if loop is not None:
                body[at:at + 1] = loop.buffered_statements()
                method = updated_node.with_changes(body=updated_node.body.with_changes(body=body))
                self.ctx.need_helper("token_buffer")
                self.ctx.need_helper("fast_partial")
                self.scope.report("PT007", original_node.name,
                                  f"{original_node.name.value}'s token loop runs its step compiled "
                                  f"({loop.step_name}, nnx.jit, once per context width) over a token buffer of its "
                                  "final size: the same tokens as the loop run eagerly, without a new shape at "
                                  "every token")
                self.scope.record("decode-loop", original_node.name, method)
                return cst.FlattenSentinel([method, loop.step_method()])
        return updated_node


class _DecodeLoop:
    """One loop of the shape above, matched in the converted method `function`."""

    def __init__(self, loop: cst.For, function: cst.FunctionDef, tokens: str, window: str, block: str,
                 count: str, token: str, statics: list[str], uses_rngs: bool, step_name: str) -> None:
        self.loop, self.function, self.tokens, self.window, self.block = loop, function, tokens, window, block
        self.count, self.token, self.statics, self.uses_rngs, self.step_name = count, token, statics, uses_rngs, \
            step_name
        taken = _names(function)
        self.length, self.position, self.width, self.step = (_fresh(base, taken)
                                                             for base in ("length", "t", "width", "step"))

    @classmethod
    def match(cls, statement, function: cst.FunctionDef, class_names: set[str]) -> _DecodeLoop | None:
        if type(statement) is not cst.For or statement.orelse is not None or statement.asynchronous is not None \
                or type(statement.target) is not cst.Name or not m.matches(
                    statement.iter, m.Call(func=m.Name("range"), args=[m.Arg(keyword=None, star="")])) \
                or type(statement.body) is not cst.IndentedBlock or len(statement.body.body) < 3:
            return None
        count = statement.iter.args[0].value
        if not _reevaluable(count) or _loaded(count) & _stored(statement.body):
            return None
        first, *middle, last = statement.body.body
        crop, append = _crop(first), _append(last)
        if crop is None or append is None or crop[1] != append[0]:
            return None
        window, tokens, block = crop
        token = append[1]
        step = cst.Module(body=middle)
        if any(m.findall(step, getattr(m, stop.__name__)()) for stop in _STOPS) or _writes_outside(step):
            return None
        free, assigned = _free_and_assigned(middle)
        if tokens in _loaded(step) | assigned or statement.target.value in free or _loaded(first) & assigned:
            return None
        params = {p.name.value: p for p in (*function.params.params, *function.params.kwonly_params)}
        later = _names_outside(function, statement)
        if token not in assigned or window not in free or assigned & (free | later) or window in later:
            return None
        locals_ = _assigned_names(function) | set(params)
        statics = [name for name in params if name in free and name not in ("self", "rngs", window)]
        if any(not _literal(params[name].default) for name in statics) \
                or free & locals_ - {"self", "rngs", window, *statics}:
            return None
        step_name = f"_{function.name.value}_step"
        if step_name in class_names:
            return None
        return cls(statement, function, tokens, window, block, code_of(count), token, statics, "rngs" in free,
                   step_name)

    def graph_arguments(self) -> list[str]:
        """The step's arguments fast_partial holds (the module, its Rngs): split once per call of the method,
        not at every token."""
        return ["self", *(["rngs"] if self.uses_rngs else [])]

    def buffered_statements(self) -> list[cst.BaseStatement]:
        first = self.loop.body.body[0]
        t, width, length = self.position, self.width, self.length
        static_argnames = f", static_argnames=({self.static_names()})" if self.statics else ""
        head = [cst.parse_statement(f"{self.step} = fast_partial(type(self).{self.step_name}, "
                                    f"{', '.join(self.graph_arguments())}{static_argnames})\n"),
                cst.parse_statement(f"{length} = {self.tokens}.shape[1]\n"),
                cst.parse_statement(f"{self.tokens} = token_buffer({self.tokens}, {self.count})\n")]
        head[0] = head[0].with_changes(leading_lines=self.loop.leading_lines)
        body = [cst.parse_statement(f"{width} = min({t}, {self.block})\n").with_changes(
                    leading_lines=first.leading_lines),
                cst.parse_statement(f"{self.window} = jax.lax.dynamic_slice_in_dim({self.tokens}, {t} - {width}, "
                                    f"{width}, axis=1)\n"),
                cst.parse_statement(f"{self.token} = {self.step}("
                                    f"{', '.join([self.window, *(f'{name}={name}' for name in self.statics)])})\n"),
                cst.parse_statement(f"{self.tokens} = jax.lax.dynamic_update_slice_in_dim({self.tokens}, "
                                    f"{self.token}.astype({self.tokens}.dtype), {t}, axis=1)\n")]
        loop = self.loop.with_changes(target=cst.Name(t), leading_lines=(), iter=cst.parse_expression(
            f"range({length}, {length} + {self.count})"), body=self.loop.body.with_changes(body=body))
        return [*head, loop]

    def static_names(self) -> str:
        """The static arguments as a tuple's elements: `"temperature", "top_k"` (`"top_k",` alone)."""
        return ", ".join(f'"{name}"' for name in self.statics) + ("," if len(self.statics) == 1 else "")

    def step_method(self) -> cst.FunctionDef:
        middle = list(self.loop.body.body[1:-1])
        decorator = f"@nnx.jit(static_argnames=({self.static_names()}))\n" if self.statics else "@nnx.jit\n"
        method = cst.parse_statement(
            f"{decorator}def {self.step_name}({', '.join([*self.graph_arguments(), self.window, *self.statics])}):\n"
            f'    """One token of {self.function.name.value}: compiled once per context width '
            f'({self.window}.shape[1]){"; " + ", ".join(self.statics) + " static" if self.statics else ""}."""\n'
            f"    return {self.token}\n")
        body = [method.body.body[0], *middle, method.body.body[-1]]
        return method.with_changes(body=method.body.with_changes(body=body), leading_lines=[cst.EmptyLine(indent=False)])


def _crop(statement) -> tuple[str, str, str] | None:
    """`W = X if X.shape[1] <= B else X[:, -B:]` or `W = X[:, -B:]`: (W, X, B's code)."""
    if not m.matches(statement, m.SimpleStatementLine(body=[m.Assign(targets=[m.AssignTarget(m.Name())])])):
        return None
    assign = statement.body[0]
    value = assign.value
    window = assign.targets[0].target.value
    if type(value) is cst.IfExp:
        tokens, block = _last_columns(value.orelse)
        if tokens is None or not m.matches(value.body, m.Name(tokens)) or not m.matches(value.test, m.Comparison(
                left=m.Subscript(value=m.Attribute(value=m.Name(tokens), attr=m.Name("shape")),
                                 slice=[m.SubscriptElement(m.Index(m.Integer("1")))]),
                comparisons=[m.ComparisonTarget(m.LessThanEqual())])) \
                or code_of(value.test.comparisons[0].comparator) != block:
            return None
        return window, tokens, block
    tokens, block = _last_columns(value)
    return None if tokens is None else (window, tokens, block)


def _last_columns(node) -> tuple[str | None, str | None]:
    """`X[:, -B:]`: (X, B's code), B a name or attribute chain."""
    if not m.matches(node, m.Subscript(value=m.Name(), slice=[
            m.SubscriptElement(m.Slice(lower=None, upper=None, step=None)),
            m.SubscriptElement(m.Slice(lower=m.UnaryOperation(operator=m.Minus()), upper=None, step=None))])):
        return None, None
    block = node.slice[1].slice.lower.expression
    return (node.value.value, code_of(block)) if _reevaluable(block) else (None, None)


def _append(statement) -> tuple[str, str] | None:
    """`X = jnp.concatenate((X, N), axis=1)`: (X, N)."""
    if not m.matches(statement, m.SimpleStatementLine(body=[m.Assign(
            targets=[m.AssignTarget(m.Name())],
            value=m.Call(func=m.Attribute(value=m.Name("jnp"), attr=m.Name("concatenate")), args=[
                m.Arg(m.Tuple([m.Element(m.Name()), m.Element(m.Name())]), keyword=None),
                m.Arg(m.Integer("1"), keyword=m.Name("axis"))]))])):
        return None
    assign = statement.body[0]
    tokens = assign.targets[0].target.value
    first, token = (e.value.value for e in assign.value.args[0].value.elements)
    return (tokens, token) if first == tokens and token != tokens else None


def _reevaluable(node) -> bool:
    """A name, an integer or an attribute chain: evaluated twice, the same value."""
    while type(node) is cst.Attribute:
        node = node.value
    return type(node) in (cst.Name, cst.Integer)


def _literal(node) -> bool:
    if type(node) is cst.UnaryOperation and type(node.operator) is cst.Minus:
        node = node.expression
    return type(node) in (cst.Integer, cst.Float, cst.SimpleString) \
        or (type(node) is cst.Name and node.value in ("None", "True", "False"))


def _free_and_assigned(statements) -> tuple[set[str], set[str]]:
    """The names the statements read before assigning them (in order; an `if` block's assignments counted as
    made after it), and the names they assign."""
    free, assigned = set(), set()
    for statement in statements:
        if type(statement) is cst.If:
            free |= _loaded(statement.test) - assigned
            branches = [statement.body.body]
            orelse = statement.orelse
            while orelse is not None:
                if type(orelse) is cst.If:
                    free |= _loaded(orelse.test) - assigned
                    branches.append(orelse.body.body)
                    orelse = orelse.orelse
                else:
                    branches.append(orelse.body.body)
                    orelse = None
            for branch in branches:
                inner_free, inner_assigned = _free_and_assigned(branch)
                free |= inner_free - assigned
            for branch in branches:
                assigned |= _free_and_assigned(branch)[1]
        elif type(statement) is cst.SimpleStatementLine:
            for small in statement.body:
                free |= _loaded(small) - assigned
                assigned |= _stored(small)
        else:
            free |= _loaded(statement) - assigned
            assigned |= _stored(statement)
    return free, assigned


class _Names(cst.CSTVisitor):
    """The names a node reads (`loaded`) and binds (`stored`); a target's subscripts and attributes read."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.stored: set[str] = set()

    def visit_Name(self, node: cst.Name) -> None:
        self.loaded.add(node.value)

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
        self._store(node.target)
        return False

    def visit_AugAssign(self, node: cst.AugAssign) -> bool:
        node.target.visit(self)
        self._store(node.target)
        node.value.visit(self)
        return False

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        self._store(node.target)
        if node.value is not None:
            node.value.visit(self)
        return False

    def visit_For(self, node: cst.For) -> bool:
        self._store(node.target)
        node.iter.visit(self)
        node.body.visit(self)
        return False

    def _store(self, target) -> None:
        if type(target) in (cst.Tuple, cst.List):
            for element in target.elements:
                self._store(element.value)
        elif type(target) is cst.StarredElement:
            self._store(target.value)
        elif type(target) is cst.Name:
            self.stored.add(target.value)
        else:  # x[i] = ... / x.a = ... read x
            target.visit(self)


def _loaded(node) -> set[str]:
    names = _Names()
    node.visit(names)
    return names.loaded


def _stored(node) -> set[str]:
    names = _Names()
    node.visit(names)
    return names.stored


def _writes_outside(step: cst.Module) -> bool:
    """Does the step assign an attribute or an item (`self.x = ...`, `a[i] += ...`): state it would change
    under the trace, not at every token?"""
    targets = [node.target for node in m.findall(step, m.AssignTarget() | m.AugAssign() | m.AnnAssign())]
    return any(m.findall(target, m.Attribute() | m.Subscript()) or type(target) in (cst.Attribute, cst.Subscript)
               for target in targets)


def _assigned_names(function: cst.FunctionDef) -> set[str]:
    return _stored(function.body)


def _names(node) -> set[str]:
    return {name.value for name in m.findall(node, m.Name())}


def _names_outside(function: cst.FunctionDef, loop: cst.For) -> set[str]:
    """The names the method mentions outside `loop`."""
    return {name.value for statement in function.body.body if statement is not loop
            for name in m.findall(statement, m.Name())}


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    while name in taken:
        name += "_"
    taken.add(name)
    return name
