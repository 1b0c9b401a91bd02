"""The distributed concern (passes/distributed.py) on small pieces of torch.distributed code: what converts, what is reported."""

import ast
import textwrap

from porter import convert_source

HEADER = """\
import os
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
"""


def convert(body: str):
    conversion = convert_source(HEADER + textwrap.dedent(body))
    ast.parse(conversion.code)
    return conversion


def codes(conversion) -> list[str]:
    return [d.code for d in conversion.diagnostics]


def messages(conversion, code: str) -> str:
    return "\n".join(d.message for d in conversion.diagnostics if d.code == code)


def test_a_file_without_torch_distributed_is_left_to_the_training_pass():
    source = "import torch\nfrom torch.utils.data import DataLoader, DistributedSampler\n" \
             "loader = DataLoader(ds, batch_size=8, sampler=DistributedSampler(ds, num_replicas=2, rank=0))\n"
    conversion = convert_source(source)
    assert "num_replicas=2, rank=0" in conversion.code and "initialize_distributed" not in conversion.code


def test_process_group_ranks_and_environment():
    conversion = convert("""
        local_rank = int(os.environ["LOCAL_RANK"])
        rank = int(os.environ.get("RANK", "0"))
        size = os.environ["WORLD_SIZE"]
        local = int(os.getenv("LOCAL_WORLD_SIZE", 1))
        dist.init_process_group("nccl")
        torch.cuda.set_device(local_rank)
        print(dist.get_rank(), dist.get_world_size())
        dist.barrier()
        dist.destroy_process_group()
    """)
    code = conversion.code
    # reads with a default stay (a single process sees the default, as torch's does); a subscript, which
    # raises without a launcher, falls back to JAX's value
    assert 'local_rank = int(os.environ.get("LOCAL_RANK", 0))\n' in code
    assert 'rank = int(os.environ.get("RANK", "0"))\n' in code
    assert 'size = os.environ.get("WORLD_SIZE", str(jax.device_count()))\n' in code
    assert 'local = int(os.getenv("LOCAL_WORLD_SIZE", 1))\n' in code
    assert 'mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))' in code
    assert "jax.set_mesh(mesh)" in code and "set_device" not in code
    assert "print(jax.process_index(), jax.device_count())" in code
    assert 'multihost_utils.sync_global_devices("barrier")' in code and "jax.distributed.shutdown()" in code
    assert "from jax.experimental import multihost_utils" in code and "import torch.distributed" not in code
    # the runtime starts before anything else touches JAX: right after the imports and helpers
    start = code.index("\ninitialize_distributed()")
    assert start < code.index("local_rank = ") and "def initialize_distributed" in code[:start]
    assert not conversion.has_errors, codes(conversion)


def test_ddp_options_dropped_or_refused():
    conversion = convert("""
        ddp = DDP(model, device_ids=[0], output_device=0, bucket_cap_mb=50, find_unused_parameters=True)
        other = DDP(model, process_group=group)
    """)
    assert "ddp = replicate_params(model)" in conversion.code
    assert "other = DDP(model, process_group=group)" in conversion.code
    assert codes(conversion).count("PT022") == 2
    assert "process_group= is not converted" in messages(conversion, "PT023")


def test_fsdp_strategies_pick_the_mesh():
    hybrid = convert("""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
        dist.init_process_group("nccl")
        model = FSDP(model, sharding_strategy=ShardingStrategy.HYBRID_SHARD, device_id=0, use_orig_params=True)
    """)
    assert "jax.make_mesh((jax.process_count(), jax.local_device_count()), (\"data\", \"fsdp\")" in hybrid.code
    assert "model = shard_params(model)" in hybrid.code and not hybrid.has_errors
    unsharded = convert("""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, ShardingStrategy
        model = FSDP(model, sharding_strategy=ShardingStrategy.NO_SHARD)
    """)
    assert "model = replicate_params(model)" in unsharded.code
    # no init_process_group in the file: the mesh comes right before the wrapping
    assert unsharded.code.index("jax.set_mesh(mesh)") < unsharded.code.index("replicate_params(model)\n")
    mixed = convert("""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP, MixedPrecision
        model = FSDP(model, mixed_precision=MixedPrecision(param_dtype=torch.bfloat16))
    """)
    assert "FSDP(model, mixed_precision=" in mixed.code and "PT023" in codes(mixed)


