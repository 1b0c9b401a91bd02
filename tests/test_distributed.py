"""Distributed training: the DDP and FSDP fixtures convert to their golden
output, and the converted scripts train the same way on 1, 2 and 8 simulated
CPU devices and on 2 processes, and as torch's DDP does over gloo on 2 CPU
processes.

The converted scripts run in subprocesses: XLA_FLAGS=--xla_force_host_platform_device_count=N
must be set before jax starts (this test process has one device). This
file is also the runner those subprocesses execute:

    python tests/test_distributed.py jax CONVERTED.py[:WEIGHTS.npz] ...   # writes CONVERTED's stem + .json
    python tests/test_distributed.py torch ORIGINAL.py OUT.json          # one rank, torchrun's env set

The runner executes the script's `if __name__ == "__main__":` block itself,
keeping the value of its last call: the list of losses the training function
returns. WEIGHTS are torch's initial parameters (the state_dict DDP starts
from, computed the fixture's way): the converted model gets them when its
nnx.Optimizer is built, keeping the placements replicate_params /
shard_params gave it. The torch runner saves the parameters DDP broadcast, to
check that both started alike.

Tolerances (float32, per step, relative): a converted script on 8 devices
(FSDP also on 2 processes x 2 devices) against the same script on 1 device,
1e-5 for each of the 20 losses (only the order of the gradient sums differs;
measured: at most 2.2e-7); torch's DDP on 2 gloo processes against the
converted script on 1, 2 and 8 devices and on 2 processes, 1e-5 (measured:
at most 2.3e-7).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "distributed"
EXPECTED = FIXTURES / "expected"
SCRIPTS = ("ddp_train", "fsdp_train")
STEPS = 20
RTOL_DEVICES = 1e-5
RTOL_TORCH = 1e-5


# -- the runner (in a subprocess) ---------------------------------------------------------------
def _run_main_block(script: str):
    """Runs the script as a module, then its `if __name__ == "__main__":` block; returns its last call's value."""
    import ast
    import runpy

    namespace = runpy.run_path(script, run_name="porter_distributed_test")
    tree = ast.parse(Path(script).read_text())
    block = next(s for s in tree.body if isinstance(s, ast.If) and "__main__" in ast.unparse(s.test))
    *setup, last = block.body
    exec(compile(ast.Module(setup, type_ignores=[]), script, "exec"), namespace)
    return eval(compile(ast.Expression(last.value), script, "eval"), namespace)


def _run_jax(*scripts: str) -> None:
    """Runs each converted script in turn (same device count: one process start for several runs)."""
    for script in scripts:
        path, _, weights = script.partition(":")
        _run_converted(path, weights or None)


def _run_converted(script: str, weights: str | None) -> None:
    import jax
    import numpy as np
    from flax import nnx

    from porter import load_torch_state_dict

    models = []
    original_init = nnx.Optimizer.__init__

    def init(self, model, tx, *args, **kwargs):
        models.append(model)
        if weights:
            state = nnx.state(model)
            shardings = jax.tree.map(lambda x: x.sharding, state)
            load_torch_state_dict(model, dict(np.load(weights)), strict=True)
            nnx.update(model, jax.device_put(nnx.state(model), shardings))
        original_init(self, model, tx, *args, **kwargs)

    nnx.Optimizer.__init__ = init
    losses = _run_main_block(script)
    nnx.Optimizer.__init__ = original_init
    model = models[0]
    params = nnx.state(model, nnx.Param)
    result = {
        "losses": [float(x) for x in losses],
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "shardings": {jax.tree_util.keystr(path): str(leaf.sharding.spec)
                      for path, leaf in jax.tree_util.tree_leaves_with_path(params)},
        "shard_shapes": {jax.tree_util.keystr(path): list(leaf.addressable_shards[0].data.shape)
                         for path, leaf in jax.tree_util.tree_leaves_with_path(params)},
        "partition_specs": {jax.tree_util.keystr(path): str(spec) for path, spec in
                            jax.tree_util.tree_leaves_with_path(nnx.get_partition_spec(params))},
    }
    if jax.process_index() == 0:
        Path(Path(script).stem + ".json").write_text(json.dumps(result))


