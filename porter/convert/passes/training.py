"""Training loops: zero_grad / forward / backward / step -> a jitted train_step.

A loop body like

    optimizer.zero_grad()
    outputs = net(inputs)
    loss = criterion(outputs, labels)
    loss.backward()
    optimizer.step()

becomes a `train_step(net, optimizer, inputs, labels)` defined before the
outermost loop (forward inside `nnx.value_and_grad`, `optimizer.update`),
called through `nnx.cached_partial` so the per-step cost is the compiled
step, not graph bookkeeping. The loop keeps everything else. A loop the pass
does not fully understand is left as it is and reported (PT010).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from porter.convert import checkpoints, data_side
from porter.convert.context import OptimizerInfo, code_of
from porter.convert.builders import GPU_AVAILABLE
from porter.convert.traverse import find_all
from porter.convert.passes.concerns import Final
from porter.convert.training_builders import OPTIMIZER_FACTORIES  # MODEL.configure_optimizers(...): its optimizer

ZERO_GRAD = m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("zero_grad"))))
BACKWARD = m.Expr(value=m.Call(func=m.Attribute(attr=m.Name("backward")), args=[]))
STEP = m.Expr(value=m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("step")), args=[]))
CLIP_FUNCTIONS = ("torch.nn.utils.clip_grad_norm_", "torch.nn.utils.clip_grad_value_",
                  "torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_value_")
OPTIMIZER_PREFIX = "torch.optim."
SCHEDULER_PREFIX = "torch.optim.lr_scheduler."
GRAD_CONTEXTS = ("torch.no_grad", "torch.inference_mode", "torch.enable_grad", "torch.set_grad_enabled")
SCALERS = ("torch.amp.GradScaler", "torch.amp.grad_scaler.GradScaler", "torch.cuda.amp.GradScaler",
           "torch.cuda.amp.grad_scaler.GradScaler", "torch.cpu.amp.GradScaler", "torch.GradScaler")
SCALER_KEYWORDS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled")
SCALER_METHODS = ("scale", "unscale_", "step", "update")
PLACEMENT_METHODS = ("to", "cuda", "cpu")


def small(statement: cst.CSTNode) -> cst.BaseSmallStatement | None:
    """The single small statement of a simple line (None for compound statements)."""
    if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
        return statement.body[0]
    return None


class _Names(cst.CSTVisitor):
    """Names a piece of code reads and names it assigns (plain names only)."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.loaded_counts: dict[str, int] = {}
        self.assigned: list[str] = []

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_AssignTarget(self, node: cst.AssignTarget) -> bool:
        self._targets(node.target)
        return False

    def visit_Assign(self, node: cst.Assign) -> bool:
        for target in node.targets:
            target.visit(self)
        node.value.visit(self)
        return False

    def visit_AugAssign(self, node: cst.AugAssign) -> bool:
        node.target.visit(self)  # reads it too
        self._targets(node.target)
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)  # a keyword's name is not a read
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.loaded_counts[node.value] = self.loaded_counts.get(node.value, 0) + 1
        if node.value not in self.loaded:
            self.loaded.append(node.value)

    def _targets(self, target: cst.BaseExpression) -> None:
        if isinstance(target, cst.Name):
            if target.value not in self.assigned:
                self.assigned.append(target.value)
        elif isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                self._targets(element.value)
        else:
            target.visit(self)


def names_in(*nodes: cst.CSTNode) -> _Names:
    collector = _Names()
    for node in nodes:
        node.visit(collector)
    return collector


@dataclass
class TrainingLoop:
    """The parts of one loop body, by statement index."""

    optimizer: str
    model: str
    forward: list[cst.BaseStatement]
    objective: cst.BaseExpression
    first: int  # index of the first statement the train_step call replaces
    last: int  # index of optimizer.step()
    removed: set[int] = field(default_factory=set)


LEFT_UNCHANGED = object()  # a loop of a known shape that was reported and stays as it is


@dataclass
class Accumulation:
    """A gradient accumulation loop: the forward/backward part and the `if` holding optimizer.step()."""

    loop: TrainingLoop  # `last` is the backward() statement; `removed` the zero_grad() statements
    guard: int  # index of the `if` statement


@dataclass(frozen=True)
class AccumulationNames:
    accumulate: str  # the jitted forward/backward adding to the gradient sum
    apply: str  # the jitted optimizer update
    grads: str  # the gradient sum (torch's .grad)

    @property
    def apply_call(self) -> str:
        return f"{self.apply}_fast({self.grads})"

    @property
    def zeroing(self) -> str:
        return f"{self.grads} = jax.tree.map(jnp.zeros_like, {self.grads})"


@dataclass
class MicroSteps:
    """Gradient accumulation over an inner loop of micro-batches (nanoGPT's train.py): backward() in the inner
    loop, then clipping, the optimizer's (or a GradScaler's) step and zero_grad() after it, in the body of the
    loop around it."""

    optimizer: str
    model: str  # the model it trains
    scaler: str | None  # the GradScaler whose scale(loss) is differentiated
    changing: set[str]  # names the loops assign (a forward reading one takes it as an argument)
    names: AccumulationNames | None = None  # set when the inner loop was converted


