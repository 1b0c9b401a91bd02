"""Distributed training: torch.distributed, DDP and FSDP -> JAX's own runtime.

A torchrun/DDP script runs one process per GPU; each process builds the
model, wraps it, reads its share of every batch and averages gradients with
the others. The converted script is JAX's usual layout: one process per host
drives all of the host's devices, a device Mesh made current with
`jax.set_mesh` holds every device of every process, and one jitted step runs
on the global batch:

- `initialize_distributed()` (JAX's multi-process runtime, a no-op for one
  process) at the top of the file, before anything touches JAX;
  `init_process_group(...)` becomes the mesh: axis "data" for DDP, axes
  ("data", "fsdp") for FSDP (full sharding: data 1, fsdp all devices; hybrid:
  data over processes, fsdp over each host's devices);
- `DDP(model, ...)` -> `replicate_params(model)`, `FSDP(model, ...)` ->
  `shard_params(model)` (each variable split over "fsdp" along its largest
  divisible axis, annotated with nnx's `out_sharding`); `X.module` -> `X`;
- the batch of a converted training loop becomes the global batch before the
  step: `inputs = shard_batch(inputs, "data")`
  (jax.make_array_from_process_local_data), so the step jits with the
  batch split along the mesh and the parameters replicated or sharded, and
  everything the loop computes afterwards is global;
- `DistributedSampler` keeps torch's data order with one replica per
  process (`num_replicas=jax.process_count(), rank=jax.process_index()`)
  and its DataLoader reads batch_size x jax.local_device_count() samples: the
  union of the processes' k-th batches is the same contiguous chunk of the
  sampler's permutation as the union of torch's per-GPU k-th batches;
- `dist.all_reduce` of a metric goes (with a `/= world_size` right after it):
  the values are already global; `get_rank()` -> `jax.process_index()`,
  `get_world_size()` -> `jax.device_count()`; reads of torchrun's LOCAL_RANK/RANK/
  WORLD_SIZE stay reads (a single process sees their defaults, as the original
  does), `os.environ["RANK"]` falls back to JAX's value; `barrier()` -> `multihost_utils.sync_global_devices`;
- `torch.save` -> `save_checkpoint` (Orbax, written by every process: a save
  under a rank-0 test moves out of it); `X.state_dict()` -> the pure dict of `nnx.state(X, ...)`
  (porter/convert/checkpoints.py: load_checkpoint reads it back).

What is not understood (process groups, no_sync, pipeline and tensor
parallelism, other collectives) is left unchanged and reported (PT023).
Everything here applies only to files that use torch.distributed or
torch.nn.parallel: other files convert exactly as they do without this concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst
import libcst.matchers as m

from porter.convert import checkpoints
from porter.convert.context import code_of
from porter.convert.passes.concerns import Final
from porter.convert.passes.training import small
from porter.convert.transforms import expr, keyword_arg
from porter.convert.traverse import find_all

DIST = "torch.distributed."
DDP = ("torch.nn.parallel.DistributedDataParallel", "torch.nn.parallel.distributed.DistributedDataParallel",
       # single-process DataParallel is JAX's own model already: the model replicated, the batch split
       "torch.nn.DataParallel", "torch.nn.parallel.DataParallel", "torch.nn.parallel.data_parallel.DataParallel")
FSDP = ("torch.distributed.fsdp.FullyShardedDataParallel",
        "torch.distributed.fsdp.fully_sharded_data_parallel.FullyShardedDataParallel")
SAMPLER = ("torch.utils.data.distributed.DistributedSampler", "torch.utils.data.DistributedSampler")
DATALOADER = ("torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader")
SPAWN = ("torch.multiprocessing.spawn", "torch.multiprocessing.spawn.spawn")
SAVE = ("torch.save", "torch.serialization.save")
SYNC_BN = ("torch.nn.SyncBatchNorm.convert_sync_batchnorm",
           "torch.nn.modules.batchnorm.SyncBatchNorm.convert_sync_batchnorm")
SET_DEVICE = ("torch.cuda.set_device",)
DEVICE_COUNT = ("torch.cuda.device_count",)

# calls whose arguments this pass rewrites or drops itself: the rules leave what is inside them alone
OWN_CALLS = ("torch.distributed.init_process_group", "torch.distributed.all_reduce", *DDP, *FSDP, *SPAWN, *SYNC_BN)

SIMPLE = {  # torch.distributed.X() -> expression, when called without arguments
    "get_rank": "jax.process_index()",
    "get_world_size": "jax.device_count()",
    "get_node_local_rank": "0",
    "is_available": "True",
    "barrier": 'multihost_utils.sync_global_devices("barrier")',
    "destroy_process_group": "jax.distributed.shutdown()",
}

# environment variables torchrun sets -> JAX's value (as an int, as a string). A read stays a read: a
# single process without a launcher sees what the original saw (`os.environ.get("RANK", -1)` is -1), and a
# torchrun launch of the converted script sets them as initialize_distributed uses them. Only
# `os.environ[X]`, which raises without a launcher, falls back to JAX's value.
ENVIRONMENT = {
    "LOCAL_RANK": ("0", '"0"'),
    "RANK": ("jax.process_index()", "str(jax.process_index())"),
    "WORLD_SIZE": ("jax.device_count()", "str(jax.device_count())"),
    "LOCAL_WORLD_SIZE": ("jax.local_device_count()", "str(jax.local_device_count())"),
}

# DDP(...) keywords: dropped as they are, dropped with a warning (performance knobs XLA owns)
DDP_DROPPED = {"device_ids", "output_device"}
DDP_KNOBS = {"bucket_cap_mb", "gradient_as_bucket_view", "static_graph", "find_unused_parameters",
             "broadcast_buffers", "init_sync", "check_reduction"}
FSDP_DROPPED = {"device_id", "sync_module_states", "use_orig_params"}
FSDP_KNOBS = {"auto_wrap_policy", "backward_prefetch", "forward_prefetch", "limit_all_gathers"}

AUTO = "axis_types=(jax.sharding.AxisType.Auto,)"
MESHES = {  # wrapper kind -> (mesh shape, axis names, axis types, batch axes)
    "ddp": ("(jax.device_count(),)", '("data",)', AUTO, '"data"'),
    "fsdp": ("(1, jax.device_count())", '("data", "fsdp")', AUTO + " * 2", '("data", "fsdp")'),
    "hybrid": ("(jax.process_count(), jax.local_device_count())", '("data", "fsdp")', AUTO + " * 2",
               '("data", "fsdp")'),
}

UNSUPPORTED_HINTS = {  # torch.distributed family -> what to say
    "new_group": "custom process groups have no JAX counterpart: name mesh axes and reduce over them "
                 "(jax.lax.psum(x, 'axis') inside jax.shard_map)",
    "new_subgroups": "custom process groups have no JAX counterpart: name mesh axes instead",
    "pipelining": "pipeline parallelism is not converted: split the model by hand (stages on mesh axes, "
                  "or jax.lax.ppermute between stages inside jax.shard_map)",
    "pipeline": "pipeline parallelism is not converted: split the model by hand",
    "tensor": "DTensor / tensor parallelism is not converted: annotate the weights with a 'model' mesh axis "
              "(nnx.with_partitioning) instead",
    "device_mesh": "init_device_mesh is not converted: build the mesh with jax.make_mesh",
    "rpc": "torch.distributed.rpc has no JAX counterpart",
    "checkpoint": "torch.distributed.checkpoint is not converted: Orbax saves and restores sharded states "
                  "(ocp.StandardCheckpointer)",
    "algorithms": "DDP communication hooks and join contexts are not converted: XLA schedules the "
                  "gradient reduction itself",
    "fsdp": "FSDP2's fully_shard is not converted: shard_params(model) shards the whole model once "
            "(FullyShardedDataParallel is converted)",
    "is_initialized": "is_initialized() is not converted: JAX's runtime starts at the top of the converted file "
                      "(initialize_distributed) and a mesh is current once init_process_group's replacement ran; "
                      "decide the test by hand",
}

# methods of a DDP/FSDP-wrapped model that have no counterpart
WRAPPER_METHODS = {
    "no_sync": "no_sync() (gradient accumulation without reduction) is not converted: accumulate in the step "
               "(optax.MultiSteps) and drop the context",
    "register_comm_hook": "DDP communication hooks are not converted: XLA schedules the gradient reduction",
    "join": "DDP's join() (uneven inputs) is not converted: give every process the same number of batches",
}


def _normal(qualified: str | None) -> str:
    return (qualified or "").replace(".distributed_c10d.", ".")


def _keyword(call: cst.Call, name: str) -> cst.BaseExpression | None:
    return next((a.value for a in call.args if a.keyword and a.keyword.value == name), None)


def _positional(call: cst.Call) -> list[cst.BaseExpression]:
    return [a.value for a in call.args if a.keyword is None and not a.star]


def _string(node: cst.BaseExpression | None) -> str | None:
    return node.evaluated_value if isinstance(node, cst.SimpleString) else None


def _is_world_size_name(node: cst.BaseExpression, names: set[str]) -> bool:
    return isinstance(node, cst.Name) and (node.value in names or "world_size" in node.value.lower())


def _parenthesized(node: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(node, (cst.Name, cst.Integer, cst.Attribute, cst.Call, cst.Subscript)) or node.lpar:
        return node
    return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])


@dataclass
class _State:
    """What the distributed concern knows about the file (filled by after_visit_Module) and where it is in it."""

    active: bool = False  # the file uses torch.distributed / torch.nn.parallel: nothing changes otherwise
    kind: str | None = None  # "ddp", "fsdp" or "hybrid": the mesh
    wrapped: set[str] = field(default_factory=set)  # names bound to DDP(...)/FSDP(...)
    models: set[str] = field(default_factory=set)  # those and the models they wrap
    samplers: set[str] = field(default_factory=set)
    world_sizes: set[str] = field(default_factory=set)
    rank_flags: set[str] = field(default_factory=set)  # `is_main = rank == 0`
    divisions: set[int] = field(default_factory=set)  # `x /= world_size` right after all_reduce(x): removed too
    means: set[int] = field(default_factory=set)  # the all_reduce statements those follow
    elifs: set[int] = field(default_factory=set)
    policies: set[int] = field(default_factory=set)  # `policy = partial(size_based_auto_wrap_policy, ...)`
    has_init: bool = False
    mesh_placed: bool = False
    words: set[str] = field(default_factory=set)  # trigger words beyond the torch names
    int_env: set[int] = field(default_factory=set)  # environment reads inside int(...)
    reported_env: set[str] = field(default_factory=set)
    rank0: list = field(default_factory=list)  # per enclosing if: its body's statements when it tests rank 0
    direct_rank0_child: bool = False  # the statement being converted sits right in a rank-0 if
    hoisted: set[int] = field(default_factory=set)  # converted saves to move out of their rank-0 test
    summed: set[str] = field(default_factory=set)  # optimizers whose loop's loss sums over the batch
    summed_statements: set[int] = field(default_factory=set)  # the statements of those loops
    orphans: dict = field(default_factory=dict)  # id of a removed statement -> its blank lines and comments
    converted: dict = field(default_factory=dict)  # id of an original statement -> what it became
    stores: set[int] = field(default_factory=set)  # assignment and del targets
    world_counts: set[int] = field(default_factory=set)  # torch.cuda.device_count() calls giving spawn's nprocs


def _calls_a_function(node: cst.CSTNode, names: set[str]) -> bool:
    """A call of one of the functions `names` (by its plain name) in `node`."""
    return any(type(c.func) is cst.Name and c.func.value in names for c in find_all(node, cst.Call))


@dataclass
class _Found:
    """What the module analysis reads, from one walk of the module (each m.findall over the whole
    module was a matcher visitor of its own: most of the time a large file took)."""

    calls: list[cst.Call]
    assigns_to_a_name: list[cst.Assign]  # `name = value`, one target
    loops: list[cst.For]
    blocks: list[cst.IndentedBlock]
    by_target: dict[str, list[cst.SimpleStatementLine]]  # lines that are one `name = value` alone

    @classmethod
    def of(cls, node: cst.Module) -> _Found:
        nodes = find_all(node, (cst.Call, cst.Assign, cst.For, cst.IndentedBlock, cst.SimpleStatementLine))
        assigns = [a for a in nodes if type(a) is cst.Assign and len(a.targets) == 1
                   and type(a.targets[0].target) is cst.Name]
        simple = {id(a) for a in assigns}
        by_target: dict[str, list[cst.SimpleStatementLine]] = {}
        for line in nodes:
            if type(line) is cst.SimpleStatementLine and len(line.body) == 1 and id(line.body[0]) in simple:
                by_target.setdefault(line.body[0].targets[0].target.value, []).append(line)
        return cls([c for c in nodes if type(c) is cst.Call], assigns, [f for f in nodes if type(f) is cst.For],
                   [b for b in nodes if type(b) is cst.IndentedBlock], by_target)

    def assignments_to(self, name: str) -> list[cst.SimpleStatementLine]:
        return self.by_target.get(name, [])


class Distributed:
    """The distributed concern (passes/concerns.py): it wraps the training loops concern and the calls and
    modules rewrite (`scope`)."""

    TRIGGER_WORDS = frozenset({"environ", "getenv", "module", "state_dict"})

    def __init__(self, scope) -> None:
        self.scope = scope
        self.ctx, self.report, self.record, self.mentions = scope.ctx, scope.report, scope.record, scope.mentions
        self.dist = _State()
        scope.training_loops.adapters.append(self._shard_batches)

    # analysis -------------------------------------------------------------------
    def after_visit_Module(self, node: cst.Module) -> None:  # after the training loops' analysis (ctx.optimizers)
        uses = [v for v in self.ctx.torch_aliases.values() if v.startswith((DIST, "torch.nn.parallel"))]
        if not uses and not any(self.mentions(w) for w in ("distributed", "parallel", "DataParallel")):
            return
        kinds = set()
        found = _Found.of(node)
        for call in found.calls:
            qualified = _normal(self.ctx.qualified_name(call.func))
            if qualified.startswith((DIST, "torch.nn.parallel")) or qualified in DDP:
                self.dist.active = True
            if qualified == "torch.distributed.init_process_group":
                self.dist.has_init = True
            if qualified in DDP:
                kinds.add("ddp")
            elif qualified in FSDP:
                kinds.add(self._fsdp_kind(call))
            if qualified in (*DDP, *FSDP) and call.args:
                self.dist.models.add(code_of(call.args[0].value))
                policy = _keyword(call, "auto_wrap_policy")
                if isinstance(policy, cst.Name):
                    self.dist.words.add(policy.value)
                    self.dist.policies |= {id(s) for s in found.assignments_to(policy.value)}
        if not self.dist.active:
            return
        self.scope.training_loops.converts_checkpoints = False  # torch.save -> save_checkpoint (Orbax), written by every process
        self.scope.training_loops.batches_as_they_are = True  # sharded by shard_batch before the step's call
        self.dist.kind = "hybrid" if "hybrid" in kinds else "fsdp" if "fsdp" in kinds else "ddp"
        for assign in found.assigns_to_a_name:
            target = assign.targets[0].target.value
            value = assign.value
            qualified = _normal(self.ctx.qualified_name(value.func)) if isinstance(value, cst.Call) else ""
            if qualified in (*DDP, *FSDP):
                self.dist.wrapped.add(target)
            elif qualified in SAMPLER:
                self.dist.samplers.add(target)
            elif qualified == "torch.distributed.get_world_size" or self._env_name(value) == "WORLD_SIZE":
                self.dist.world_sizes.add(target)
            elif m.matches(value, m.Comparison()) and self._is_rank0_test(value):
                self.dist.rank_flags.add(target)
        self.dist.models |= self.dist.wrapped
        self._find_summed_losses(found)
        self._find_spawned_world_sizes(found)
        for block in [node, *found.blocks]:
            body = list(block.body)
            for first, second in zip(body, body[1:]):
                reduced = self._reduced_name(first)
                if reduced and self._divides(second, reduced) and id(first) not in self.dist.summed_statements:
                    self.dist.divisions.add(id(second))
                    self.dist.means.add(id(first))
                    self.dist.words.add(reduced)
        self.dist.words |= self.dist.models | self.dist.rank_flags | {i.name for i in self.ctx.optimizers.values()}

    def _find_summed_losses(self, found: _Found) -> None:
        """Optimizers stepped in a loop whose loss has reduction="sum" (a call's keyword or its criterion's)."""
        def sums(call: cst.Call) -> bool:
            return _string(_keyword(call, "reduction")) == "sum"
        criteria = {a.targets[0].target.value for a in found.assigns_to_a_name
                    if isinstance(a.value, cst.Call) and sums(a.value)}
        optimizers = {i.name for i in self.ctx.optimizers.values()}
        for loop in found.loops:
            calls = find_all(loop.body, cst.Call)
            stepped = {c.func.value.value for c in calls if m.matches(c.func, m.Attribute(
                value=m.Name(), attr=m.Name("step")))} & optimizers
            if stepped and any(sums(c) or (isinstance(c.func, cst.Name) and c.func.value in criteria) for c in calls):
                self.dist.summed |= stepped
                self.dist.summed_statements |= {id(s) for s in find_all(loop.body, cst.SimpleStatementLine)}

    def _find_spawned_world_sizes(self, found: _Found) -> None:
        """`n = torch.cuda.device_count(); mp.spawn(fn, nprocs=n)`: n counts the processes, that is the devices."""
        names = set()
        for call in found.calls:
            if _normal(self.ctx.qualified_name(call.func)) in SPAWN:
                positional = _positional(call)
                nprocs = _keyword(call, "nprocs") or (positional[2] if len(positional) > 2 else None)
                if isinstance(nprocs, cst.Name):
                    names.add(nprocs.value)
        for name in names:
            for statement in found.assignments_to(name):
                value = statement.body[0].value
                if isinstance(value, cst.Call) and _normal(self.ctx.qualified_name(value.func)) in DEVICE_COUNT:
                    self.dist.world_counts.add(id(value))

    def trigger_words(self):
        return self.dist.words

    def trigger_state(self):
        return len(self.dist.words)

    def _fsdp_kind(self, call: cst.Call) -> str:
        strategy = _keyword(call, "sharding_strategy")
        name = code_of(strategy).rsplit(".", 1)[-1] if strategy is not None else "FULL_SHARD"
        if name in ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2"):
            return "hybrid"
        return "ddp" if name == "NO_SHARD" else "fsdp"

    def _reduced_name(self, statement: cst.CSTNode) -> str | None:
        """`dist.all_reduce(x, op=SUM)` as a statement -> 'x'."""
        call = small(statement)
        if not (isinstance(call, cst.Expr) and isinstance(call.value, cst.Call)):
            return None
        call = call.value
        if _normal(self.ctx.qualified_name(call.func)) != "torch.distributed.all_reduce":
            return None
        args = _positional(call)
        op = _keyword(call, "op") or (args[1] if len(args) > 1 else None)
        if args and isinstance(args[0], cst.Name) and (op is None or code_of(op).endswith(".SUM")):
            return args[0].value
        return None

    def _divides(self, statement: cst.CSTNode, name: str) -> bool:
        """`x /= world_size` or `x = x / world_size`."""
        line = small(statement)
        if m.matches(line, m.AugAssign(target=m.Name(name), operator=m.DivideAssign())):
            divisor = line.value
        elif m.matches(line, m.Assign(targets=[m.AssignTarget(m.Name(name))],
                                      value=m.BinaryOperation(left=m.Name(name), operator=m.Divide()))):
            divisor = line.value.right
        else:
            return False
        return _is_world_size_name(divisor, self.dist.world_sizes) or \
            _normal(self.ctx.qualified_name(divisor.func) if isinstance(divisor, cst.Call) else None) \
            == "torch.distributed.get_world_size"

    def _is_rank0_test(self, test: cst.BaseExpression) -> bool:
        if isinstance(test, cst.Name):
            return test.value in self.dist.rank_flags
        if not (isinstance(test, cst.Comparison) and len(test.comparisons) == 1
                and isinstance(test.comparisons[0].operator, cst.Equal)):
            return False
        left, right = test.left, test.comparisons[0].comparator
        if m.matches(left, m.Integer("0")):
            left, right = right, left
        if not m.matches(right, m.Integer("0")):
            return False
        if isinstance(left, cst.Name):
            return "rank" in left.value.lower()
        if isinstance(left, cst.Call):
            return _normal(self.ctx.qualified_name(left.func)) == "torch.distributed.get_rank"
        return False

    def _env_name(self, node: cst.BaseExpression) -> str | None:
        """The torchrun variable an environment read names: os.environ["X"], os.environ.get("X", d), os.getenv("X")."""
        if isinstance(node, cst.Subscript) and code_of(node.value) in ("os.environ", "environ") \
                and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Index):
            name = _string(node.slice[0].slice.value)
        elif isinstance(node, cst.Call) and code_of(node.func) in ("os.environ.get", "environ.get", "os.getenv",
                                                                   "getenv") and node.args:
            name = _string(node.args[0].value)
        else:
            return None
        return name if name in ENVIRONMENT else None

    # calls ----------------------------------------------------------------------
    def after_visit_Call(self, node: cst.Call) -> None:
        if not self.dist.active:
            return
        if _normal(self.ctx.qualified_name(node.func)) in OWN_CALLS:
            self.scope.kept_depth += 1  # the arguments are this pass's business
        if m.matches(node.func, m.Name("int")) and len(node.args) == 1 and self._env_name(node.args[0].value):
            self.dist.int_env.add(id(node.args[0].value))

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call):
        """Before the other concerns: the calls this concern converts itself end the leave (Final)."""
        if not self.dist.active:
            return updated_node
        qualified = _normal(self.ctx.qualified_name(original_node.func))
        if qualified in OWN_CALLS:
            self.scope.kept_depth -= 1
        if qualified in SAMPLER or qualified in DATALOADER:
            return updated_node  # kept as torch's data loading by the calls rewrite, then after_leave_Call
        if qualified in DDP or qualified in FSDP:
            return Final(self._wrap(qualified, original_node, updated_node))
        if qualified in SPAWN:
            return Final(self._spawn(original_node, updated_node))
        if qualified in SAVE:
            return Final(self._save(original_node, updated_node))
        if qualified in SYNC_BN and len(updated_node.args) == 1:
            self.report("PT020", original_node, "SyncBatchNorm: the converted step computes batch statistics over "
                                                "the global batch already; the conversion is dropped")
            return Final(self._changed("sync-batchnorm", original_node, updated_node.args[0].value))
        if qualified in DEVICE_COUNT and id(original_node) in self.dist.world_counts:
            self.report("PT020", original_node, "torch.cuda.device_count() gives the number of processes "
                                                "mp.spawn starts, one per GPU: the world size, jax.device_count()")
            return Final(self._changed("device-count", original_node, expr("jax.device_count()")))
        if qualified in DEVICE_COUNT:
            return Final(self._changed("device-count", original_node, expr("jax.local_device_count()")))
        if qualified in SET_DEVICE or qualified in ("torch.distributed.init_process_group",
                                                    "torch.distributed.all_reduce"):
            if id(original_node) not in self.scope.statement_calls:
                self.report("PT023", original_node, f"{qualified} is converted as a statement of its own only; "
                                                    "left unchanged")
            return Final(updated_node)  # statements: leave_SimpleStatementLine
        if qualified.startswith(DIST):
            return Final(self._dist_call(qualified, original_node, updated_node))
        name = self._env_name(original_node)
        if name:
            self._report_env(name, original_node, "kept: a launcher sets it, a single process reads the default "
                                                  "as the original does")
            return Final(updated_node)
        if m.matches(updated_node.func, m.Attribute(value=m.Name(), attr=m.Name("state_dict"))) \
                and not updated_node.args and updated_node.func.value.value in self._state_owners():
            owner = updated_node.func.value.value  # `ddp_model.module.state_dict()`: .module went already
            new = checkpoints.orbax_state(owner)
            return Final(self._changed("state-dict", original_node, new))
        if m.matches(original_node.func, m.Attribute(value=m.Name(), attr=m.Name())) \
                and original_node.func.value.value in self.dist.models \
                and original_node.func.attr.value in WRAPPER_METHODS:
            self.report("PT023", original_node, f"{WRAPPER_METHODS[original_node.func.attr.value]}; left unchanged")
            return Final(updated_node)
        return updated_node

    def after_leave_Call(self, original_node: cst.Call, result):
        """After the other concerns: samplers and loaders adapted, a summed loss's optimizer averaging."""
        if not self.dist.active:
            return result
        qualified = _normal(self.ctx.qualified_name(original_node.func))
        if qualified in SAMPLER:
            return self._sampler(original_node, result)
        if qualified in DATALOADER:
            return self._loader(original_node, result)
        if qualified.startswith("torch.optim.") and m.matches(result, m.Call(
                func=m.Attribute(value=m.Name("nnx"), attr=m.Name("Optimizer")))) and len(result.args) >= 2:
            info = self.ctx.optimizers.get(id(original_node))
            if info is not None and info.name in self.dist.summed and info.model in self.dist.models:
                return self._average_gradients(original_node, result)
        return result

    def _average_gradients(self, original: cst.Call, optimizer: cst.Call) -> cst.Call:
        """DDP/FSDP average the ranks' gradients. With a loss summed over the batch, the global batch's
        gradient is world-size times that average: the optimizer scales it back first."""
        args = list(optimizer.args)
        args[1] = args[1].with_changes(value=expr(
            f"optax.chain(optax.scale(1 / jax.device_count()), {code_of(args[1].value)})"))
        self.report("PT024", original, "the loss sums over the batch (reduction='sum') and DDP/FSDP average the "
                                       "ranks' gradients: over the global batch the gradient is jax.device_count() "
                                       "times that average, so the optimizer divides it first")
        return self._changed("ddp-gradient-average", original, optimizer.with_changes(args=args))

    def _state_owners(self) -> set[str]:
        return self.dist.models | {i.name for i in self.ctx.optimizers.values()}

    def _changed(self, rule: str, original: cst.CSTNode, new: cst.CSTNode) -> cst.CSTNode:
        self.record(rule, original, new)
        return new

    def _dist_call(self, qualified: str, original: cst.Call, updated: cst.Call):
        name = qualified[len(DIST):]
        if name in SIMPLE and not original.args:
            return self._changed(f"dist-{name}", original, expr(SIMPLE[name]))
        family = name.split(".")[0]
        hint = UNSUPPORTED_HINTS.get(family) or (
            f"{qualified} with a process group is not converted" if original.args and name in SIMPLE else
            f"{qualified}: only all_reduce of metrics (SUM or AVG) is converted among the collectives; "
            "exchange host values with jax.experimental.multihost_utils (process_allgather, "
            "broadcast_one_to_all), device values inside the jitted step")
        self.report("PT023", original, f"{hint}; left unchanged")
        return updated

    def _env(self, name: str, original: cst.Subscript):
        """`os.environ["RANK"]` raises without a launcher: the read gets JAX's value as its default."""
        as_int, as_str = ENVIRONMENT[name]
        default = as_int if id(original) in self.dist.int_env else as_str
        new = expr(f"{code_of(original.value)}.get({code_of(original.slice[0].slice.value)}, {default})")
        meaning = {"LOCAL_RANK": "one JAX process drives all of its host's devices, so its local rank is 0",
                   "RANK": "the rank of a process is jax.process_index()",
                   "WORLD_SIZE": "torchrun's world size counts devices (one process each): jax.device_count()",
                   "LOCAL_WORLD_SIZE": "the devices of this host: jax.local_device_count()"}[name]
        self._report_env(name, original, f"read where a launcher set it, else {default} ({meaning})")
        return self._changed("dist-environment", original, new)

    def _report_env(self, name: str, original: cst.BaseExpression, what: str) -> None:
        if name not in self.dist.reported_env:
            self.dist.reported_env.add(name)
            self.report("PT020", original, f"{name} from torchrun's environment: {what}")

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self.dist.stores.add(id(node.target))  # `os.environ["RANK"] = ...` is a write: left alone

    def visit_Del(self, node: cst.Del) -> None:
        self.dist.stores.add(id(node.target))

    def leave_Subscript(self, original_node: cst.Subscript, updated_node: cst.Subscript):
        name = self._env_name(original_node) if self.dist.active and id(original_node) not in self.dist.stores \
            else None
        if name:
            return self._env(name, original_node)
        return updated_node

    def after_leave_Attribute(self, original_node: cst.Attribute, updated: cst.Attribute):
        if self.dist.active and m.matches(original_node, m.Attribute(value=m.Name(), attr=m.Name("module"))) \
                and original_node.value.value in self.dist.wrapped and isinstance(updated, cst.Attribute):
            return self._changed("ddp-module", original_node, updated.value)
        return updated

    # DDP / FSDP -------------------------------------------------------------------
    def _wrap(self, qualified: str, original: cst.Call, updated: cst.Call):
        fsdp = qualified in FSDP
        kind = qualified.rsplit(".", 1)[-1]
        positional = _positional(original)
        if not positional or len(positional) > (1 if fsdp else 2) or any(a.star for a in original.args):
            self.report("PT023", original, f"{kind}: only the module positionally and keyword options are "
                                           "converted; left unchanged")
            return updated
        dropped, knobs = (FSDP_DROPPED, FSDP_KNOBS) if fsdp else (DDP_DROPPED, DDP_KNOBS)
        helper = "shard_params" if fsdp else "replicate_params"
        for arg in original.args[1:]:
            if arg.keyword is None:
                continue  # DDP's device_ids
            key = arg.keyword.value
            if key in dropped:
                continue
            if key in knobs:
                what = "its auto-wrap policy (which submodules FSDP flattens and gathers as one unit)" \
                    if key == "auto_wrap_policy" else f"{key}={code_of(arg.value)}"
                self.report("PT022", arg, f"{kind}: {what} is dropped: every variable is sharded on its own and "
                                          "XLA schedules the gathers and reductions")
            elif fsdp and key == "sharding_strategy":
                strategy = code_of(arg.value).rsplit(".", 1)[-1]
                if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "_HYBRID_SHARD_ZERO2",
                                    "NO_SHARD"):
                    self.report("PT023", arg, f"{kind}: sharding_strategy={code_of(arg.value)} is not understood; "
                                              "left unchanged")
                    return updated
                if strategy == "NO_SHARD":
                    helper = "replicate_params"
                if strategy in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2"):
                    self.report("PT020", arg, f"{kind}: {strategy} keeps whole parameters between forward and "
                                              "backward; the converted parameters stay sharded (less memory, "
                                              "same numbers)")
            elif fsdp and key == "cpu_offload" and m.matches(arg.value, m.Call(args=[m.Arg(
                    keyword=m.Name("offload_params"), value=m.Name("False"))])):
                continue
            else:
                self.report("PT023", arg, f"{kind}: {key}= is not converted (process groups, mixed precision, "
                                          "offloading, ignored modules have no direct counterpart); left unchanged")
                return updated
        if not fsdp:
            self._batch_norm_warning(original)
        self.ctx.need_helper(helper)
        new = cst.Call(cst.Name(helper), [cst.Arg(updated.args[0].value)])
        return self._changed("ddp" if not fsdp else "fsdp", original, new)

    def _batch_norm_warning(self, original: cst.Call) -> None:
        layers = {q for attrs in self.ctx.layer_attributes.values() for q in attrs.values()}
        if any("BatchNorm" in q and "SyncBatchNorm" not in q for q in layers) and not self.mentions("SyncBatchNorm"):
            self.report("PT024", original, "BatchNorm under DDP normalises with each device's batch statistics; "
                                           "the converted step uses the global batch's (as SyncBatchNorm does)")

    # data loading ---------------------------------------------------------------------
    def _sampler(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        """One replica per process: the process's share of the permutation, loaded for all its devices."""
        values = {"num_replicas": "jax.process_count()", "rank": "jax.process_index()"}
        args = list(updated.args)
        for position, key in ((1, "num_replicas"), (2, "rank")):
            value = expr(values[key])
            index = next((i for i, a in enumerate(args) if a.keyword and a.keyword.value == key), None)
            if index is None and len([a for a in args if a.keyword is None]) > position:
                index = [i for i, a in enumerate(args) if a.keyword is None][position]
            if index is None:
                args.append(keyword_arg(key, value))
            else:
                args[index] = args[index].with_changes(value=value)
        new = updated.with_changes(args=_with_commas(args))
        self.report("PT020", original, "DistributedSampler: one replica per JAX process (each process loads the "
                                       "rows of all its devices), torch's permutation and seed kept")
        return self._changed("distributed-sampler", original, new)

    def _loader(self, original: cst.Call, updated: cst.Call) -> cst.Call:
        sampler = _keyword(original, "sampler")
        distributed = (isinstance(sampler, cst.Name) and sampler.value in self.dist.samplers) or \
            (isinstance(sampler, cst.Call) and _normal(self.ctx.qualified_name(sampler.func)) in SAMPLER)
        if not distributed:
            return updated
        args = list(updated.args)
        index = next((i for i, a in enumerate(args) if a.keyword and a.keyword.value == "batch_size"), None)
        if index is None and len([a for a in args if a.keyword is None]) > 1:
            index = [i for i, a in enumerate(args) if a.keyword is None][1]
        if index is None:
            args.append(keyword_arg("batch_size", expr("jax.local_device_count()")))
        else:
            size = args[index].value
            args[index] = args[index].with_changes(value=cst.BinaryOperation(
                _parenthesized(size), cst.Multiply(), expr("jax.local_device_count()")))
        self.report("PT020", original, "DataLoader: torch's batch_size was per GPU process; a JAX process loads "
                                       "it for each of its devices (a last, smaller batch must still divide "
                                       "among them: drop_last=True if the dataset is not a multiple of the "
                                       "global batch)")
        return self._changed("distributed-loader", original, updated.with_changes(args=_with_commas(args)))

    def _spawn(self, original: cst.Call, updated: cst.Call):
        positional = _positional(original)
        spawn_args = _keyword(original, "args") or (positional[1] if len(positional) > 1 else None)
        if not positional:
            self.report("PT023", original, "torch.multiprocessing.spawn without a function; left unchanged")
            return updated
        call_args = [cst.Arg(expr("jax.process_index()"))]
        if isinstance(spawn_args, cst.Tuple):
            call_args += [cst.Arg(e.value) for e in spawn_args.elements]
        elif spawn_args is not None:
            call_args.append(cst.Arg(spawn_args, star="*"))
        self.report("PT020", original, "torch.multiprocessing.spawn: one process per host drives all of its "
                                       "devices, so the function runs once, with the process index as its rank")
        new = cst.Call(positional[0], _with_commas(call_args))
        if isinstance(positional[0], cst.Name) and positional[0].value in self.ctx.rngs_functions:
            new = self.scope.add_rngs(original, new)  # the function builds layers: it takes rngs now
        return self._changed("spawn", original, new)

    def _save(self, original: cst.Call, updated: cst.Call):
        positional = _positional(updated)
        obj = positional[0] if positional else _keyword(updated, "obj")
        path = positional[1] if len(positional) > 1 else _keyword(updated, "f")
        if obj is None or path is None or len(updated.args) > 2:
            self.report("PT023", original, "torch.save with options is not converted; left unchanged")
            return updated
        if sum(1 for f in self.dist.rank0 if f is not None) and not self.dist.direct_rank0_child:
            self.report("PT024", original, "save_checkpoint must run on every process (Orbax coordinates them); "
                                           "this one sits under a rank test: move it out by hand")
        self.ctx.need_helper("save_checkpoint")
        return self._changed("orbax-save", original, cst.Call(cst.Name("save_checkpoint"),
                                                               _with_commas([cst.Arg(path), cst.Arg(obj)])))

    # statements ---------------------------------------------------------------------
    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> None:
        frame = self.dist.rank0[-1] if self.dist.rank0 else None
        self.dist.direct_rank0_child = frame is not None and id(node) in frame
        if self.dist.active and id(node) in self.dist.policies:
            self.scope.kept_depth += 1

    def leave_SimpleStatementLine(self, original_node, updated_node):
        if not self.dist.active:
            return updated_node
        if id(original_node) in self.dist.policies:
            self.scope.kept_depth -= 1
            self.record("fsdp-policy", original_node, cst.Pass())
            return Final(self._remove(original_node))
        if id(original_node) in self.dist.divisions:
            self.record("all-reduce-mean", original_node, cst.Pass())
            return Final(self._remove(original_node))
        call = _statement_call(original_node)
        qualified = _normal(self.ctx.qualified_name(call.func)) if call is not None else ""
        if qualified == "torch.distributed.init_process_group":
            return Final(self._mesh(original_node, updated_node, replace=True))
        if qualified in SET_DEVICE:
            self.record("set-device", original_node, cst.Pass())
            return Final(self._remove(original_node))
        if qualified == "torch.distributed.all_reduce":
            return Final(self._all_reduce(original_node, call, updated_node))
        return updated_node

    def after_leave_SimpleStatementLine(self, original_node, updated):
        if not self.dist.active:
            return updated
        statement = small(original_node)
        if isinstance(updated, cst.SimpleStatementLine) and _self_assignment(small(updated)) \
                and not _self_assignment(statement):
            self.record("self-assignment", original_node, cst.Pass())  # `model = model.cuda()` once placement went
            return self._remove(original_node)
        if isinstance(updated, cst.SimpleStatementLine) and self.dist.direct_rank0_child \
                and _calls_a_function(updated, {"save_checkpoint"}):
            self.dist.hoisted.add(id(updated))
        if not self.dist.has_init and not self.dist.mesh_placed and isinstance(updated, cst.SimpleStatementLine) \
                and _calls_a_function(updated, {"replicate_params", "shard_params"}):
            return self._mesh(original_node, updated, replace=False)
        return updated

    def _mesh(self, original, updated, *, replace: bool):
        """init_process_group -> the device mesh, made current (the process group itself starts at the top)."""
        shape, names, types, _ = MESHES[self.dist.kind or "ddp"]
        name = "mesh" if not self.mentions("mesh") else "device_mesh"
        statements = [
            cst.parse_statement(f"{name} = jax.make_mesh({shape}, {names}, {types})\n"),
            cst.parse_statement(f"jax.set_mesh({name})  # where shard_batch and {self._placement()} place arrays\n"),
        ]
        self.dist.mesh_placed = True
        self.report("PT020", original, self._mesh_message(replace))
        self.record("mesh", original, statements[0])
        statements[0] = statements[0].with_changes(leading_lines=updated.leading_lines)
        if not replace:
            statements.append(updated.with_changes(leading_lines=[]))
        return cst.FlattenSentinel(statements)

    def _placement(self) -> str:
        return "shard_params" if self.dist.kind in ("fsdp", "hybrid") else "replicate_params"

    def _mesh_message(self, replace: bool) -> str:
        where = "init_process_group" if replace else "no init_process_group in this file: here"
        layout = {"ddp": 'one axis "data" over every device of every process',
                  "fsdp": 'axes ("data", "fsdp"): every device on "fsdp", where parameters are sharded and '
                          "the batch split",
                  "hybrid": 'axes ("data", "fsdp"): processes on "data" (replicas), each host\'s devices on '
                            '"fsdp" (shards)'}[self.dist.kind or "ddp"]
        return f"{where} -> a device mesh with {layout}; JAX's multi-process runtime starts at the top of the file"

    def _all_reduce(self, original, call: cst.Call, updated):
        args = _positional(call)
        op = _keyword(call, "op") or (args[1] if len(args) > 1 else None)
        op_name = code_of(op).rsplit(".", 1)[-1] if op is not None else "SUM"
        extra = [a.keyword.value for a in call.args if a.keyword and a.keyword.value != "op"]
        if op_name not in ("SUM", "AVG") or extra or len(args) > 2 or not args:
            self.report("PT023", call, "all_reduce with this op or a process group is not converted (SUM and "
                                       "AVG of metrics are); left unchanged")
            return updated
        summed = id(original) in self.dist.summed_statements
        if summed and op_name == "AVG":  # the ranks' mean of their sums: the global sum over the world size
            name = code_of(args[0])
            new = cst.parse_statement(f"{name} = {name} / jax.device_count()\n").with_changes(
                leading_lines=updated.leading_lines)
            self.report("PT021", call, f"all_reduce(AVG) of {name}: the loss here sums over the global batch, "
                                       "torch's average over the ranks is that sum over the world size")
            return self._changed("all-reduce-avg", original, new)
        note = " (the division by the world size after it goes too)" if id(original) in self.dist.means else \
            " (the loss here sums over the batch: a division by the world size after it still gives torch's " \
            "mean over the ranks)" if summed else ""
        self.report("PT021", call, f"all_reduce of {code_of(args[0])} removed: computed from the step's results "
                                   "and the global batch, it already covers every device" + note)
        self.record("all-reduce", original, cst.Pass())
        return self._remove(original)

    # removed statements leave their blank lines and comments to the next one ---------------
    def _remove(self, original: cst.CSTNode):
        if original.leading_lines:
            self.dist.orphans[id(original)] = original.leading_lines
        return cst.RemoveFromParent()

    def left(self, original_node, result) -> None:
        if self.dist.active and isinstance(original_node, (cst.SimpleStatementLine, cst.BaseCompoundStatement)):
            self.dist.converted[id(original_node)] = result

    def leave_IndentedBlock(self, original_node, updated_node):
        return self._adopt_orphans(original_node.body, updated_node)

    def _adopt_orphans(self, original_body, updated):
        if not self.dist.orphans:
            return updated
        body = list(updated.body)
        for statement, following in zip(original_body, original_body[1:]):
            lines = self.dist.orphans.pop(id(statement), None)
            if lines is None:
                continue
            target = self.dist.converted.get(id(following), following)
            index = next((i for i, s in enumerate(body) if s is target), None)
            if index is not None and hasattr(body[index], "leading_lines"):
                body[index] = body[index].with_changes(leading_lines=[*lines, *body[index].leading_lines])
        return updated.with_changes(body=body)

    # rank-0 blocks -------------------------------------------------------------------
    def visit_If(self, node: cst.If) -> None:
        if isinstance(node.orelse, cst.If):
            self.dist.elifs.add(id(node.orelse))
        self.dist.rank0.append({id(s) for s in node.body.body} if self.dist.active and self._is_rank0_test(node.test)
                           else None)

    def leave_If(self, original_node: cst.If, updated_node: cst.If):
        frame = self.dist.rank0.pop()
        if not self.dist.active or id(original_node) in self.dist.elifs:
            return updated_node
        body = list(updated_node.body.body)
        hoisted = [s for s in body if id(s) in self.dist.hoisted] if frame is not None else []
        if hoisted:
            body = [s for s in body if id(s) not in self.dist.hoisted]
            self.report("PT025", original_node, "Orbax saves from every process: the save moved out of the "
                                                "rank-0 test")
        emptied = not body or (len(body) == 1 and m.matches(body[0], m.SimpleStatementLine([m.Pass()]))
                               and not m.matches(original_node.body.body[0], m.SimpleStatementLine([m.Pass()])))
        if emptied and updated_node.orelse is None:
            self.record("empty-if", original_node, cst.Pass())
            if not hoisted:
                return self._remove(original_node)
            first = hoisted[0].with_changes(leading_lines=updated_node.leading_lines)
            return cst.FlattenSentinel([first, *hoisted[1:]])
        if not hoisted:
            return updated_node
        if not body:
            body = [cst.SimpleStatementLine([cst.Pass()])]
        new_if = updated_node.with_changes(body=updated_node.body.with_changes(body=body))
        return cst.FlattenSentinel([new_if, *[h.with_changes(leading_lines=[]) for h in hoisted]])

    # training loops --------------------------------------------------------------------
    def _shard_batches(self, original: cst.For, converted: cst.For, steps: int) -> cst.For:
        """A loop made into a train step: its batch is sharded over the mesh before the step's call."""
        if not self.dist.active or len(self.ctx.training_steps) == steps or not self.scope.training_loops.last_batch:
            return converted
        step = f"{self.ctx.training_steps[-1]}_fast"
        body = list(converted.body.body)
        at = next(i for i, s in enumerate(body) if m.findall(s, m.Call(func=m.Name(step))))
        axes = MESHES[self.dist.kind or "ddp"][3]
        batch = self.scope.training_loops.last_batch
        targets = ", ".join(batch)
        values = ", ".join(f"shard_batch({b}, {axes})" for b in batch)
        rebind = cst.parse_statement(f"{targets} = {values}  # this process's rows -> the global batch\n")
        rebind = rebind.with_changes(leading_lines=body[at].leading_lines)
        body[at:at + 1] = [rebind, body[at].with_changes(leading_lines=[])]
        self.ctx.need_helper("shard_batch")
        self.record("shard-batch", original, rebind)
        return converted.with_changes(body=converted.body.with_changes(body=body))

    # the process group starts before anything touches JAX --------------------------------
    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        if not self.dist.active:
            return updated_node
        body = list(self._adopt_orphans(original_node.body, updated_node).body)
        at = _after_leading_imports(body)
        start = cst.parse_statement("initialize_distributed()  # JAX's multi-process runtime (nothing to start "
                                    "for a single process)\n")
        body.insert(at, start.with_changes(leading_lines=[cst.EmptyLine()]))
        self.ctx.need_helper("initialize_distributed")
        return updated_node.with_changes(body=body)


def _statement_call(line: cst.SimpleStatementLine) -> cst.Call | None:
    statement = small(line)
    return statement.value if isinstance(statement, cst.Expr) and isinstance(statement.value, cst.Call) else None


def _self_assignment(statement) -> bool:
    return isinstance(statement, cst.Assign) and len(statement.targets) == 1 \
        and code_of(statement.targets[0].target) == code_of(statement.value)


def _with_commas(args: list[cst.Arg]) -> list[cst.Arg]:
    """Arguments re-joined with `, ` (a replaced or appended one may have lost its comma)."""
    out = []
    for i, arg in enumerate(args):
        last = i == len(args) - 1
        comma = cst.MaybeSentinel.DEFAULT if last else (
            arg.comma if isinstance(arg.comma, cst.Comma) else cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
        out.append(arg.with_changes(comma=comma))
    return out


def _after_leading_imports(body: list[cst.CSTNode]) -> int:
    """Index after the leading docstring and import statements."""
    def is_import(s):
        return isinstance(s, cst.SimpleStatementLine) and all(isinstance(b, (cst.Import, cst.ImportFrom))
                                                              for b in s.body)
    i = 1 if body and m.matches(body[0], m.SimpleStatementLine([m.Expr(m.SimpleString())])) else 0
    last = i
    while i < len(body) and is_import(body[i]):
        i += 1
        last = i
    return last