def test_sampler_and_loader_read_a_process_share():
    conversion = convert("""
        dist.init_process_group("gloo")
        sampler = DistributedSampler(ds, 4, 1, shuffle=False)
        loader = DataLoader(ds, 16, sampler=sampler)
        eval_loader = DataLoader(ds, sampler=DistributedSampler(ds))
        plain = DataLoader(ds, batch_size=16)
    """)
    code = conversion.code
    assert "DistributedSampler(ds, jax.process_count(), jax.process_index(), shuffle=False)" in code
    assert "DataLoader(ds, 16 * jax.local_device_count(), sampler=sampler)" in code
    assert "DataLoader(ds, sampler=DistributedSampler(ds, num_replicas=jax.process_count(), " \
           "rank=jax.process_index()), batch_size=jax.local_device_count())" in code
    assert "plain = DataLoader(ds, batch_size=16)" in code


def test_metric_all_reduce():
    conversion = convert("""
        world_size = dist.get_world_size()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= world_size
        dist.all_reduce(count)
        dist.all_reduce(mean, dist.ReduceOp.AVG)
        dist.all_reduce(best, op=dist.ReduceOp.MAX)
        dist.all_reduce(part, group=group)
        handle = dist.all_gather(parts, part)
    """)
    code = conversion.code
    assert "all_reduce(total" not in code and "total /=" not in code
    assert "all_reduce(count" not in code and "all_reduce(mean" not in code
    assert "dist.all_reduce(best, op=dist.ReduceOp.MAX)" in code and "dist.all_reduce(part, group=group)" in code
    assert codes(conversion).count("PT021") == 3
    assert codes(conversion).count("PT023") == 3  # MAX, group=, all_gather


def test_rank0_checkpoint_moves_out_and_logging_stays():
    conversion = convert("""
        def save(ddp_model, rank, epoch):
            if rank == 0:
                print("saving", epoch)
                torch.save(ddp_model.module.state_dict(), "ckpt.pt")
            if dist.get_rank() == 0:
                torch.save(ddp_model.state_dict(), "only.pt")
            if rank == 0:
                if epoch % 10 == 0:
                    torch.save(ddp_model.state_dict(), "nested.pt")
        ddp_model = DDP(model)
    """)
    code = conversion.code
    assert '    if rank == 0:\n        print("saving", epoch)\n' \
           '    save_checkpoint("ckpt.pt", nnx.to_pure_dict(nnx.state(ddp_model, nnx.Not(nnx.RngState))))\n' in code
    assert 'save_checkpoint("only.pt"' in code and "jax.process_index() == 0" not in code
    assert "PT024" in codes(conversion)  # the nested one must be moved by hand
    assert codes(conversion).count("PT025") == 2
    assert "import orbax.checkpoint as ocp" in code


def test_spawn_runs_the_function_once_per_host():
    conversion = convert("""
        import torch.multiprocessing as mp

        def run(rank, world_size, epochs):
            dist.init_process_group("nccl", rank=rank, world_size=world_size)

        world_size = torch.cuda.device_count()
        mp.spawn(run, args=(world_size, 3), nprocs=world_size, join=True)
    """)
    assert "world_size = jax.device_count()" in conversion.code
    assert "run(jax.process_index(), world_size, 3)" in conversion.code
    assert not conversion.has_errors, codes(conversion)