def _run_torch(script: str, out: str) -> None:
    import numpy as np
    import torch
    from torch.nn.parallel import DistributedDataParallel

    initial = {}
    original_init = DistributedDataParallel.__init__

    def init(self, module, *args, **kwargs):
        original_init(self, module, *args, **kwargs)  # broadcasts rank 0's parameters
        initial.update({k: v.detach().numpy().copy() for k, v in module.state_dict().items()})

    DistributedDataParallel.__init__ = init
    losses = _run_main_block(script)
    if int(os.environ["RANK"]) == 0:
        np.savez(Path(out).with_suffix(".npz"), **initial)  # to check that the JAX runs started alike
        Path(out).write_text(json.dumps({"losses": [float(x) for x in losses]}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    kind, *rest = sys.argv[1:]
    (_run_jax if kind == "jax" else _run_torch)(*rest)
    sys.exit(0)


# -- the tests -------------------------------------------------------------------------------
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from porter import convert_source  # noqa: E402


def report(conversion) -> str:
    return "".join(d.format() + "\n" for d in conversion.diagnostics)


def convert(name: str):
    path = FIXTURES / f"{name}.py"
    return convert_source(path.read_text(), filename=f"fixtures/distributed/{path.name}")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_fixture_converts_to_golden_output(name):
    conversion = convert(name)
    golden_code, golden_report = EXPECTED / f"{name}.py", EXPECTED / f"{name}.report.txt"
    if os.environ.get("PORTER_UPDATE_GOLDEN") == "1":
        EXPECTED.mkdir(exist_ok=True)
        golden_code.write_text(conversion.code)
        golden_report.write_text(report(conversion))
    assert not conversion.has_errors, report(conversion)
    assert conversion.code == golden_code.read_text()
    assert report(conversion) == golden_report.read_text()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_fast_path_and_reference_agree_and_the_output_converts_to_itself(name):
    from porter.convert.pipeline import _convert

    source = (FIXTURES / f"{name}.py").read_text()
    fast, reference = _convert(source, name, fast=True), _convert(source, name, fast=False)
    assert fast.code == reference.code and fast.diagnostics == reference.diagnostics
    again = convert_source(fast.code)
    assert again.code == fast.code
    assert {d.code for d in again.diagnostics} <= {"PT011"}  # torch's DataLoader is still there, on purpose


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCH = ("XLA_FLAGS", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH}
    env.update({"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "OMP_NUM_THREADS": "1"}, **extra)
    return env


def _torchrun_env(port: int, rank: int, world_size: int, **extra) -> dict:
    """What torchrun sets for each process (this test is the launcher)."""
    return _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank),
                LOCAL_RANK=str(rank), **extra)


def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, __file__, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen, what: str, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{what} failed:\n{output[-4000:]}"
    return output


def _devices(n: int) -> str:
    return f"--xla_force_host_platform_device_count={n}"


def _write_converted(name: str, directory: Path) -> Path:
    conversion = convert(name)
    assert not conversion.has_errors, report(conversion)
    path = directory / f"{name}_jax.py"
    path.write_text(conversion.code)
    return path


def _torch_initial_weights(path: Path) -> None:
    """The parameters the DDP fixture starts from: torch.manual_seed(0), then ToyModel()."""
    import runpy

    import torch

    namespace = runpy.run_path(str(FIXTURES / "ddp_train.py"), run_name="porter_distributed_test")
    torch.manual_seed(0)
    np.savez(path, **{k: v.numpy() for k, v in namespace["ToyModel"]().state_dict().items()})


def _relative(a, b) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b) / np.abs(b)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess at once (they are mostly start-up time).

    torch: the DDP fixture on 2 gloo processes. JAX: the converted DDP fixture
    from torch's initial weights on 1, 2 and 8 devices of one process and on
    2 processes of 1 device each (launched as torchrun would); the converted
    FSDP fixture from its own initialisation on 1 and 8 devices, and on 2
    processes of 2 devices each.
    """
    base = tmp_path_factory.mktemp("distributed")
    weights = base / "initial.npz"
    _torch_initial_weights(weights)
    ddp, fsdp = _write_converted("ddp_train", base), _write_converted("fsdp_train", base)
    ddp_run = f"{ddp}:{weights}"
    torch_port, jax_port, fsdp_port = _free_port(), _free_port(), _free_port()
    started = {}
    for rank in range(2):
        started[f"torch_rank{rank}"] = _start(["torch", str(FIXTURES / "ddp_train.py"), "out.json"], base / "torch",
                                              _torchrun_env(torch_port, rank, 2))
    for devices, scripts in ((1, [ddp_run, str(fsdp)]), (2, [ddp_run]), (8, [ddp_run, str(fsdp)])):
        started[f"jax_{devices}"] = _start(["jax", *scripts], base / f"jax_{devices}",
                                           _env(XLA_FLAGS=_devices(devices)))
    for rank in range(2):
        started[f"jax_2proc_rank{rank}"] = _start(["jax", ddp_run], base / "jax_2proc",
                                                  _torchrun_env(jax_port, rank, 2, XLA_FLAGS=_devices(1)))
        started[f"jax_2x2_rank{rank}"] = _start(["jax", str(fsdp)], base / "jax_2x2",
                                                _torchrun_env(fsdp_port, rank, 2, XLA_FLAGS=_devices(2)))
    try:
        outputs = {key: _finish(process, key) for key, process in started.items()}
    finally:
        for process in started.values():  # a failed or hung run does not leave the others behind
            if process.poll() is None:
                process.kill()
                process.wait()
    results = {"torch": json.loads((base / "torch" / "out.json").read_text())}
    for run in ("1", "2", "8", "2proc", "2x2"):
        for name in ("ddp", "fsdp"):
            out = base / f"jax_{run}" / f"{name}_train_jax.json"
            if out.exists():
                results[f"{name}_{run}"] = json.loads(out.read_text())
    results["torch"]["initial"] = dict(np.load(base / "torch" / "out.npz"))
    results["initial"] = dict(np.load(weights))
    results["checkpoints"] = {"ddp_2proc": base / "jax_2proc" / "toy_model.checkpoint",
                              "fsdp_2x2": base / "jax_2x2" / "mnist_mlp.checkpoint",
                              "fsdp_8": base / "jax_8" / "mnist_mlp.checkpoint"}
    results["outputs"] = outputs
    return results


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_converted_script_trains_alike_on_8_devices_and_on_1(runs, name):
    one, eight = runs[f"{name}_1"], runs[f"{name}_8"]
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert len(one["losses"]) == len(eight["losses"]) == STEPS
    worst = _relative(eight["losses"], one["losses"]).max()
    print(f"\n{name}: 20 losses, 8 devices against 1, largest relative difference {worst:.1e}")
    assert worst <= RTOL_DEVICES, (eight["losses"], one["losses"])
    assert one["losses"][-1] < 0.8 * one["losses"][0]  # it trains


def test_ddp_parameters_are_replicated(runs):
    assert set(runs["ddp_8"]["shardings"].values()) == {"P()"}


def test_fsdp_parameters_are_sharded_along_their_largest_divisible_axis(runs):
    run = runs["fsdp_8"]
    specs, shards = run["partition_specs"], run["shard_shapes"]
    # fc1.kernel (784, 128): 784 = 8 * 98 is the largest axis 8 divides; fc3.bias (10,): no axis fits
    assert specs["['fc1']['kernel'].value"] == "P('fsdp', None)" and shards["['fc1']['kernel'].value"] == [98, 128]
    assert specs["['fc2']['kernel'].value"] == "P('fsdp', None)" and shards["['fc2']['kernel'].value"] == [16, 64]
    assert specs["['fc2']['bias'].value"] == "P('fsdp',)" and shards["['fc2']['bias'].value"] == [8]
    assert specs["['fc3']['bias'].value"] == "P(None,)" and shards["['fc3']['bias'].value"] == [10]
    # after 20 steps the arrays are still laid out so (jit kept the placements)
    assert run["shardings"]["['fc1']['kernel'].value"] in ("P('fsdp',)", "P('fsdp', None)")
    assert run["shardings"]["['fc3']['bias'].value"] == "P()"


def test_fsdp_on_2_processes_of_2_devices_trains_as_on_1_device(runs):
    run, one = runs["fsdp_2x2"], runs["fsdp_1"]
    assert (run["processes"], run["devices"]) == (2, 4)
    assert run["shard_shapes"]["['fc1']['kernel'].value"] == [196, 128]
    worst = _relative(run["losses"], one["losses"]).max()
    print(f"\nfsdp: 20 losses, 2 processes x 2 devices against 1 device, largest relative difference {worst:.1e}")
    assert len(run["losses"]) == STEPS and worst <= RTOL_DEVICES
    # the epoch's loss, from host-side sums over the (global) batches and an all_reduce that went: the same
    epochs = [line for line in runs["outputs"]["jax_2x2_rank0"].splitlines() if line.startswith("Train Epoch")]
    assert epochs == [line for line in runs["outputs"]["jax_1"].splitlines() if line.startswith("Train Epoch")]


def test_orbax_checkpoints_written_by_every_process(runs):
    for key in ("ddp_2proc", "fsdp_2x2"):
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= {p.name for p in runs["checkpoints"][key].iterdir()}
    assert (runs["checkpoints"]["fsdp_8"] / "_CHECKPOINT_METADATA").exists()


def test_torch_gloo_ddp_matches_the_converted_script_step_for_step(runs):
    for name, value in runs["initial"].items():  # the same start: what DDP broadcast is what the runs loaded
        np.testing.assert_array_equal(runs["torch"]["initial"][name], value)
    columns = {"torch DDP, gloo, 2 processes": runs["torch"]["losses"], "JAX 2 devices": runs["ddp_2"]["losses"],
               "JAX 2 processes": runs["ddp_2proc"]["losses"], "JAX 8 devices": runs["ddp_8"]["losses"],
               "JAX 1 device": runs["ddp_1"]["losses"]}
    assert runs["ddp_2"]["devices"] == 2 and runs["ddp_2proc"]["processes"] == 2
    rows = ["step | " + " | ".join(columns) + " | max rel. diff to torch"]
    torch_losses = np.asarray(columns["torch DDP, gloo, 2 processes"])
    for i in range(STEPS):
        values = [c[i] for c in columns.values()]
        worst = max(abs(v - torch_losses[i]) / abs(torch_losses[i]) for v in values[1:])
        rows.append(f"{i + 1:4d} | " + " | ".join(f"{v:.7f}" for v in values) + f" | {worst:.1e}")
    print("\n" + "\n".join(rows))
    for name, losses in columns.items():
        assert len(losses) == STEPS, name
        assert _relative(losses, torch_losses).max() <= RTOL_TORCH, "\n".join(rows)
