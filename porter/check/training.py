"""`porter check --script ORIGINAL.py CONVERTED.py [--steps N]`: a training script against its conversion.

Each script runs unmodified, in its own subprocess (`python -m porter.check.training torch|jax ...`), with
a few hooks installed before it starts:

- torch: `torch.optim.Optimizer.__init__` records, for each optimizer in creation order, the module it
  trains (the smallest nn.Module, found among the creating frames' variables, whose parameters include all
  of the optimizer's) and that module's state_dict: the initial weights. `torch.Tensor.backward` records
  the loss each backward() starts from; a global optimizer step hook counts steps and stops the script
  after N of them.
- jax: the i-th `nnx.Optimizer(model, ...)` first loads the i-th torch optimizer's initial state_dict into
  `model` (porter.load_torch_state_dict, strict), so both start from the same weights whatever the two
  frameworks' initialisers drew. `nnx.value_and_grad` records each value it computes and
  `nnx.Optimizer.update` counts steps, both through `jax.debug.callback(ordered=True)`, so they work inside
  `nnx.jit`; the script stops on return from the `nnx.jit` function (or the eager update) that took step N.

The batches are the script's own: converted scripts keep torch's DataLoader and seeds (README, "Training
loops"), so both runs see the same batches in the same order. After the run each side saves the final
state_dict of each optimizer's model (the flax one mapped back to torch names and layouts). The parent
compares the loss recorded at every step (per-step relative difference |jax - torch| / |torch|) and every
final state_dict entry (norm-wise, max|a - b| / max|torch|), names the first step whose loss is out of
tolerance, and prints both curves as a table (and a PNG with --plot when matplotlib is installed).

Not comparable this way: randomness drawn inside the training step (dropout, data augmentation on torch's
RNG against nnx.Rngs) and scripts whose steps are not driven by `loss.backward()` / `optimizer.step()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LOSS_RTOL = 1e-4  # per step, float32: the acceptance for the seed scripts is 1e-4 (final) / 1e-3 (CNN)
STATE_RTOL = 1e-4  # final parameters and buffers, as the model check's "state after K steps"
STATE_ATOL = 1e-12
TINY = float(np.finfo(np.float32).tiny)


class StopTraining(BaseException):
    """Raised into the script after N optimizer steps (a BaseException: `except Exception` does not catch it)."""


# ----------------------------------------------------------------------------
# What one run records


@dataclass
class Run:
    framework: str
    losses: list[float] = field(default_factory=list)  # one per backward() / value_and_grad call
    step_ends: list[int] = field(default_factory=list)  # len(losses) when each optimizer step finished
    owners: list[str] = field(default_factory=list)  # per optimizer: the model it trains ("net")
    initial: list[dict[str, np.ndarray]] = field(default_factory=list)  # per optimizer: state_dict at creation
    final: list[dict[str, np.ndarray]] = field(default_factory=list)  # per optimizer: state_dict at the end
    stopped: bool = False  # stopped after N steps (rather than running to its end)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    def save(self, out: Path) -> None:
        arrays = {f"{kind}/{i}/{name}": value for kind in ("initial", "final")
                  for i, state in enumerate(getattr(self, kind)) for name, value in state.items()}
        np.savez(out / f"{self.framework}.npz", **arrays)
        meta = {k: getattr(self, k) for k in ("framework", "losses", "step_ends", "owners", "stopped", "error", "notes")}
        meta["optimizers"] = len(self.owners)
        (out / f"{self.framework}.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, out: Path, framework: str) -> Run:
        meta = json.loads((out / f"{framework}.json").read_text())
        count = meta.pop("optimizers")
        run = cls(**meta)
        run.initial = [{} for _ in range(count)]
        run.final = [{} for _ in range(count)]
        with np.load(out / f"{framework}.npz") as arrays:
            for key in arrays.files:
                kind, index, name = key.split("/", 2)
                getattr(run, kind)[int(index)][name] = arrays[key]
        return run


def _execute(script: Path, run: Run) -> None:
    """Run the script as __main__ (its directory first on sys.path, as `python script.py` does)."""
    source = script.read_text()
    namespace = {"__name__": "__main__", "__file__": str(script), "__builtins__": __builtins__}
    sys.path.insert(0, str(script.resolve().parent))
    sys.argv = [str(script)]
    try:
        exec(compile(source, str(script), "exec"), namespace)
    except StopTraining:
        run.stopped = True
    except BaseException as exc:  # noqa: BLE001 - reported, the steps so far still compare
        run.error = f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------------------
# torch side


def run_torch(script: Path, steps: int | None) -> Run:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    run = Run("torch")
    modules = []  # per optimizer: the module it trains
    original_init = torch.optim.Optimizer.__init__
    original_backward = torch.Tensor.backward

    def recording_init(self, params, defaults):
        params = list(params)
        original_init(self, params, defaults)
        label, module = _owner([p for group in self.param_groups for p in group["params"]], sys._getframe(1))
        modules.append(module)
        run.owners.append(label)
        run.initial.append(_torch_state(module))

    def recording_backward(self, *args, **kwargs):
        run.losses.append(float(self.detach().float()) if self.numel() == 1 else float("nan"))
        return original_backward(self, *args, **kwargs)

    def after_step(optimizer, args, kwargs):
        run.step_ends.append(len(run.losses))
        if steps is not None and len(run.step_ends) >= steps:
            raise StopTraining

    torch.optim.Optimizer.__init__ = recording_init
    torch.Tensor.backward = recording_backward
    handle = register_optimizer_step_post_hook(after_step)
    try:
        _execute(script, run)
    finally:
        handle.remove()
        torch.optim.Optimizer.__init__ = original_init
        torch.Tensor.backward = original_backward
    run.final = [_torch_state(module) if module is not None else {} for module in modules]
    return run


def _torch_state(module) -> dict[str, np.ndarray]:
    if module is None:
        return {}
    return {name: np.array(value.detach().cpu().float() if value.is_floating_point() else value.cpu(), copy=True)
            for name, value in module.state_dict().items()}


def _owner(params, frame):
    """(label, module): the smallest nn.Module reachable from the creating frames holding all `params`."""
    import torch

    wanted = {id(p) for p in params}
    best, best_size, seen = ("?", None), None, set()
    while frame is not None:
        scopes = [frame.f_locals] + ([frame.f_globals] if frame.f_globals is not frame.f_locals else [])
        for scope in scopes:
            for var, value in list(scope.items()):
                if not isinstance(value, torch.nn.Module) or id(value) in seen:
                    continue
                seen.add(id(value))
                for sub_name, sub in value.named_modules():
                    have = {id(p) for p in sub.parameters()}
                    if wanted <= have and (best_size is None or len(have) < best_size):
                        best, best_size = (f"{var}.{sub_name}" if sub_name else var, sub), len(have)
        frame = frame.f_back
    return best


# ----------------------------------------------------------------------------
# jax side


def run_jax(script: Path, steps: int | None, initial: list[dict[str, np.ndarray]]) -> Run:
    import jax
    from flax import nnx

    from porter.weights.loader import load_torch_state_dict

    run = Run("jax")
    models = []
    counted = {"steps": 0}
    originals = {name: getattr(nnx, name) for name in ("jit", "value_and_grad")}
    original_init, original_update = nnx.Optimizer.__init__, nnx.Optimizer.update

    def on_loss(value):
        run.losses.append(float(np.asarray(value, dtype=np.float64)))

    def on_step():
        counted["steps"] += 1
        run.step_ends.append(len(run.losses))

    def stop_if_done():
        jax.effects_barrier()
        if steps is not None and counted["steps"] >= steps:
            raise StopTraining

    def loading_init(self, model, tx, *args, **kwargs):
        index = len(models)
        if index < len(initial):
            load_torch_state_dict(model, initial[index], strict=True)
        else:
            run.notes.append(f"nnx.Optimizer #{index + 1} has no torch counterpart: its model keeps its own "
                             f"initial weights")
        models.append(model)
        run.owners.append(type(model).__name__)
        original_init(self, model, tx, *args, **kwargs)

    def counting_update(self, model, grads, *args, **kwargs):
        result = original_update(self, model, grads, *args, **kwargs)
        jax.debug.callback(on_step, ordered=True)
        if not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(grads)):
            stop_if_done()  # an eager update: stop here
        return result

    def recording_value_and_grad(f, *args, **kwargs):
        has_aux = kwargs.get("has_aux", args[1] if len(args) > 1 else False)
        transformed = originals["value_and_grad"](f, *args, **kwargs)

        def call(*a, **k):
            value, grads = transformed(*a, **k)
            jax.debug.callback(on_loss, value[0] if has_aux else value, ordered=True)
            return value, grads
        return call

    def stopping_jit(fun=None, **kwargs):
        if fun is None:
            return lambda f: stopping_jit(f, **kwargs)
        jitted = originals["jit"](fun, **kwargs)

        def call(*a, **k):
            result = jitted(*a, **k)
            stop_if_done()
            return result
        call.__wrapped__ = jitted
        return call

    nnx.Optimizer.__init__, nnx.Optimizer.update = loading_init, counting_update
    nnx.value_and_grad, nnx.jit = recording_value_and_grad, stopping_jit
    try:
        _execute(script, run)
        jax.effects_barrier()
    finally:
        nnx.Optimizer.__init__, nnx.Optimizer.update = original_init, original_update
        for name, value in originals.items():
            setattr(nnx, name, value)
    run.final = [_flax_state(model) for model in models]
    return run


def _flax_state(model) -> dict[str, np.ndarray]:
    """The flax model's variables under torch's state_dict names and layouts."""
    from porter.weights.mapping import build_mapping

    mapping = build_mapping(model)
    return {name: np.asarray(entry.layout.to_torch(np.asarray(entry.variable.get_raw_value())))
            for name, entry in mapping.entries.items()}


# ----------------------------------------------------------------------------
# The comparison


@dataclass
class StepRow:
    step: int  # 1-based: the loss computed for optimizer step `step` (or the step-th backward)
    torch: float
    jax: float
    rel: float
    ok: bool


@dataclass
class StateRow:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    ok: bool
    note: str = ""


@dataclass
class TrainingReport:
    original: str
    converted: str
    steps: list[StepRow] = field(default_factory=list)
    state: list[StateRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # failures that are not a number out of tolerance
    loss_rtol: float = LOSS_RTOL
    state_rtol: float = STATE_RTOL

    @property
    def first_divergence(self) -> StepRow | None:
        return next((row for row in self.steps if not row.ok), None)

    @property
    def max_loss_rel(self) -> float:
        return max((row.rel for row in self.steps), default=float("nan"))

    @property
    def passed(self) -> bool:
        return bool(self.steps) and not self.problems and all(r.ok for r in self.steps) \
            and all(r.ok for r in self.state)

    def format(self, rows: int = 20) -> str:
        lines = [f"porter check --script: {self.original} (torch) vs {self.converted} (jax), "
                 f"{len(self.steps)} steps compared"]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  tolerances: loss at each step rel {self.loss_rtol:g} (|jax - torch| / |torch|); final "
                     f"state rel {self.state_rtol:g} (max|a-b| / max|torch|)")
        lines.append("  loss curves:")
        table = [("step", "torch loss", "jax loss", "rel diff", "")]
        for row in self._shown(rows):
            if row is None:
                table.append(("...", "", "", "", ""))
                continue
            table.append((str(row.step), f"{row.torch:.7g}", f"{row.jax:.7g}", f"{row.rel:.2e}",
                          "" if row.ok else "FAIL"))
        lines += _columns(table)
        if self.state:
            lines.append("  final state:")
            table = [("name", "shape", "max_abs", "rel", "")]
            for r in self.state:
                table.append((r.name, str(r.shape), f"{r.max_abs:.3g}", f"{r.rel:.3g}",
                              ("ok" if r.ok else "FAIL") + (f"  {r.note}" if r.note else "")))
            lines += _columns(table)
        lines += [f"FAIL: {problem}" for problem in self.problems]
        first = self.first_divergence
        bad_state = [r for r in self.state if not r.ok]
        if self.passed:
            lines.append(f"PASS: {len(self.steps)} losses (max rel diff {self.max_loss_rel:.2e}) and "
                         f"{len(self.state)} final state entries within tolerance")
        elif first is not None:
            lines.append(f"FAIL: the losses diverge first at step {first.step} (torch {first.torch:.7g}, jax "
                         f"{first.jax:.7g}, rel diff {first.rel:.2e}); "
                         f"{sum(not r.ok for r in self.steps)} of {len(self.steps)} steps out of tolerance"
                         + (f", {len(bad_state)} final state entries" if bad_state else ""))
        elif bad_state:
            lines.append(f"FAIL: the losses agree but {len(bad_state)} final state entries differ "
                         f"(first: {bad_state[0].name})")
        elif not self.problems:
            lines.append("FAIL: no step was compared")
        return "\n".join(lines)

    def _shown(self, limit: int) -> list[StepRow | None]:
        """The first and last steps, the first divergence and the worst step; '...' (None) between gaps."""
        n = len(self.steps)
        if n <= limit:
            return list(self.steps)
        keep = set(range(min(10, n))) | set(range(max(0, n - 3), n))
        keep |= {round(i * (n - 1) / (limit - 14)) for i in range(limit - 13)}
        first = self.first_divergence
        if first is not None:
            keep |= {first.step - 2, first.step - 1}
        keep.add(max(range(n), key=lambda i: self.steps[i].rel))
        shown, previous = [], -1
        for i in sorted(k for k in keep if 0 <= k < n):
            if i != previous + 1:
                shown.append(None)
            shown.append(self.steps[i])
            previous = i
        return shown

    def plot(self, path: str) -> None:
        """Both loss curves, and the relative difference per step below (needs matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r.step for r in self.steps]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(3, 1))
        top.plot(steps, [r.torch for r in self.steps], label="torch (original)")
        top.plot(steps, [r.jax for r in self.steps], "--", label="jax (converted)")
        top.set_ylabel("loss")
        top.legend()
        top.set_title(f"{Path(self.original).name} vs {Path(self.converted).name}", fontsize=9)
        bottom.semilogy(steps, [max(r.rel, 1e-12) for r in self.steps])
        bottom.axhline(self.loss_rtol, color="red", linewidth=0.8)
        bottom.set_ylabel("rel diff")
        bottom.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _columns(table: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["    " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]


def compare_runs(torch_run: Run, jax_run: Run, original: str, converted: str, *,
                 loss_rtol: float = LOSS_RTOL, state_rtol: float = STATE_RTOL) -> TrainingReport:
    report = TrainingReport(original, converted, loss_rtol=loss_rtol, state_rtol=state_rtol)
    report.notes += [f"torch: {note}" for note in torch_run.notes] + [f"jax: {note}" for note in jax_run.notes]
    for run in (torch_run, jax_run):
        side = "the original" if run is torch_run else "the converted script"
        if run.error:
            report.problems.append(f"{side} raised {run.error}")
    report.notes.append(f"optimizer steps: torch {len(torch_run.step_ends)}, jax {len(jax_run.step_ends)}"
                        + (" (stopped after the requested steps)" if torch_run.stopped else ""))
    if len(torch_run.step_ends) != len(jax_run.step_ends):
        report.problems.append(f"the scripts took different numbers of optimizer steps (torch "
                               f"{len(torch_run.step_ends)}, jax {len(jax_run.step_ends)})")
    if len(torch_run.losses) != len(jax_run.losses):
        report.problems.append(f"different numbers of losses (torch {len(torch_run.losses)} backward() calls, "
                               f"jax {len(jax_run.losses)} value_and_grad calls)")
    if len(torch_run.losses) != len(torch_run.step_ends):
        report.notes.append(f"{len(torch_run.losses)} losses for {len(torch_run.step_ends)} optimizer steps: "
                            f"the table counts backward() calls")
    for i, (t, j) in enumerate(zip(torch_run.losses, jax_run.losses)):
        rel = abs(j - t) / max(abs(t), TINY)
        report.steps.append(StepRow(i + 1, t, j, rel, bool(rel <= loss_rtol)))
    if len(torch_run.final) != len(jax_run.final):
        report.problems.append(f"{len(torch_run.final)} torch optimizers but {len(jax_run.final)} nnx.Optimizers")
    for label, t_state, j_state in zip(torch_run.owners, torch_run.final, jax_run.final):
        prefix = f"{label}." if len(torch_run.owners) > 1 else ""
        report.state += [_state_row(prefix + name, value, j_state.get(name), state_rtol)
                         for name, value in t_state.items() if not name.endswith("num_batches_tracked")]
    if len(torch_run.owners) == 1:
        report.notes.append(f"final state: {torch_run.owners[0]}'s state_dict")
    return report


def _state_row(name: str, ref: np.ndarray, got: np.ndarray | None, rtol: float) -> StateRow:
    shape = tuple(ref.shape)
    if got is None:
        return StateRow(name, shape, float("inf"), float("inf"), False, "no such variable in the flax model")
    if got.shape != ref.shape:
        return StateRow(name, shape, float("inf"), float("inf"), False, f"flax shape {tuple(got.shape)}")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    max_abs = float(np.max(np.abs(ref64 - got64))) if ref.size else 0.0
    rel = max_abs / max(float(np.max(np.abs(ref64))) if ref.size else 0.0, TINY)
    return StateRow(name, shape, max_abs, rel, bool(rel <= rtol or max_abs <= STATE_ATOL))


# ----------------------------------------------------------------------------
# Driver: both scripts in subprocesses


def check_training(original: str | Path, converted: str | Path, *, steps: int | None = None,
                   loss_rtol: float = LOSS_RTOL, state_rtol: float = STATE_RTOL,
                   timeout: float | None = None) -> TrainingReport:
    """Run the original training script and its conversion for `steps` optimizer steps (all, when None)
    from the same initial weights and compare the loss at every step and the final state."""
    original, converted = Path(original), Path(converted)
    with tempfile.TemporaryDirectory(prefix="porter-check-training-") as tmp:
        out = Path(tmp)
        for framework, script in (("torch", original), ("jax", converted)):
            command = [sys.executable, "-m", "porter.check.training", framework, str(script), str(out)]
            if steps is not None:
                command += ["--steps", str(steps)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0 or not (out / f"{framework}.json").exists():
                report = TrainingReport(str(original), str(converted), loss_rtol=loss_rtol, state_rtol=state_rtol)
                report.problems.append(f"the {framework} run failed (exit {done.returncode}):\n"
                                       f"{done.stderr[-3000:]}")
                return report
        torch_run, jax_run = Run.load(out, "torch"), Run.load(out, "jax")
    return compare_runs(torch_run, jax_run, str(original), str(converted), loss_rtol=loss_rtol,
                        state_rtol=state_rtol)


def main(argv: list[str] | None = None) -> int:
    """`python -m porter.check.training torch|jax SCRIPT OUT [--steps N]` (the jax run reads OUT/torch.*)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m porter.check.training")
    parser.add_argument("framework", choices=("torch", "jax"))
    parser.add_argument("script", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    script = args.script.resolve()
    if args.framework == "torch":
        run = run_torch(script, args.steps)
    else:
        run = run_jax(script, args.steps, Run.load(args.out, "torch").initial)
    run.save(args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