def test_summed_loss_averages_the_gradients_like_ddp():
    conversion = convert("""
        model = DDP(net)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        criterion = nn.MSELoss(reduction="sum")
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
    """)
    assert "optax.chain(optax.scale(1 / jax.device_count()), optax.sgd(learning_rate=0.1))" in conversion.code
    assert "PT024" in codes(conversion)
    assert 'x, y = shard_batch(x, "data"), shard_batch(y, "data")' in conversion.code


def test_not_understood_constructs_are_reported():
    conversion = convert("""
        from torch.distributed.pipelining import pipeline
        group = dist.new_group([0, 1])
        model = DDP(net)
        with model.no_sync():
            pass
        model.register_comm_hook(state, hook)
        ready = dist.is_initialized()
        pipe = pipeline(net, 4)
    """)
    reported = messages(conversion, "PT023")
    for words in ("custom process groups", "no_sync()", "communication hooks", "is_initialized()", "pipeline"):
        assert words in reported, (words, reported)
    assert conversion.has_errors


def test_data_parallel_is_replication_on_one_process():
    conversion = convert_source("import torch.nn as nn\nmodel = nn.DataParallel(net, device_ids=[0, 1])\n"
                                "print(model.module)\n")
    assert "model = replicate_params(model)" not in conversion.code
    assert "model = replicate_params(net)" in conversion.code and "print(model)" in conversion.code
    assert conversion.code.index("jax.set_mesh(mesh)") < conversion.code.index("replicate_params(net)\n")


def test_environment_writes_are_left_alone():
    conversion = convert("""
        os.environ["RANK"] = str(rank)
        del os.environ["WORLD_SIZE"]
        rank = int(os.environ["RANK"])
        dist.init_process_group("gloo")
    """)
    assert 'os.environ["RANK"] = str(rank)' in conversion.code and 'del os.environ["WORLD_SIZE"]' in conversion.code
    assert 'rank = int(os.environ.get("RANK", jax.process_index()))' in conversion.code


ENVIRONMENT_READS = """
    ddp = int(os.environ.get('RANK', -1)) != -1
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    world = os.getenv('WORLD_SIZE', 1)
    launched = 'RANK' in os.environ
    rank = int(os.environ['RANK']) if 'RANK' in os.environ else None
    local = os.environ['LOCAL_RANK'] if launched else None


    def setup():
        dist.init_process_group("gloo")
"""
READ_NAMES = ("ddp", "local_rank", "world", "launched", "rank", "local")


def _values_of(code: str) -> tuple:
    namespace: dict = {}
    exec(compile(code, "<environment>", "exec"), namespace)
    return tuple(namespace[name] for name in READ_NAMES)


def test_environment_reads_keep_their_meaning(monkeypatch):
    """nanoGPT's `ddp = int(os.environ.get('RANK', -1)) != -1` once became `jax.process_index() != -1`:
    always True. Each read gives the original's value in a plain single process and under a launcher."""
    source = HEADER + textwrap.dedent(ENVIRONMENT_READS)
    conversion = convert(ENVIRONMENT_READS)
    assert "def setup():" in conversion.code and "jax.make_mesh" in conversion.code  # the file was converted
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    plain = _values_of(source)
    assert plain == (False, 0, 1, False, None, None)
    assert _values_of(conversion.code) == plain
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")  # WORLD_SIZE stays unset: initialize_distributed starts nothing
    launched = _values_of(source)
    assert launched == (True, 1, 1, True, 3, "1")
    assert _values_of(conversion.code) == launched
    assert not conversion.has_errors, codes(conversion)


def test_emitted_helpers_use_only_imports_the_converter_adds():
    import inspect

    from porter import emitted_distributed
    from porter.convert.passes.imports import NEEDED_IMPORTS

    tree = ast.parse(inspect.getsource(emitted_distributed))
    imports = {ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
    assert imports <= {statement for statement, _ in NEEDED_IMPORTS}
    helpers = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert helpers == set(emitted_distributed.DEPENDS)
    nested = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n not in tree.body]
    assert nested == []
