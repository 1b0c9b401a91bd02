"""`porter check --script ORIGINAL.py CONVERTED.py [--steps N]`: a training script against its conversion.

Each script runs unmodified, in its own subprocess (`python -m porter.check.training torch|jax ...`) and its
own working directory (porter.check.workdir: a mirror of the caller's, so the two runs' outputs do not
collide), with a few hooks installed before it starts:

- torch: `torch.optim.Optimizer.__init__` records, for each optimizer in creation order, the module it
  trains (the smallest nn.Module, found among the creating frames' variables, whose parameters include all
  of the optimizer's) and that module's state_dict: the initial weights. `torch.Tensor.backward` records
  the loss each backward() starts from; a global optimizer step hook counts steps and stops the script
  after N of them. Building a module and `torch.nn.init.*` draw from a stream of their own
  (ConstructionStream), so torch's global generator advances as in the conversion.
- jax: the i-th `nnx.Optimizer(model, ...)` first loads the i-th torch optimizer's initial state_dict into
  `model` (porter.load_torch_state_dict, strict), so both start from the same weights whatever the two
  frameworks' initialisers drew. `nnx.value_and_grad` records each value it computes and
  `nnx.Optimizer.update` counts steps, both through `jax.debug.callback(ordered=True)`, so they work inside
  `nnx.jit`; the script stops on return from the `nnx.jit` function (or the eager update) that took step N, or before the
  `jax.jit` call that follows it (porter's fast_partial writes a step's results back after its jax.jit call).

The batches are the script's own: converted scripts keep torch's DataLoader and seeds (README, "Training
loops"), and with the construction stream torch's global generator takes the same draws in both runs, so
both see the same batches in the same order, an unseeded shuffle included. After the run each side saves
the final state_dict of each optimizer's model (the flax one mapped back to torch names and layouts). The
parent compares the loss recorded at every step (per-step relative difference |jax - torch| / |torch|) and
every final state_dict entry (norm-wise, max|a - b| / max|torch|); rows out of tolerance get the float64
verdict (explain_by_float64: the original, and if needed the conversion, run again in float64); it names
the first step whose loss is out of tolerance, and prints both curves as a table (and a PNG with --plot
when matplotlib is installed).

Not comparable this way: randomness drawn inside the training step (dropout, data augmentation on torch's
RNG against nnx.Rngs) and scripts whose steps are not driven by `loss.backward()` / `optimizer.step()`.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from porter.check.conditioning import CONDITION_FACTOR, FLOAT64_AGREEMENT
from porter.check.workdir import mirror

LOSS_RTOL = 1e-4  # per step, float32: the acceptance for the seed scripts is 1e-4 (final) / 1e-3 (CNN)
STATE_RTOL = 1e-4  # final parameters and buffers, as the model check's "state after K steps"
STATE_ATOL = 1e-12
TINY = float(np.finfo(np.float32).tiny)


FLOAT64_RUN = "torch64"  # the original run a second time in float64: the truth float32 rounding is judged against
JAX_FLOAT64_RUN = "jax64"  # the converted script in float64: does it train as the original does in float64?


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
    # per optimizer: a state_dict name -> the earlier name sharing its storage (a tied head: lm_head.weight ->
    # transformer.wte.weight); the saved copies are separate arrays, load_torch_state_dict needs to see the tie
    tied: list[dict[str, str]] = field(default_factory=list)
    final: list[dict[str, np.ndarray]] = field(default_factory=list)  # per optimizer: state_dict at the end
    stopped: bool = False  # stopped after N steps (rather than running to its end)
    error: str | None = None
    traceback: list[str] = field(default_factory=list)  # where it raised: the script's own frames (_user_frames)
    notes: list[str] = field(default_factory=list)

    def save(self, out: Path) -> None:
        arrays = {f"{kind}/{i}/{name}": value for kind in ("initial", "final")
                  for i, state in enumerate(getattr(self, kind)) for name, value in state.items()}
        np.savez(out / f"{self.framework}.npz", **arrays)
        meta = {k: getattr(self, k) for k in ("framework", "losses", "step_ends", "owners", "stopped", "error",
                                               "traceback", "notes", "tied")}
        meta["optimizers"] = len(self.owners)
        (out / f"{self.framework}.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, out: Path, framework: str) -> Run:
        meta = json.loads((out / f"{framework}.json").read_text())
        count = meta.pop("optimizers")
        meta.setdefault("tied", [])
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
        run.traceback = _user_frames(exc, script)


def _user_frames(exc: BaseException, script: Path) -> list[str]:
    """The traceback's frames in the script and the files beside it (a converted tree), innermost last, each
    'FILE:LINE in FUNCTION: SOURCE LINE'."""
    import traceback

    root = script.resolve().parent
    checker = Path(__file__).resolve().parent
    frames = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(root) and not path.is_relative_to(checker) and "site-packages" not in path.parts:
            frames.append(f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}")
    return frames


# ----------------------------------------------------------------------------
# torch's global generator: the original's draws that its conversion does not make


class ConstructionStream:
    """While it is installed, building a module (the outermost constructor) and `torch.nn.init.*` draw from a
    generator of their own, so torch's global generator advances in the original exactly as in its
    conversion, whose modules draw from nnx.Rngs: every other draw (data made with torch.randn, each
    DataLoader iteration's seed, a shuffle without a generator of its own) then takes the same numbers in
    both runs. The own stream starts from the global generator's state at the first construction (the
    first model gets the weights a plain run gives it) and again after each torch.manual_seed.
    """

    def __init__(self, torch):
        self.torch = torch
        self.depth = 0
        self.state = None  # the own stream's generator state; None: start from the global one
        self.restore: list = []

    def __enter__(self):
        torch = self.torch
        classes, pending = {}, [torch.nn.Module]
        while pending:
            cls = pending.pop()
            if cls not in classes:
                classes[cls] = None
                pending += cls.__subclasses__()
        for cls in classes:
            self._wrap(cls, "__init__")
        stream = self

        def init_subclass(cls, **kwargs):
            stream._wrap(cls, "__init__")
        self._patch(torch.nn.Module, "__init_subclass__", classmethod(init_subclass))
        for name in dir(torch.nn.init):
            if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name)):
                self._patch(torch.nn.init, name, self._drawing_apart(getattr(torch.nn.init, name)))
        for owner in (torch, torch.random):
            self._patch(owner, "manual_seed", self._reseeding(owner.manual_seed))
        return self

    def __exit__(self, *exc):
        for owner, name, had, value in reversed(self.restore):
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
        self.restore.clear()

    def _patch(self, owner, name, value):
        self.restore.append((owner, name, name in vars(owner), vars(owner).get(name)))
        setattr(owner, name, value)

    def _wrap(self, cls, name):
        if name in vars(cls):
            self._patch(cls, name, self._drawing_apart(vars(cls)[name]))

    def _drawing_apart(self, function):
        stream = self

        @functools.wraps(function)
        def apart(*args, **kwargs):
            if stream.depth:
                return function(*args, **kwargs)
            torch = stream.torch
            outer = torch.get_rng_state()
            torch.set_rng_state(outer if stream.state is None else stream.state)
            stream.depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                stream.depth -= 1
                stream.state = torch.get_rng_state()
                torch.set_rng_state(outer)
        return apart

    def _reseeding(self, manual_seed):
        stream = self

        @functools.wraps(manual_seed)
        def reseed(seed):
            stream.state = None
            return manual_seed(seed)
        return reseed


# ----------------------------------------------------------------------------
# torch side


def run_torch(script: Path, steps: int | None, initial: list[dict[str, np.ndarray]] | None = None) -> Run:
    """The original, in float32; with `initial` (the float32 run's initial weights), its float64 run: each
    optimizer's module is loaded with them and cast to float64 in place as its optimizer is built, and every
    module casts its floating inputs to its parameters' dtype (FLOAT64_RUN)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    wide = initial is not None
    run = Run(FLOAT64_RUN if wide else "torch")
    modules = []  # per optimizer: the module it trains
    original_init = torch.optim.Optimizer.__init__
    original_backward = torch.Tensor.backward

    def recording_init(self, params, defaults):
        params = list(params)
        original_init(self, params, defaults)
        label, module = _owner([p for group in self.param_groups for p in group["params"]], sys._getframe(1))
        if wide and module is not None:
            if len(modules) < len(initial):
                module.load_state_dict({k: torch.from_numpy(v) for k, v in initial[len(modules)].items()})
            module.to(torch.float64)  # in place: the optimizer keeps the same Parameter objects
        modules.append(module)
        run.owners.append(label)
        run.initial.append(_torch_state(module, wide))
        run.tied.append(_tied_names(module))

    def recording_backward(self, *args, **kwargs):
        run.losses.append(float(self.detach().double()) if self.numel() == 1 else float("nan"))
        return original_backward(self, *args, **kwargs)

    def after_step(optimizer, args, kwargs):
        run.step_ends.append(len(run.losses))
        if steps is not None and len(run.step_ends) >= steps:
            raise StopTraining

    torch.optim.Optimizer.__init__ = recording_init
    torch.Tensor.backward = recording_backward
    handle = register_optimizer_step_post_hook(after_step)
    widening = torch.nn.modules.module.register_module_forward_pre_hook(_inputs_in_own_dtype) if wide else None
    try:
        with ConstructionStream(torch):
            _execute(script, run)
    finally:
        handle.remove()
        if widening is not None:
            widening.remove()
        torch.optim.Optimizer.__init__ = original_init
        torch.Tensor.backward = original_backward
    run.final = [_torch_state(module, wide) for module in modules]
    return run


def _inputs_in_own_dtype(module, args):
    """Float64 run: a module's floating tensor inputs cast to its parameters' dtype (the data stays float32)."""
    import torch

    own = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if own is None:
        return None
    return tuple(a.to(own) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != own else a
                 for a in args)


def _torch_state(module, wide: bool = False) -> dict[str, np.ndarray]:
    if module is None:
        return {}

    def host(value):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double() if wide else value.float()
        return np.array(value, copy=True)
    return {name: host(value) for name, value in module.state_dict().items()}


def _tied_names(module) -> dict[str, str]:
    if module is None:
        return {}
    first, tied = {}, {}
    for name, value in module.state_dict().items():
        where = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape), tuple(value.stride()))
        tied[name] = first.setdefault(where, name)
    return {name: same for name, same in tied.items() if same != name}