class TrainingLoops:
    """The training loops concern (passes/concerns.py): it wraps the calls and modules rewrite (`scope`)."""

    # statements without these (or the torch names etc., passes/scope.py) are skipped unvisited
    TRIGGER_WORDS = frozenset({"zero_grad", "backward", "step", "state_dict", "load_state_dict", *PLACEMENT_METHODS,
                               *OPTIMIZER_FACTORIES, "param_groups"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx, self.report, self.record, self.mentions = scope.ctx, scope.report, scope.record, scope.mentions
        self.loops = scope.training_loops  # what other concerns change about training loops (scope.LoopOptions)
        self._loop_depth = 0
        self._pending_steps: list[cst.BaseStatement] = []
        self._loop_targets: list[set[str]] = []
        self._step_names: set[str] = set()
        self._grad_contexts: set[int] = set()  # ids of torch.no_grad() & co. (call or decorator)
        # clip_grad_*_ calls in training loops (they move into the optimizer) and GradScaler(...) calls (the same)
        self._folded_clips: set[int] = set()
        self._scalers: dict[str, str] = {}  # GradScaler variable -> grad_scaler's keywords
        self._lr_writes: dict[int, str] = {}  # id of `for g in OPT.param_groups: g['lr'] = lr` -> OPT
        self._micro_inner: dict[int, MicroSteps] = {}  # id of a micro-batch loop -> its plan
        self._micro_outer: dict[int, MicroSteps] = {}  # id of the loop around it -> the same plan
        self._holding = 0  # loops being traversed that hold a micro-batch loop: its steps go before them
        self._checkpoints: checkpoints.Checkpoints | None = None

    def visit_Module(self, node: cst.Module) -> None:
        self._analyze_training(node)
        self._checkpoints = checkpoints.find_checkpoints(node, self.ctx) \
            if any(self.mentions(word) for word in ("load_state_dict", "save", "load")) else None  # (a state_dict()
        # converts only inside a torch.save or under deepcopy, restored by load_state_dict)

    def _analyze_training(self, node: cst.Module) -> None:
        """Before rewriting: which optimizer trains which model, which are scheduled or clipped,
        and how often each name is read (to know which forward results the rest of the file uses)."""
        self._reads = {}
        if not (self.mentions("optim") or any(self.mentions(name) for name in OPTIMIZER_FACTORIES)):
            return  # no torch.optim name in the file: no optimizer, so no loop to convert (a cheap text test)
        nodes = find_all(node, (cst.Assign, cst.Call, cst.For, cst.While))  # one walk (each m.findall was a visitor)
        for assign in (a for a in nodes if type(a) is cst.Assign and len(a.targets) == 1
                       and type(a.targets[0].target) is cst.Name and type(a.value) is cst.Call):
            qualified = self.ctx.qualified_name(assign.value.func) or ""
            model = _model_of_params(assign.value)
            if qualified.startswith(OPTIMIZER_PREFIX) and not qualified.startswith(SCHEDULER_PREFIX) and model:
                # one entry per optimizer built (two optimizers over one model no longer collide)
                self.ctx.optimizers[id(assign.value)] = OptimizerInfo(assign.targets[0].target.value, model)
        for assign in (a for a in nodes if type(a) is cst.Assign and len(a.targets) == 1
                       and type(a.targets[0].target) is cst.Name and type(a.value) is cst.Call):
            func = assign.value.func
            if isinstance(func, cst.Attribute) and func.attr.value in OPTIMIZER_FACTORIES \
                    and isinstance(func.value, cst.Name):
                self.ctx.optimizers[id(assign.value)] = OptimizerInfo(assign.targets[0].target.value,
                                                                      func.value.value, factory=True)
        # (a name bound both in a configure_optimizers method and by the script's call of it: the script's)
        by_name = {info.name: info for info in self.ctx.optimizers.values()}
        self._find_scalers(node, nodes, by_name)
        self._find_lr_writes(nodes, by_name)
        for call in (c for c in nodes if type(c) is cst.Call):
            qualified = self.ctx.qualified_name(call.func) or ""
            if qualified.startswith(SCHEDULER_PREFIX) and call.args and code_of(call.args[0].value) in by_name:
                by_name[code_of(call.args[0].value)].scheduled = True
                by_name[code_of(call.args[0].value)].lr_scheduler = True
        for loop in (f for f in nodes if type(f) is cst.For):
            self._assign_clipping(loop)
        for loop in (f for f in nodes if type(f) in (cst.For, cst.While)):
            self._plan_micro_steps(loop, by_name)
        self._reads = names_in(node).loaded_counts

    def _assign_clipping(self, loop: cst.For) -> None:
        """A clip_grad_*_ in a loop goes into the chain of the optimizer that loop steps (over the same model)."""
        statements = list(loop.body.body)
        statements += [t for s in statements if isinstance(s, cst.If) for t in s.body.body]
        stepped = {small(s).value.func.value.value for s in statements if m.matches(small(s), STEP)}
        for statement in statements:
            expression = small(statement)
            if not (isinstance(expression, cst.Expr) and isinstance(expression.value, cst.Call)):
                continue
            if (self.ctx.qualified_name(expression.value.func) or "") not in CLIP_FUNCTIONS:
                continue
            for info in self.ctx.optimizers.values():
                if info.name in stepped and info.model == _model_of_params(expression.value):
                    info.clip = _clip_transform(expression.value, self.ctx)

    # --------------------------------------------------------------------
    # GradScaler, learning rates written into param_groups, micro-batch loops (analysis)

    def _find_scalers(self, module: cst.Module, nodes: list, by_name: dict) -> None:
        """`scaler = torch.amp.GradScaler(...)` used only as scale(loss).backward(), unscale_(opt), step(opt) and
        update(): its keywords go to the emitted grad_scaler around the optimizer it steps, the statement goes."""
        calls = [c for c in nodes if type(c) is cst.Call]
        reads = None
        for assign in (a for a in nodes if type(a) is cst.Assign and len(a.targets) == 1
                       and type(a.targets[0].target) is cst.Name and type(a.value) is cst.Call):
            qualified = self.ctx.qualified_name(assign.value.func) or ""
            keywords = _scaler_keywords(assign.value, qualified) if qualified in SCALERS else None
            if keywords is None:
                continue
            name = assign.targets[0].target.value
            uses = [c for c in calls if m.matches(c.func, m.Attribute(value=m.Name(name)))]
            stepped = {code_of(c.args[0].value) for c in uses if c.func.attr.value == "step" and len(c.args) == 1}
            reads = reads or names_in(module).loaded_counts
            if len(stepped) != 1 or reads.get(name, 0) != len(uses) \
                    or any(c.func.attr.value not in SCALER_METHODS for c in uses):
                continue  # read some other way (get_scale, state_dict, ...): left, GradScaler reported (PT003)
            info = by_name.get(stepped.pop())
            if info is not None:
                info.scaler = keywords
                self._scalers[name] = keywords
                self._folded_clips.add(id(assign.value))

    def _find_lr_writes(self, nodes: list, by_name: dict) -> None:
        """`for g in OPT.param_groups: g['lr'] = lr` (a hand-written schedule): OPT's rate is injected state."""
        for loop in (f for f in nodes if type(f) is cst.For):
            optimizer = _lr_write(loop)
            if optimizer in by_name:
                by_name[optimizer].scheduled = True
                self._lr_writes[id(loop)] = optimizer

    def _plan_micro_steps(self, loop: cst.For | cst.While, by_name: dict) -> None:
        """A loop whose body holds a loop of backward() calls (no step) followed by the optimizer's step."""
        body = list(loop.body.body)
        inner = [i for i, s in enumerate(body) if isinstance(s, cst.For) and s.orelse is None
                 and sum(m.matches(small(t), BACKWARD) for t in s.body.body) == 1
                 and not any(self._step_of(t) for t in s.body.body)]
        steps = [i for i, s in enumerate(body) if self._step_of(s)]
        if len(inner) != 1 or len(steps) != 1 or steps[0] < inner[0]:
            return
        optimizer, scaler = self._step_of(body[steps[0]])
        info = by_name.get(optimizer)
        if info is None:
            return
        changing = set(names_in(loop).assigned) | set(names_in(body[inner[0]].target).loaded)
        for statement in body[inner[0] + 1:steps[0]]:
            if isinstance(statement, cst.If) and self._clip_block(statement, optimizer):
                condition = statement.test
                clip = next(_clip_transform(small(t).value, self.ctx) for t in statement.body.body if self._is_clip(t))
                if set(names_in(condition).loaded) & changing:
                    return  # decided anew each step: the optimizer's chain cannot hold it
                info.clip = f"{clip} if {code_of(condition)} else optax.identity()"
                self._folded_clips |= {id(small(t).value) for t in statement.body.body if self._is_clip(t)}
            elif self._is_clip(statement):
                info.clip = _clip_transform(small(statement).value, self.ctx)
                self._folded_clips.add(id(small(statement).value))
        plan = MicroSteps(optimizer, info.model, scaler, changing)
        self._micro_inner[id(body[inner[0]])] = plan
        self._micro_outer[id(loop)] = plan

    def _step_of(self, statement: cst.BaseStatement) -> tuple[str, str | None] | None:
        """(optimizer, None) for `OPT.step()`, (optimizer, scaler) for `scaler.step(OPT)`, else None."""
        optimizer = self._optimizer_step(statement)
        if optimizer:
            return optimizer, None
        call = self._scaler_call(statement, "step")
        if call is not None and isinstance(call.args[0].value, cst.Name) and self._is_optimizer_name(
                call.args[0].value.value):
            return call.args[0].value.value, call.func.value.value
        return None

    def _scaler_call(self, statement: cst.BaseStatement, method: str) -> cst.Call | None:
        expression = small(statement)
        if isinstance(expression, cst.Expr) and m.matches(expression.value, m.Call(func=m.Attribute(
                value=m.Name(), attr=m.Name(method)))) and expression.value.func.value.value in self._scalers \
                and len(expression.value.args) == (0 if method == "update" else 1):
            return expression.value
        return None

    def _clip_block(self, statement: cst.If, optimizer: str) -> bool:
        """`if grad_clip != 0.0: scaler.unscale_(optimizer); clip_grad_norm_(...)`: clipping, under a test."""
        inner = statement.body.body if isinstance(statement.body, cst.IndentedBlock) else []
        return statement.orelse is None and any(self._is_clip(t) for t in inner) and all(
            self._is_clip(t) or self._scaler_call(t, "unscale_") is not None for t in inner)

    def _is_optimizer_name(self, name: str) -> bool:
        return any(info.name == name for info in self.ctx.optimizers.values())

    # torch.no_grad(): JAX computes gradients only where asked, so the context goes
    def visit_With(self, node: cst.With) -> None:
        for item in node.items:
            if self._is_grad_context(item.item):
                self._grad_contexts.add(id(item.item))

    def leave_With(self, original_node: cst.With, updated_node: cst.With):
        if len(original_node.items) == 1 and id(original_node.items[0].item) in self._grad_contexts \
                and original_node.items[0].asname is None and isinstance(updated_node.body, cst.IndentedBlock):
            body = list(updated_node.body.body)
            if self.scope.module_class is not None:  # inside the model: its gradients must not flow through the block
                body = stop_gradients(body)
                if body is None:
                    self.report("PT004", original_node, "torch.no_grad() block in model code holds more than "
                                "assignments: JAX would differentiate through it; wrap the values it computes in "
                                "jax.lax.stop_gradient(...) and remove the with; left unchanged")
                    return updated_node
                self.ctx.need_helper("no_grad")
            self.record("no-grad", original_node, cst.Pass())
            body[0] = body[0].with_changes(leading_lines=[*updated_node.leading_lines, *body[0].leading_lines])
            return cst.FlattenSentinel(body)
        return updated_node

    def visit_Decorator(self, node: cst.Decorator) -> None:
        if self._is_grad_context(node.decorator):
            self._grad_contexts.add(id(node.decorator))

    def leave_Decorator(self, original_node: cst.Decorator, updated_node: cst.Decorator):
        if id(original_node.decorator) in self._grad_contexts:
            self.record("no-grad", original_node, cst.Pass())
            return Final(cst.RemoveFromParent())
        return updated_node

    def after_visit_Call(self, node: cst.Call) -> None:
        if id(node) in self._folded_clips:
            self.scope.kept_depth += 1  # nothing inside a folded clip call is converted or reported

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call):
        if id(original_node) in self._folded_clips:
            self.scope.kept_depth -= 1
            return Final(updated_node)  # the statement goes with the loop's conversion (PT010 if the loop stays)
        if id(original_node) in self._grad_contexts or id(original_node.func) in self._grad_contexts:
            return Final(updated_node)
        qualified = self.ctx.qualified_name(original_node.func) or ""
        if qualified in ("torch.manual_seed", "torch.random.manual_seed") and not self.scope.function_stack \
                and original_node.args:
            self.ctx.seed = code_of(original_node.args[0].value)
        checkpoint = self._checkpoint_call(qualified, original_node, updated_node)
        if checkpoint is not None:
            return Final(checkpoint)
        return updated_node

    def _checkpoint_call(self, qualified: str, original: cst.Call, updated: cst.Call) -> cst.CSTNode | None:
        """torch.save / torch.load / state_dict / load_state_dict of a checkpoint (porter/convert/checkpoints.py);
        None: the call is not one of those."""
        if self._checkpoints is None:
            return None
        return checkpoints.convert_call(self, self._checkpoints, qualified, original, updated)

    def leave_SimpleStatementLine(self, original_node, updated_node):
        """`model.to(device)` as a statement: nothing left to do once placement is dropped. Neither for
        `optimizer.zero_grad()` outside loops: JAX gradients start from nothing."""
        statement = small(original_node)
        if isinstance(statement, cst.Assign) and id(statement.value) in self._folded_clips:
            self.record("grad-scaler", original_node, cst.Pass())  # its keywords went into the optimizer's chain
            return Final(cst.RemoveFromParent())
        info = self.ctx.optimizers.get(id(statement.value)) if isinstance(statement, cst.Assign) else None
        if info is not None and info.factory and (info.clip or info.scaler):
            return cst.FlattenSentinel([updated_node, self._rebuilt_optimizer(info, original_node)])
        if self._loop_depth == 0 and not self._holding and m.matches(statement, ZERO_GRAD) \
                and any(self._zero_grad_of(original_node, info.name) for info in self.ctx.optimizers.values()):
            self.record("zero-grad", original_node, cst.Pass())
            return Final(cst.RemoveFromParent())
        if isinstance(statement, cst.Expr) and m.matches(statement.value, m.Call(func=m.Attribute(
                attr=m.OneOf(*[m.Name(n) for n in PLACEMENT_METHODS])))) \
                and isinstance(small(updated_node), cst.Expr) and isinstance(small(updated_node).value, cst.Name):
            self.record("device-placement", original_node, cst.Pass())
            return Final(cst.RemoveFromParent())
        return updated_node

    def _rebuilt_optimizer(self, info: OptimizerInfo, original: cst.CSTNode) -> cst.SimpleStatementLine:
        """`optimizer = nnx.Optimizer(model, grad_scaler(optax.chain(clip, optimizer.tx)), ...)` after an optimizer
        built elsewhere: the clipping and loss scaling the loop does around its step join its transformation."""
        tx = f"{info.name}.tx" if not info.clip else f"optax.chain({info.clip}, {info.name}.tx)"
        if info.scaler:
            self.ctx.need_helper("grad_scaler")
            tx = f"grad_scaler({tx}, {info.scaler})"
        what = " and ".join(w for w, given in (("clipping", info.clip), ("loss scaling", info.scaler)) if given)
        line = cst.parse_statement(f"{info.name} = nnx.Optimizer(  # the training loop's {what} join its transformation\n"
                                   f"    {info.model}, {tx}, wrt=nnx.Param)\n")
        self.record("optimizer-chain", original, line)
        return line

    def _is_grad_context(self, node: cst.BaseExpression) -> bool:
        target = node.func if isinstance(node, cst.Call) else node
        return (self.ctx.qualified_name(target) or "") in GRAD_CONTEXTS

    def visit_While(self, node: cst.While) -> None:
        self._holding += id(node) in self._micro_outer

    def leave_While(self, original_node: cst.While, updated_node: cst.While):
        plan = self._micro_outer.get(id(original_node))
        if plan is None:
            return updated_node
        self._holding -= 1
        return self._flushed(self._convert_micro_apply(original_node, updated_node, plan))

    def _flushed(self, loop: cst.For | cst.While):
        """The loop, with the train steps defined before it when it is the outermost loop that holds them."""
        if self._loop_depth == 0 and not self._holding and self._pending_steps:
            steps, self._pending_steps = self._pending_steps, []
            return cst.FlattenSentinel([*steps, loop])
        return loop

    def visit_For(self, node: cst.For) -> None:
        self._holding += id(node) in self._micro_outer
        self._loop_depth += 1
        self._loop_targets.append(set(names_in(node.target).loaded))
        statements = list(node.body.body)
        if any(m.matches(small(s), BACKWARD) for s in statements):
            statements += [t for s in statements if isinstance(s, cst.If) for t in s.body.body]
            self._folded_clips |= {id(small(s).value) for s in statements if self._is_clip(s)}

    def leave_For(self, original_node: cst.For, updated_node: cst.For):
        self._loop_depth -= 1
        self._loop_targets.pop()
        if id(original_node) in self._lr_writes:
            return self._learning_rate_write(original_node, updated_node)
        steps = len(self.ctx.training_steps)
        plan = self._micro_outer.get(id(original_node))
        if plan is not None:
            self._holding -= 1
            updated_node = self._convert_micro_apply(original_node, updated_node, plan)
        elif id(original_node) in self._micro_inner:
            updated_node = self._convert_micro_steps(original_node, updated_node, self._micro_inner[id(original_node)])
        else:
            updated_node = self._convert_loop_body(original_node, updated_node)
        for adapt in self.loops.adapters:
            updated_node = adapt(original_node, updated_node, steps)
        return self._flushed(updated_node)

    def _learning_rate_write(self, original: cst.For, updated: cst.For) -> cst.SimpleStatementLine:
        """`for g in optimizer.param_groups: g['lr'] = lr` -> set_learning_rate(optimizer, lr)."""
        optimizer = self._lr_writes[id(original)]
        value = small(updated.body.body[0]).value
        self.ctx.need_helper("set_learning_rate")
        if any(i.factory for i in self.ctx.optimizers.values() if i.name == optimizer):
            self.report("PT007", original, f"set_learning_rate writes the rate {optimizer}'s transformation holds as "
                                           "state: the function that builds it must wrap it in "
                                           "optax.inject_hyperparams (set_learning_rate says so when it is not)")
        new = cst.parse_statement(f"set_learning_rate({optimizer}, {code_of(value)})\n")
        self.record("learning-rate", original, new)
        return new.with_changes(leading_lines=updated.leading_lines)

    # --------------------------------------------------------------------
    def _convert_loop_body(self, original: cst.For, updated: cst.For) -> cst.For:
        body = list(updated.body.body)
        accumulation = self._find_accumulation(original, body)
        if accumulation is LEFT_UNCHANGED:
            return updated
        if accumulation is not None:
            return self._convert_accumulation(original, updated, accumulation)
        loop = self._find_training_loop(original, body)
        if loop is None:
            return updated
        step_name = self._unique_step_name()
        self._note_step_calls(original, loop)
        batch = self._batch_arguments(original, loop)
        self._batches_converted_at_call(loop, batch)
        outputs = self._outputs(loop)
        self._pending_steps.extend(self._train_step(step_name, loop, batch, outputs))
        call = self._step_call(step_name, batch, outputs)
        new_body = []
        for i, statement in enumerate(body):
            if i == loop.first:
                new_body.append(call.with_changes(leading_lines=statement.leading_lines))
            if loop.first <= i <= loop.last or i in loop.removed:
                continue
            new_body.append(statement)
        self.record("train-step", original, cst.SimpleStatementLine([cst.Pass()]))
        return updated.with_changes(body=updated.body.with_changes(body=new_body))

    def _find_training_loop(self, original: cst.For, body: list[cst.BaseStatement]) -> TrainingLoop | None:
        steps = [i for i, s in enumerate(body) if m.matches(small(s), STEP) and self._is_optimizer(small(s))]
        backwards = [i for i, s in enumerate(body) if m.matches(small(s), BACKWARD)]
        if not steps and not backwards:
            return None
        stepped = [small(body[i]).value.func.value.value for i in steps]
        if len(set(stepped)) > 1:
            self.report("PT010", original, f"several optimizers step in one loop ({', '.join(stepped)}; e.g. a GAN's "
                                           f"generator and discriminator): porter converts loops with one "
                                           f"optimizer; left unchanged (write one train step per optimizer, each "
                                           f"differentiating its own model's loss)")
            return None
        if len(steps) != 1 or len(backwards) != 1 or backwards[0] > steps[0]:
            self.report("PT010", original, "a training loop porter does not understand (it handles one "
                                           "loss.backward() followed by one optimizer.step() in the same loop "
                                           "body); left unchanged")
            return None
        backward, step = backwards[0], steps[0]
        optimizer = small(body[step]).value.func.value.value
        model = next((info.model for info in self.ctx.optimizers.values() if info.name == optimizer), None)
        # zero_grad() between backward() and step() would zero what step() reads: left in place, reported below
        zero_grads = [i for i, s in enumerate(body) if self._zero_grad_of(s, optimizer) and not backward < i < step]
        first, forward = self._forward_span(body, backward, zero_grads)
        problem = model is None and f"the model that {optimizer} trains is not known (expected "\
                                    f"{optimizer} = torch.optim.X(model.parameters(), ...))"
        problem = problem or self._forward_problem(forward)
        if problem:
            self.report("PT010", original, f"training loop left unchanged: {problem}")
            return None
        objective = small(body[backward]).value.func.value
        removed = {i for i in zero_grads} | {i for i in range(backward, step) if self._is_clip(body[i])}
        if any(i for i in range(backward + 1, step) if i not in removed):
            self.report("PT010", original, "statements between backward() and step() other than gradient "
                                           "clipping; training loop left unchanged")
            return None
        return TrainingLoop(optimizer, model, forward, objective, first, step, removed)

    # --------------------------------------------------------------------
    # Gradient accumulation: backward() every batch, step() under an `if`

    def _find_accumulation(self, original: cst.For, body: list[cst.BaseStatement]) -> Accumulation | object | None:
        """`loss.backward()` in the body and the only `optimizer.step()` directly inside a later `if`
        (None: not that shape; LEFT_UNCHANGED: that shape, but reported)."""
        backwards = [i for i, s in enumerate(body) if m.matches(small(s), BACKWARD)]
        if len(backwards) != 1 or any(self._optimizer_step(s) for s in body):
            return None
        backward = backwards[0]
        guarded = [i for i, s in enumerate(body) if i > backward and isinstance(s, cst.If) and s.orelse is None
                   and isinstance(s.body, cst.IndentedBlock) and any(self._optimizer_step(t) for t in s.body.body)]
        if len(guarded) != 1 or sum(bool(self._optimizer_step(t)) for t in body[guarded[0]].body.body) != 1:
            return None
        optimizer = next(self._optimizer_step(t) for t in body[guarded[0]].body.body if self._optimizer_step(t))
        model = next((i.model for i in self.ctx.optimizers.values() if i.name == optimizer), None)
        zero_grads = [i for i, s in enumerate(body) if self._zero_grad_of(s, optimizer)]
        first, forward = self._forward_span(body, backward, zero_grads)
        problem = self._forward_problem(forward)
        if any(self._is_clip(s) for s in body):
            problem = "gradient clipping after each backward() (it clips the running sum; porter converts " \
                      "clipping just before step())"
        if problem:
            self.report("PT010", original, f"gradient accumulation loop left unchanged: {problem}")
            return LEFT_UNCHANGED
        loop = TrainingLoop(optimizer, model, forward, small(body[backward]).value.func.value, first, backward,
                            removed=set(zero_grads))
        return Accumulation(loop, guarded[0])

    def _optimizer_step(self, statement: cst.BaseStatement) -> str | None:
        """The optimizer's name if the statement is `OPTIMIZER.step()` of a known optimizer."""
        expression = small(statement)
        if m.matches(expression, STEP) and self._is_optimizer(expression):
            return expression.value.func.value.value
        return None

    def _zero_grad_of(self, statement: cst.BaseStatement, optimizer: str) -> bool:
        """`optimizer.zero_grad(...)` or `model.zero_grad(...)` of the model it trains, set_to_none or not (a JAX
        gradient is never None: set_to_none=True's skipping of parameters the loss does not reach is a
        difference of every converted step, zero_grad or not)."""
        expression = small(statement)
        if not (m.matches(expression, ZERO_GRAD) and m.matches(expression.value.func.value, m.Name())):
            return False
        owner = expression.value.func.value.value
        return owner == optimizer or any(info.name == optimizer and info.model == owner
                                         for info in self.ctx.optimizers.values())

    def _convert_accumulation(self, original: cst.For, updated: cst.For, accumulation: Accumulation) -> cst.For:
        loop = accumulation.loop
        if loop.model is None:
            self.report("PT010", original, f"gradient accumulation loop left unchanged: the model that "
                                           f"{loop.optimizer} trains is not known")
            return updated
        body = list(updated.body.body)
        names = self._accumulation_names()
        self._note_step_calls(original, loop)
        batch = self._batch_arguments(original, loop)
        self._batches_converted_at_call(loop, batch)
        outputs = self._outputs(loop)
        self._pending_steps.extend(self._accumulation_steps(names, loop, batch, outputs))
        zero = names.zeroing + "\n"
        new_body = []
        for i, statement in enumerate(body):
            if i == loop.first:
                call = self._accumulate_call(names, batch, outputs).with_changes(leading_lines=statement.leading_lines)
                if any(j < loop.last for j in loop.removed):  # zeroed before each backward(): only this batch's
                    new_body.append(cst.parse_statement(zero).with_changes(leading_lines=statement.leading_lines))
                    call = call.with_changes(leading_lines=[])
                new_body.append(call)
            if i in loop.removed and i > loop.last:
                new_body.append(cst.parse_statement(zero).with_changes(leading_lines=statement.leading_lines))
            elif i == accumulation.guard:
                new_body.append(self._guarded_update(statement, names, loop.optimizer, zero))
            elif not (loop.first <= i <= loop.last or i in loop.removed):
                new_body.append(statement)
        self.record("train-step", original, cst.SimpleStatementLine([cst.Pass()]))
        self.report("PT007", original, f"gradient accumulation: {names.accumulate}() adds each batch's gradients "
                                       f"to {names.grads} (as torch's backward() adds to .grad), "
                                       f"{names.apply}() takes the optimizer step, zero_grad() zeroes {names.grads}")
        return updated.with_changes(body=updated.body.with_changes(body=_zeroed_by_step(new_body, names)))

    def _guarded_update(self, statement: cst.If, names: AccumulationNames, optimizer: str, zero: str) -> cst.If:
        inner = []
        for s in statement.body.body:
            if self._optimizer_step(s):
                inner.append(cst.parse_statement(names.apply_call + "\n")
                             .with_changes(leading_lines=s.leading_lines))
            elif self._zero_grad_of(s, optimizer):
                inner.append(cst.parse_statement(zero).with_changes(leading_lines=s.leading_lines))
            elif not self._is_clip(s):  # clipping moved into the optimizer's chain (it sees the summed gradients)
                inner.append(s)
        return statement.with_changes(body=statement.body.with_changes(body=_zeroed_by_step(inner, names)))

    # --------------------------------------------------------------------
    # Micro-batches: backward() in an inner loop, the step after it (nanoGPT's train.py)

    def _convert_micro_steps(self, original: cst.For, updated: cst.For, plan: MicroSteps) -> cst.For:
        """The inner loop: its forward and backward become one call of the jitted accumulate step."""
        body = list(updated.body.body)
        found = self._micro_forward(body, plan)
        model = plan.model
        if isinstance(found, str):
            self.report("PT010", original, f"gradient accumulation loop left unchanged: {found}")
            return updated
        wrapper, spots, objective, backward, dropped = found
        forward = [s for i, s in enumerate(body) if i in spots] if wrapper is None else list(body[wrapper].body.body)
        first = wrapper if wrapper is not None else min(spots)
        loop = TrainingLoop(plan.optimizer, model, forward, objective, first, backward)
        names = plan.names = self._accumulation_names()
        self._note_step_calls(original, loop)
        read = names_in(*forward).loaded
        batch = [n for n in read if n in plan.changing and n not in names_in(*forward).assigned and n != model]
        self.loops.last_batch = batch
        self._batches_converted_at_call(loop, batch)
        outputs = self._outputs(loop)
        scale = "loss_scale" if plan.scaler else None
        self._pending_steps.extend(self._accumulation_steps(names, loop, batch, outputs, scale))
        self.ctx.training_steps[-2:] = [names.apply, names.accumulate]  # the step called in this loop last (adapters)
        call = self._accumulate_call(names, batch, outputs, f"{plan.optimizer}.opt_state[\"scale\"][...]"
                                     if scale else None)
        new_body = []
        for i, statement in enumerate(body):
            if i == first:
                if wrapper is None:
                    new_body.append(call.with_changes(leading_lines=statement.leading_lines))
                else:  # the context (autocast) stays around the step, which is traced inside it
                    new_body.append(statement.with_changes(body=statement.body.with_changes(body=[call])))
            elif not (i in dropped or i == backward or (wrapper is None and i in spots)):
                new_body.append(statement)
        self.record("train-step", original, cst.SimpleStatementLine([cst.Pass()]))
        self.report("PT007", original, f"gradient accumulation: {names.accumulate}() adds each micro-batch's "
                                       f"gradients to {names.grads} (as torch's backward() adds to .grad), "
                                       f"{names.apply}() takes the optimizer step after the loop"
                                       + (", the loss scaled by the optimizer's grad_scaler" if scale else ""))
        return updated.with_changes(body=updated.body.with_changes(body=new_body))

    def _micro_forward(self, body: list[cst.BaseStatement], plan: MicroSteps):
        """(the index of the `with` holding the forward or None, the forward's indices when not in a `with`, the
        objective, the backward's index, indices of statements dropped) or what is not understood."""
        backward = next(i for i, s in enumerate(body) if m.matches(small(s), BACKWARD))
        objective = small(body[backward]).value.func.value
        if plan.scaler and m.matches(objective, m.Call(func=m.Attribute(value=m.Name(plan.scaler),
                                                                        attr=m.Name("scale")))):
            objective = objective.args[0].value
        withs = [i for i in range(backward) if isinstance(body[i], cst.With)]
        if withs:
            wrapper, spots = withs[-1], set()
            forward = list(body[wrapper].body.body)
            if any(self._is_grad_context(item.item) or item.asname for item in body[wrapper].items):
                return "the forward pass is under a gradient context or binds a name"
        else:
            start, forward = self._forward_span(body, backward, [])
            wrapper, spots = None, set(range(start, backward))
        problem = self._forward_problem(forward)
        if problem:
            return problem
        after = wrapper + 1 if wrapper is not None else backward
        model = plan.model
        produced = set(names_in(*forward).assigned) | set(names_in(objective).loaded)
        for statement in body[after:backward]:
            names = names_in(statement)
            if model in names.loaded or set(names.assigned) & produced:
                return f"`{code_of(statement).strip()}` between the forward pass and backward() changes what " \
                       f"the step differentiates"
        before = wrapper if wrapper is not None else min(spots)
        dropped = {i for i in range(before) if _syncs_gradients(body[i], model)}
        if any(self._zero_grad_of(s, plan.optimizer) for s in body):
            return "zero_grad() inside the loop of micro-batches"
        return wrapper, spots, objective, backward, dropped

    def _convert_micro_apply(self, original, updated, plan: MicroSteps):
        """The loop around the micro-batches: the step (clipping and loss scaling folded into the optimizer's
        chain) becomes the jitted apply step, zero_grad() zeroes the gradient sum."""
        names = plan.names
        if names is None:
            return updated
        statements = []
        for statement in updated.body.body:
            if self._step_of(statement):
                statements.append(cst.parse_statement(names.apply_call + "\n")
                                  .with_changes(leading_lines=statement.leading_lines))
            elif self._zero_grad_of(statement, plan.optimizer):
                statements.append(cst.parse_statement(names.zeroing + "\n")
                                  .with_changes(leading_lines=statement.leading_lines))
            elif not (self._is_clip(statement) or (isinstance(statement, cst.If)
                                                   and self._clip_block(statement, plan.optimizer))
                      or self._scaler_call(statement, "update") is not None
                      or self._scaler_call(statement, "unscale_") is not None):
                statements.append(statement)
        return updated.with_changes(body=updated.body.with_changes(body=_zeroed_by_step(statements, names)))

    def _accumulation_names(self) -> AccumulationNames:
        taken = set(self._reads) | self._step_names
        suffix = next(str(n) if n else "" for n in range(100)
                      if not {f"accumulate_grads{n or ''}", f"apply_grads{n or ''}"} & taken)
        grads = next(name for name in ("grads", "accumulated_grads", "grads_sum") if name not in taken)
        names = AccumulationNames(f"accumulate_grads{suffix}", f"apply_grads{suffix}", grads)
        self._step_names |= {names.accumulate, names.apply}
        return names

    def _accumulation_steps(self, names: AccumulationNames, loop: TrainingLoop, batch: list[str],
                            outputs: list[str], scale: str | None = None) -> list[cst.BaseStatement]:
        """The jitted accumulate and apply steps; `scale`: the accumulate step's argument the loss is multiplied
        by before differentiation (a GradScaler's scale(loss))."""
        model, optimizer = loop.model, loop.optimizer
        forward = "".join("        " + code_of(s).strip() + "\n" for s in loop.forward)
        objective = code_of(loop.objective) + (f" * {scale}" if scale else "")
        value = objective if objective.isidentifier() else "loss_value"
        aux = [o for o in outputs if o != objective]
        loss_fn = next(n for n in ("loss_fn", "compute_loss", "loss_of") if n not in set(names_in(*loop.forward).loaded))
        rngs = self._threaded_rngs(loop)
        differentiated = ", ".join([model, *rngs])
        if aux:
            returns = f"{objective}, ({', '.join(aux)},)"
            unpack = f"({value}, ({', '.join(aux)},)), step_grads = nnx.value_and_grad({loss_fn}, has_aux=True)" \
                     f"({differentiated})"
        else:
            returns = objective
            unpack = f"{value}, step_grads = nnx.value_and_grad({loss_fn})({differentiated})"
        results = [value if o == objective else o for o in outputs] or [value]
        accumulate = (
            f"@nnx.jit\n"
            f"def {names.accumulate}({', '.join([model, *rngs, names.grads, *([scale] if scale else []), *batch])}):\n"
            f"    def {loss_fn}({differentiated}):\n"
            f"{forward}"
            f"        return {returns}\n"
            f"\n"
            f"    {unpack}\n"
            f"    return {', '.join(results)}, jax.tree.map(jnp.add, {names.grads}, step_grads)\n"
        )
        apply = (
            f"@nnx.jit\n"
            f"def {names.apply}({model}, {optimizer}, {names.grads}):\n"
            f"    {optimizer}.update({model}, {names.grads})\n"
            f"    return jax.tree.map(jnp.zeros_like, {names.grads})  # the sum zeroed, for the steps after this one\n"
        )
        setup = (
            f"{names.accumulate}_fast = fast_partial({names.accumulate}, {', '.join([model, *rngs])})\n"
            f"{names.apply}_fast = fast_partial({names.apply}, {model}, {optimizer})\n"
            f"{names.grads} = jax.tree.map(jnp.zeros_like, nnx.state({model}, nnx.Param))  # torch's .grad, summed\n"
        )
        self.ctx.need_helper("fast_partial")
        self.ctx.training_steps += [names.accumulate, names.apply]
        blank = [cst.EmptyLine()] * (1 if self.scope.function_stack else 2)
        setup_statements = list(cst.parse_module(setup).body)
        setup_statements[0] = setup_statements[0].with_changes(leading_lines=blank)
        return [cst.parse_statement(accumulate).with_changes(leading_lines=blank),
                cst.parse_statement(apply).with_changes(leading_lines=blank), *setup_statements]

    def _accumulate_call(self, names: AccumulationNames, batch: list[str], outputs: list[str],
                         scale: str | None = None) -> cst.BaseStatement:
        args = ", ".join([names.grads, *([scale] if scale else []), *(self.batch_argument(b) for b in batch)])
        targets = ", ".join([*(outputs or ["_"]), names.grads])
        return cst.parse_statement(f"{targets} = {names.accumulate}_fast({args})\n")

    def _forward_span(self, body, backward: int, zero_grads: list[int]) -> tuple[int, list[cst.BaseStatement]]:
        """(the index of the first statement the step call replaces, the forward pass). The forward pass is what
        follows the last zero_grad() that precedes it, else the run of assignments before backward(); a
        zero_grad() between the forward pass and backward() (as common as before it) is skipped over. Leading
        statements that rebind a name before the rest reads it (`x = x.to(device)`, `y = y.long()`) stay in the
        loop: inside the loss function they would read a local not yet assigned."""
        before = [i for i in zero_grads if i < backward]
        leading = [i for i in before if any(j not in before for j in range(i + 1, backward))]
        start = max(leading) + 1 if leading else backward
        while not leading and start > 0 and (start - 1 in before or isinstance(
                small(body[start - 1]), (cst.Assign, cst.AugAssign, cst.AnnAssign))):
            start -= 1
        def forward_from(index: int) -> list[cst.BaseStatement]:
            return [body[i] for i in range(index, backward) if i not in before]

        while start < backward and _reads_before_rebinding(forward_from(start)):
            start += 1
        first = start
        while first - 1 in before:
            first -= 1
        return first, forward_from(start)

    def _forward_problem(self, forward: list[cst.BaseStatement]) -> str | None:
        for statement in forward:
            if not isinstance(small(statement), (cst.Assign, cst.AnnAssign)):
                return f"`{code_of(statement).strip()}` in the forward pass is not an assignment"
        if not forward:
            return "no forward computation before backward()"
        return None

    def _is_optimizer(self, statement: cst.Expr) -> bool:
        name = statement.value.func.value.value
        return any(info.name == name for info in self.ctx.optimizers.values())

    def _is_clip(self, statement: cst.BaseStatement) -> bool:
        """A clip_grad_norm_/clip_grad_value_ statement the optimizer's chain can take over."""
        expression = small(statement)
        return isinstance(expression, cst.Expr) and isinstance(expression.value, cst.Call) and \
            (self.ctx.qualified_name(expression.value.func) or "") in CLIP_FUNCTIONS \
            and _clip_transform(expression.value, self.ctx) is not None

    def _batch_arguments(self, original: cst.For, loop: TrainingLoop) -> list[str]:
        """Names the forward reads that the loop binds (the batch), in order of use."""
        read = names_in(*loop.forward).loaded
        assigned_in_forward = set(names_in(*loop.forward).assigned)
        bound_by_loop = set(names_in(original.target).loaded)
        bound_by_loop |= set(names_in(*original.body.body[:loop.first]).assigned)
        self.loops.last_batch = [n for n in read if n in bound_by_loop and n not in assigned_in_forward
                                 and n != loop.model]
        return self.loops.last_batch

    def _batches_converted_at_call(self, loop: TrainingLoop, batch: list[str]) -> None:
        """The step's call converts its batches (batch_argument): the forward it takes in reads them as they are,
        without the jnp.asarray that porter/convert/data_side.py put where they met the model."""
        loop.forward = [data_side.unwrap(s, set(batch)) for s in loop.forward]
        loop.objective = data_side.unwrap(loop.objective, set(batch))

    def _outputs(self, loop: TrainingLoop) -> list[str]:
        """Forward results the rest of the file reads (e.g. `loss` for logging)."""
        inside = names_in(*loop.forward, loop.objective).loaded_counts
        return [n for n in names_in(*loop.forward).assigned if self._reads.get(n, 0) > inside.get(n, 0)]

    def _train_step(self, name: str, loop: TrainingLoop, batch: list[str], outputs: list[str]):
        model, optimizer = loop.model, loop.optimizer
        forward = "".join("        " + code_of(s).strip() + "\n" for s in loop.forward)
        objective = code_of(loop.objective)
        value = objective if objective.isidentifier() else "loss_value"
        aux = [o for o in outputs if o != objective]
        # the forward may read a criterion called loss_fn (the DDP tutorial's): the inner function yields
        read = set(names_in(*loop.forward).loaded)
        loss_fn = next(n for n in ("loss_fn", "compute_loss", "loss_of") if n not in read)
        rngs = self._threaded_rngs(loop)
        differentiated = ", ".join([model, *rngs])
        if aux:
            returns = f"{objective}, ({', '.join(aux)},)"
            unpack = f"({value}, ({', '.join(aux)},)), grads = nnx.value_and_grad({loss_fn}, has_aux=True)" \
                     f"({differentiated})"
        else:
            returns = objective
            unpack = f"{value}, grads = nnx.value_and_grad({loss_fn})({differentiated})"
        results = [value if o == objective else o for o in outputs] or [value]
        source = (
            f"@nnx.jit\n"
            f"def {name}({', '.join([model, optimizer, *rngs, *batch])}):\n"
            f"    def {loss_fn}({differentiated}):\n"
            f"{forward}"
            f"        return {returns}\n"
            f"\n"
            f"    {unpack}\n"
            f"    {optimizer}.update({model}, grads)\n"
            f"    return {', '.join(results)}\n"
        )
        fast = f"{name}_fast = fast_partial({name}, {', '.join([model, optimizer, *rngs])})  # skips nnx.jit's " \
               "per-call graph walk\n"
        self.ctx.need_helper("fast_partial")
        self.ctx.training_steps.append(name)
        top_level = not self.scope.function_stack
        blank = [cst.EmptyLine()] * (2 if top_level else 1)
        return [cst.parse_statement(source).with_changes(leading_lines=blank),
                cst.parse_statement(fast).with_changes(leading_lines=blank)]

    def _threaded_rngs(self, loop: TrainingLoop) -> list[str]:
        """[the file's module-level Rngs] when the forward draws from it: a jitted step cannot advance it from
        inside (nnx: no mutation from another trace level), so the step and its loss function take it as an
        argument, which nnx.jit and nnx.value_and_grad update in place."""
        name = self.ctx.global_rngs
        draws = name is not None and any(m.findall(s, m.Call(func=m.Name(name))) for s in loop.forward)
        return [name] if draws else []

    def _note_step_calls(self, original: cst.For, loop: TrainingLoop) -> None:
        """The functions the jitted step's forward calls: one drawing from the module-level Rngs is PT042."""
        line, col = self.scope.position(original)
        self.ctx.step_calls += [(call.func.value, line, col) for s in loop.forward
                                for call in m.findall(s, m.Call(func=m.Name()))]

    def batch_argument(self, name: str) -> str:
        """How a batch variable is handed to the train step (as it is where another concern shards it)."""
        return name if self.loops.batches_as_they_are else f"jnp.asarray({name})"

    def _step_call(self, name: str, batch: list[str], outputs: list[str]) -> cst.SimpleStatementLine:
        args = ", ".join(self.batch_argument(b) for b in batch)
        if not outputs:
            return cst.parse_statement(f"{name}_fast({args})\n")
        return cst.parse_statement(f"{', '.join(outputs)} = {name}_fast({args})\n")

    def _unique_step_name(self) -> str:
        name = "train_step" if "train_step" not in self._step_names else f"train_step{len(self._step_names) + 1}"
        self._step_names.add(name)
        return name


def _scaler_keywords(call: cst.Call, qualified: str) -> str | None:
    """grad_scaler's keywords for a GradScaler(...) call ("enabled=..."), None for arguments it cannot take: the
    device (torch.amp's first argument) is dropped, JAX places arrays itself. A scaler for CUDA (torch.cuda.amp's,
    torch.amp's by default) turns itself off where CUDA is not available: so does the converted one, off a GPU."""
    keywords, device, enabled = [], "'cpu'" if qualified.startswith("torch.cpu") else "'cuda'", "True"
    for index, arg in enumerate(call.args):
        if arg.star:
            return None
        name = arg.keyword.value if arg.keyword else None
        if name == "device" or (name is None and index == 0 and qualified.startswith(("torch.amp", "torch.Grad"))):
            device = code_of(arg.value)
        elif name == "enabled":
            enabled = code_of(arg.value) if arg.value.lpar or type(arg.value) in (cst.Name, cst.Call) \
                else f"({code_of(arg.value)})"
        elif name in SCALER_KEYWORDS:
            keywords.append(f"{name}={code_of(arg.value)}")
        else:
            return None
    if device in ("'cpu'", '"cpu"'):
        return ", ".join([f"enabled={enabled}", *keywords])
    on_gpu = GPU_AVAILABLE if device in ("'cuda'", '"cuda"') else f"({device} != 'cuda' or {GPU_AVAILABLE})"
    return ", ".join([f"enabled={on_gpu}" if enabled == "True" else f"enabled={enabled} and {on_gpu}", *keywords])


def _lr_write(loop: cst.For) -> str | None:
    """OPT for `for g in OPT.param_groups: g['lr'] = value`, else None."""
    if not (m.matches(loop.iter, m.Attribute(value=m.Name(), attr=m.Name("param_groups")))
            and isinstance(loop.target, cst.Name) and loop.orelse is None and len(loop.body.body) == 1):
        return None
    statement = small(loop.body.body[0])
    if isinstance(statement, cst.Assign) and len(statement.targets) == 1 and m.matches(
            statement.targets[0].target, m.Subscript(value=m.Name(loop.target.value), slice=[m.SubscriptElement(
                m.Index(m.SimpleString("'lr'") | m.SimpleString('"lr"')))])) \
            and loop.target.value not in names_in(statement.value).loaded:
        return loop.iter.value.value
    return None


def _syncs_gradients(statement: cst.BaseStatement, model: str) -> bool:
    """`model.require_backward_grad_sync = ...` (DDP's switch, alone or under an `if`): JAX's step reduces the
    summed gradients once, so the switch has nothing to do."""
    if isinstance(statement, cst.If) and statement.orelse is None and isinstance(statement.body, cst.IndentedBlock):
        return all(_syncs_gradients(s, model) for s in statement.body.body)
    target = small(statement)
    return isinstance(target, cst.Assign) and len(target.targets) == 1 and m.matches(
        target.targets[0].target, m.Attribute(value=m.Name(model), attr=m.Name("require_backward_grad_sync")))


def _clip_transform(call: cst.Call, ctx) -> str | None:
    """The optax transform for a clip_grad_*_ call, from the optimizer rules' module when present."""
    try:
        from porter.convert.training_builders import clip_transform
    except ImportError:
        return None
    return clip_transform(call, ctx)


def _model_of_params(call: cst.Call) -> str | None:
    """`optim.SGD(net.parameters(), ...)` -> 'net'; parameter groups -> their common model (training_builders)."""
    try:
        from porter.convert.training_builders import model_of_params
    except ImportError:
        return None
    return model_of_params(call)


def _reads_before_rebinding(statements: list[cst.BaseStatement]) -> bool:
    """Whether a name is read before the statements assign it, and then assigned by them."""
    assigned, free = set(), set()
    for statement in statements:
        names = names_in(statement)
        free |= set(names.loaded) - assigned
        assigned |= set(names.assigned)
    return bool(free & assigned)


def stop_gradients(body: list[cst.BaseStatement]) -> list[cst.BaseStatement] | None:
    """A no_grad block's statements with each assigned value wrapped in the emitted `no_grad`; None when a
    statement is anything but an assignment (control flow, a call for its effect, `+=`)."""
    converted = []
    for statement in body:
        if not isinstance(statement, cst.SimpleStatementLine):
            return None
        parts = []
        for part in statement.body:
            if isinstance(part, (cst.Assign, cst.AnnAssign)) and part.value is not None:
                part = part.with_changes(value=cst.Call(cst.Name("no_grad"), [cst.Arg(part.value)]))
            elif not isinstance(part, cst.Pass):
                return None
            parts.append(part)
        converted.append(statement.with_changes(body=parts))
    return converted


def _zeroed_by_step(statements: list[cst.BaseStatement], names: AccumulationNames) -> list[cst.BaseStatement]:
    """`apply_fast(grads)` followed by the zeroing of the sum becomes `grads = apply_fast(grads)`: the apply step
    returns the sum zeroed. Zeroing outside a jitted step runs one operation per parameter (milliseconds a step
    on a small model); the zeroing's comments stay above the call."""
    fused: list[cst.BaseStatement] = []
    for statement in statements:
        if fused and _single(statement) == names.zeroing and _single(fused[-1]) == names.apply_call:
            comments = [line for line in statement.leading_lines if line.comment is not None]
            fused[-1] = cst.parse_statement(f"{names.grads} = {names.apply_call}\n").with_changes(
                leading_lines=[*fused[-1].leading_lines, *comments])
        else:
            fused.append(statement)
    return fused


def _single(statement: cst.BaseStatement) -> str | None:
    """The code of a line holding one small statement and no trailing comment, else None."""
    one = small(statement)
    if one is None or statement.trailing_whitespace.comment is not None:
        return None
    return code_of(one).strip()