def _with_ties(run: Run) -> list[dict[str, np.ndarray]]:
    """The run's initial states with each tied name holding the very array of the name it is tied to."""
    states = [dict(state) for state in run.initial]
    for state, tied in zip(states, run.tied):
        for name, same in tied.items():
            state[name] = state[same]
    return states


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


def run_jax(script: Path, steps: int | None, initial: list[dict[str, np.ndarray]], wide: bool = False) -> Run:
    """The converted script; `wide`: its float64 run (jax's 64-bit types on, each optimizer's model loaded
    with the initial weights in float64: the data stays float32 and is promoted at the first layer)."""
    import jax
    from flax import nnx

    from porter.weights.loader import load_torch_state_dict

    if wide:
        jax.config.update("jax_enable_x64", True)
        initial = [{k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v for k, v in state.items()}
                   for state in initial]
    run = Run(JAX_FLOAT64_RUN if wide else "jax")
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
        if any(model is seen for seen in models):  # rebuilt over its first one's tx (clipping, loss scaling)
            return original_init(self, model, tx, *args, **kwargs)
        index = len(models)
        if index < len(initial):
            load_torch_state_dict(model, initial[index], strict=True, dtype="checkpoint" if wide else "model")
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

    def stopping(jit, before: bool = False):
        """`jit` whose functions stop the script once it took the steps asked for: on return, or `before` the
        next call (the emitted fast_partial writes a jax.jit call's results back into the model after it
        returns); not while traced (fast_partial traces an nnx.jit step inside its jax.jit)."""
        def wrapper(fun=None, **kwargs):
            if fun is None:
                return lambda f: wrapper(f, **kwargs)
            jitted = jit(fun, **kwargs)

            def call(*a, **k):
                eager = not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((a, k)))
                if before and eager:
                    stop_if_done()
                result = jitted(*a, **k)
                if not before and eager:
                    stop_if_done()
                return result
            call.__wrapped__ = jitted
            return call
        return wrapper

    original_jax_jit = jax.jit
    nnx.Optimizer.__init__, nnx.Optimizer.update = loading_init, counting_update
    nnx.value_and_grad, nnx.jit = recording_value_and_grad, stopping(originals["jit"])
    jax.jit = stopping(original_jax_jit, before=True)
    try:
        _execute(script, run)
        jax.effects_barrier()
    finally:
        nnx.Optimizer.__init__, nnx.Optimizer.update = original_init, original_update
        jax.jit = original_jax_jit
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
    note: str = ""


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
    float64_runs: list[str] = field(default_factory=list)  # the float64 runs the verdict used

    @property
    def out_of_tolerance(self) -> list[StepRow | StateRow]:
        return [row for row in self.steps if not row.ok] + [row for row in self.state if not row.ok]

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
        if self.float64_runs:
            lines.append(f"  float64 verdict ({' and '.join(self.float64_runs)} runs): a row out of tolerance is "
                         f"float32 rounding when within {CONDITION_FACTOR:g}x the original's own float32 error "
                         f"(vs its float64 run) plus the tolerance, or when in float64 both scripts agree to "
                         f"{FLOAT64_AGREEMENT:g} or within {CONDITION_FACTOR:g}x that error")
        lines.append("  loss curves:")
        table = [("step", "torch loss", "jax loss", "rel diff", "")]
        for row in self._shown(rows):
            if row is None:
                table.append(("...", "", "", "", ""))
                continue
            table.append((str(row.step), f"{row.torch:.7g}", f"{row.jax:.7g}", f"{row.rel:.2e}",
                          ("" if row.ok else "FAIL") + (f"  {row.note}" if row.note else "")))
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
        rounding = sum(r.note.startswith("float32 rounding") for r in [*self.steps, *self.state])
        if self.passed:
            lines.append(f"PASS: {len(self.steps)} losses (max rel diff {self.max_loss_rel:.2e}) and "
                         f"{len(self.state)} final state entries within tolerance"
                         + (f" ({rounding} by the float64 verdict: float32 rounding)" if rounding else ""))
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
        spaced = max(limit - 13, 2)  # evenly spaced steps, first and last among them
        keep |= {round(i * (n - 1) / (spaced - 1)) for i in range(spaced)}
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
            where = "".join(f"\n    {frame}" for frame in run.traceback) or " (no frame in the script's own files)"
            report.problems.append(f"{side} raised {run.error}{where}" if not run.traceback else
                                   f"{side} raised {run.error}\n  after {len(run.step_ends)} optimizer steps, "
                                   f"at (innermost last):{where}")
    crashed = bool(torch_run.error or jax_run.error)
    report.notes.append(f"optimizer steps: torch {len(torch_run.step_ends)}, jax {len(jax_run.step_ends)}"
                        + (" (stopped after the requested steps)" if torch_run.stopped else ""))
    # after a crash, fewer steps, losses or optimizers on one side are its consequence, not another finding
    if len(torch_run.step_ends) != len(jax_run.step_ends) and not crashed:
        report.problems.append(f"the scripts took different numbers of optimizer steps (torch "
                               f"{len(torch_run.step_ends)}, jax {len(jax_run.step_ends)})")
    if len(torch_run.losses) != len(jax_run.losses) and not crashed:
        report.problems.append(f"different numbers of losses (torch {len(torch_run.losses)} backward() calls, "
                               f"jax {len(jax_run.losses)} value_and_grad calls)")
    if len(torch_run.losses) != len(torch_run.step_ends):
        report.notes.append(f"{len(torch_run.losses)} losses for {len(torch_run.step_ends)} optimizer steps: "
                            f"the table counts backward() calls")
    for i, (t, j) in enumerate(zip(torch_run.losses, jax_run.losses)):
        rel = 0.0 if j == t else abs(j - t) / max(abs(t), TINY)  # equal infinities (a loss scale's overflow) agree
        report.steps.append(StepRow(i + 1, t, j, rel, bool(rel <= loss_rtol)))
    if crashed and len(torch_run.step_ends) != len(jax_run.step_ends):
        report.notes.append("final state not compared: the scripts stopped after different numbers of steps")
        return report
    if len(torch_run.final) != len(jax_run.final):
        report.problems.append(f"{len(torch_run.final)} torch optimizers but {len(jax_run.final)} nnx.Optimizers")
    tied = torch_run.tied + [{}] * (len(torch_run.owners) - len(torch_run.tied))
    for label, t_state, j_state, ties in zip(torch_run.owners, torch_run.final, jax_run.final, tied):
        prefix = f"{label}." if len(torch_run.owners) > 1 else ""
        report.state += [_state_row(prefix + name, value, j_state.get(name, j_state.get(ties.get(name))), state_rtol)
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
# The float64 verdict: is a difference float32 rounding, or the conversion?


def explain_by_float64(report: TrainingReport, torch_run: Run, torch64: Run, jax64: Run | None = None) -> None:
    """Marks the steps and final state entries out of tolerance that float32 rounding explains.

    Two witnesses, as the model check's (porter/check/conditioning.py):
    - the band: the original's own float32 error, |torch float32 - torch float64| in the row's units, is what
      rounding does to this training; a row within CONDITION_FACTOR times it (per step: the largest own error
      up to that step, since rounding differences carry over from step to step) plus the tolerance is rounding;
    - both scripts in float64 (`jax64`): where their losses and state agree to FLOAT64_AGREEMENT, or differ
      by no more than the band (what the conversion changes in exact arithmetic is then below what float32
      resolves in this training, as the 1e-6 torch's clip_grad_norm_ adds to the norm and
      optax.clip_by_global_norm does not), the float32 difference is that change or rounding, amplified by
      the training: a max-pool window whose two largest inputs are within rounding of each other sends a
      gradient one way in one run and the other way in the other, Adam divides by the root of small second
      moments, and the runs part from there on, by far more than any one step's rounding.
    A conversion that computes something else (a learning rate, an epsilon, a momentum, a reduction) differs
    in float64 too, and by more than the original's own rounding.
    """
    envelope = 0.0
    for i, row in enumerate(report.steps):
        if i >= len(torch64.losses):
            break
        exact = torch64.losses[i]
        envelope = max(envelope, _relative(torch_run.losses[i], exact))
        if row.ok:
            continue
        in_float64 = _relative(jax64.losses[i], exact) if jax64 is not None and i < len(jax64.losses) else None
        _judge(row, envelope, report.loss_rtol, in_float64)
    exact_states = _by_name(torch_run.owners, torch64.final)
    single_states = _by_name(torch_run.owners, torch_run.final)
    converted64 = _by_name(torch_run.owners, jax64.final) if jax64 is not None else {}
    for row in report.state:
        if row.ok or row.name not in exact_states or row.name not in single_states:
            continue
        exact, single = exact_states[row.name], single_states[row.name]
        scale = max(_largest(single), TINY)
        in_float64 = _largest(converted64[row.name] - exact) / max(_largest(exact), TINY) \
            if row.name in converted64 and converted64[row.name].shape == exact.shape else None
        _judge(row, _largest(single - exact) / scale, report.state_rtol, in_float64)


def _judge(row: StepRow | StateRow, own_error: float, tolerance: float, in_float64: float | None) -> None:
    if row.rel <= CONDITION_FACTOR * own_error + tolerance:
        row.ok, row.note = True, f"float32 rounding: the original itself moves by {own_error:.2g} (float64 run)"
    elif in_float64 is not None and in_float64 <= FLOAT64_AGREEMENT:
        row.ok, row.note = True, f"float32 rounding: in float64 both scripts agree to {in_float64:.1g}"
    elif in_float64 is not None and in_float64 <= CONDITION_FACTOR * own_error:
        row.ok, row.note = True, (f"float32 rounding, amplified: in float64 the scripts differ by {in_float64:.2g}, "
                                  f"no more than float32 rounding moves the original ({own_error:.2g})")
    else:
        earlier = "" if row.note.startswith("not float32 rounding") else row.note  # a first verdict's, redone
        row.note = (earlier + "; " if earlier else "") + f"not float32 rounding: the original moves by " \
            f"{own_error:.2g}" + (f", and in float64 the scripts differ by {in_float64:.2g}"
                                  if in_float64 is not None else "")


def _relative(value: float, exact: float) -> float:
    return abs(value - exact) / max(abs(exact), TINY)


def _largest(a: np.ndarray) -> float:
    return float(np.max(np.abs(a), initial=0.0))


def _by_name(owners: list[str], states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Final state entries under the report's row names (prefixed by the model when several)."""
    prefix = (lambda label: f"{label}.") if len(owners) > 1 else (lambda label: "")
    return {prefix(label) + name: np.asarray(value, np.float64) for label, state in zip(owners, states)
            for name, value in state.items()}


# ----------------------------------------------------------------------------
# Driver: both scripts in subprocesses


def check_training(original: str | Path, converted: str | Path, *, steps: int | None = None,
                   loss_rtol: float = LOSS_RTOL, state_rtol: float = STATE_RTOL, float64: bool = True,
                   timeout: float | None = None) -> TrainingReport:
    """Run the original training script and its conversion for `steps` optimizer steps (all, when None)
    from the same initial weights and compare the loss at every step and the final state. With `float64`,
    rows out of tolerance get the float64 verdict (explain_by_float64): the original is run again in
    float64 and, if its own rounding does not explain them, the conversion too."""
    original, converted = Path(original), Path(converted)
    with tempfile.TemporaryDirectory(prefix="porter-check-training-") as tmp:
        out = Path(tmp)

        def run(framework: str, script: Path) -> str | None:
            """None, or why the run did not record anything."""
            command = [sys.executable, "-m", "porter.check.training", framework, str(script.resolve()), str(out)]
            if steps is not None:
                command += ["--steps", str(steps)]
            workdir = mirror(Path.cwd(), out / f"cwd-{framework}", leave_out=out)
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                                  env=_importable_porter())
            if done.returncode != 0 or not (out / f"{framework}.json").exists():
                return f"the {framework} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
            return None

        for framework, script in (("torch", original), ("jax", converted)):
            failure = run(framework, script)
            if failure:
                report = TrainingReport(str(original), str(converted), loss_rtol=loss_rtol, state_rtol=state_rtol)
                report.problems.append(failure)
                return report
        torch_run, jax_run = Run.load(out, "torch"), Run.load(out, "jax")
        report = compare_runs(torch_run, jax_run, str(original), str(converted), loss_rtol=loss_rtol,
                              state_rtol=state_rtol)
        if not float64 or not report.out_of_tolerance or torch_run.error or jax_run.error:
            return report
        witnesses = []
        for framework, script in ((FLOAT64_RUN, original), (JAX_FLOAT64_RUN, converted)):
            failure = run(framework, script)
            witness = None if failure else Run.load(out, framework)
            if witness is not None and witness.error:
                failure = f"the {framework} run raised {witness.error}"
            if failure:
                report.notes.append(f"float64 verdict incomplete: {failure.splitlines()[0]}")
                break
            witnesses.append(witness)
            explain_by_float64(report, torch_run, *witnesses)
            if not report.out_of_tolerance:
                break
        report.float64_runs = [w.framework for w in witnesses]
    return report


def _importable_porter() -> dict[str, str]:
    """The environment with this porter first on PYTHONPATH: the runs start in directories of their own."""
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    paths = [package_root] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def main(argv: list[str] | None = None) -> int:
    """`python -m porter.check.training torch|jax|torch64 SCRIPT OUT [--steps N]` (the jax and float64 runs
    read OUT/torch.*)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m porter.check.training")
    parser.add_argument("framework", choices=("torch", "jax", FLOAT64_RUN, JAX_FLOAT64_RUN))
    parser.add_argument("script", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args(argv)
    script = args.script.resolve()
    if args.framework == "torch":
        run = run_torch(script, args.steps)
    elif args.framework == FLOAT64_RUN:
        run = run_torch(script, args.steps, initial=Run.load(args.out, "torch").initial)
    else:
        run = run_jax(script, args.steps, _with_ties(Run.load(args.out, "torch")), wide=args.framework == JAX_FLOAT64_RUN)
    run.save(args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
