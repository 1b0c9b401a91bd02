"""`porter bench`: the original (torch eager, torch.compile) against the converted model (jax.jit).

`bench_models(torch_model, flax_model, *inputs)` times, in this process, on the CPU:

- forward: inference (torch: eval mode under `torch.inference_mode()`; flax:
  eval mode, a jitted `nnx.merge(graphdef, state)(*inputs)`);
- train step: train mode (dropout and batch norm as in training), forward,
  loss = sum_i sum(output_i * c_i) over the float outputs with fixed random
  cotangents c_i, backward, and a plain SGD update (torch.optim.SGD /
  optax.sgd, the same learning rate).

Variants: torch eager; `torch.compile(model)` (the default inductor backend,
`dynamic=False`; forward and backward compiled, the optimizer step eager;
reported as failed, with the reason, where it does not work on the machine);
the converted model under `jax.jit`, written the low-overhead way the design
notes ask for: `nnx.split` once, a function of the flat list of state arrays
that `nnx.merge`s inside the trace, compiled ahead of time
(`jax.jit(...).lower(...).compile()`), the train step's state donated. No
`nnx.jit` (about 1.8 ms of graph bookkeeping per call). Optionally a fourth
variant, `handwritten=`: the same model written by hand in NNX (the limit for
what porter emits), timed the same way; the two jax variants are timed call
for call in turn, so a change in machine load touches both alike and their
ratio is the figure to trust most.

Each timing is the median of `repeats` calls after `warmup` calls, each call
waited for (torch is synchronous on the CPU; jax results are blocked on), all
in one process. torch eager and the jax variants are timed in turn, one call of
each per round in a shuffled order (a short call after an untimed one of its
own, so it finds the caches as a training loop would), so a change in machine load
during the measurement touches them alike and their ratios hold on a busy
machine; torch.compile is measured before them, alone (its compilation must
not land between their calls). Compile time is reported separately: jax's lower+compile,
torch.compile's first call (tracing, inductor code generation and one run).
Peak memory, where measurable, is what one call allocates beyond what
exists before it: for torch the peak of the allocator events `torch.profiler`
records (profile_memory=True) during one extra call, for jax XLA's buffer
assignment of the compiled executable (temporaries + outputs,
`Compiled.memory_analysis()`); parameters and inputs are not counted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

VARIANTS = ("torch eager", "torch.compile", "jax.jit (converted)")
HANDWRITTEN = "jax.jit (hand-written)"  # optional: the same model written by hand in NNX
EMITTED = "fast_partial (converted)"  # optional: the train step as porter emits it for a training loop


def limit_threads(n: int) -> None:
    """Both frameworks on n intra-op threads. Call before jax is imported (XLA reads its flags once)."""
    import sys

    if "jax" in sys.modules:
        raise RuntimeError("limit_threads must run before jax is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    extra = f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} intra_op_parallelism_threads={n}"
    os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()
    import torch

    torch.set_num_threads(n)


@dataclass
class Measurement:
    median_ms: float | None = None
    spread_ms: tuple[float, float] | None = None  # (25th, 75th percentile)
    min_ms: float | None = None
    compile_s: float | None = None
    peak_bytes: int | None = None
    error: str | None = None


@dataclass
class VariantResult:
    variant: str
    forward: Measurement = field(default_factory=Measurement)
    train: Measurement = field(default_factory=Measurement)


@dataclass
class BenchResult:
    name: str
    inputs: list[str]
    results: list[VariantResult]
    settings: dict[str, Any]
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def result(self, variant: str) -> VariantResult:
        return next(r for r in self.results if r.variant == variant)

    def has(self, variant: str) -> bool:
        return any(r.variant == variant for r in self.results)

    def ratio(self, variant: str, what: str, stat: str | None = None, base: str = "torch eager") -> float | None:
        """How many times faster than `base` (base time / this time), on the median or the min."""
        if not self.has(base):
            return None
        attr = f"{stat or self.settings.get('stat', 'median')}_ms"
        base_ms = getattr(getattr(self.result(base), what), attr)
        mine = getattr(getattr(self.result(variant), what), attr)
        if base_ms is None or mine is None or mine <= 0:
            return None
        return base_ms / mine

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "inputs": self.inputs, "settings": self.settings, "machine": self.machine,
               "notes": self.notes, "results": []}
        for r in self.results:
            row = {"variant": r.variant}
            for what in ("forward", "train"):
                m = asdict(getattr(r, what))
                m["speedup_vs_torch_eager"] = self.ratio(r.variant, what, "median")
                m["speedup_vs_torch_eager_min"] = self.ratio(r.variant, what, "min")
                if self.has(HANDWRITTEN):
                    m["speed_vs_handwritten"] = self.ratio(r.variant, what, "median", base=HANDWRITTEN)
                row[what] = m
            out["results"].append(row)
        return out

    def format(self) -> str:
        s = self.settings
        m = self.machine
        xla = " " + m["xla_flags"] if m.get("xla_flags") else ""
        load = f", load average {m['load_average_1min']:.1f}" if m.get("load_average_1min") is not None else ""
        lines = [f"porter bench: {self.name}, inputs {', '.join(self.inputs)}",
                 f"  {m['cpu']}{load}, torch {m['torch']} ({m['torch_threads']} threads), jax {m['jax']} "
                 f"({m['jax_backend']}{xla}); median of {s['repeats']} calls after {s['warmup']} warm-up calls, "
                 f"one process"]
        lines += [f"  {note}" for note in self.notes]
        stat = s.get("stat", "median")
        head = ("variant", "forward ms", "min", f"x eager", "train step ms", "min", "x eager",
                "compile s (fwd/train)", "peak mem (fwd/train)")
        table = [head]
        for r in self.results:
            def ms(v: float | None) -> str:
                return "-" if v is None else f"{v:.3f}"

            def ratio(what: str) -> str:
                x = self.ratio(r.variant, what)
                return "-" if x is None else f"{x:.2f}"

            def pair(a, b, fmt) -> str:
                return f"{fmt(a)} / {fmt(b)}"

            compile_s = pair(r.forward.compile_s, r.train.compile_s, lambda v: "-" if v is None else f"{v:.2f}")
            peak = pair(r.forward.peak_bytes, r.train.peak_bytes, _mb)
            if r.variant == "torch eager":
                compile_s = "-"
            table.append((r.variant, ms(r.forward.median_ms), ms(r.forward.min_ms), ratio("forward"),
                          ms(r.train.median_ms), ms(r.train.min_ms), ratio("train"), compile_s, peak))
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        for row in table:
            lines.append("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                                          enumerate(zip(row, widths))))
        for r in self.results:
            for what in ("forward", "train"):
                err = getattr(r, what).error
                if err:
                    lines.append(f"  {r.variant} {what}: not measured: {err}")
        if self.has(HANDWRITTEN):
            ratios = [self.ratio("jax.jit (converted)", what, base=HANDWRITTEN) for what in ("forward", "train")]
            shown = ["-" if x is None else f"{x:.2f}" for x in ratios]
            lines.append(f"  converted / hand-written speed (hand-written time / converted time, {stat}): "
                         f"forward {shown[0]}, train step {shown[1]}")
        lines.append(f"  ms: median, and min, of the timed calls; x eager: torch eager's {stat} time / this "
                     f"variant's (above 1: faster than torch eager)")
        if s.get("interleaved"):
            lines.append("  torch eager and the jax variants were timed in turn, one call of each per round, so a "
                         "change in machine load touches them alike (torch.compile: before them, alone)")
        return "\n".join(lines)


# ---------------------------------------------------------------- timing helpers


def _mb(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 2**20:
        return f"{value / 2**10:.0f}K"
    return f"{value / 2**20:.1f}M"


def _time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> tuple[float, tuple[float, float, float]]:
    """(median, (25th percentile, 75th percentile, min)) in ms."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return _summarise(samples)


def _summarise(samples: list[float]) -> tuple[float, tuple[float, float, float]]:
    q = statistics.quantiles(samples, n=4) if len(samples) > 1 else [samples[0]] * 3
    return statistics.median(samples), (q[0], q[2], min(samples))


def _store(m: Measurement, timed: tuple[float, tuple[float, float, float]]) -> None:
    m.median_ms, (q1, q3, m.min_ms) = timed[0], timed[1]
    m.spread_ms = (q1, q3)


def _torch_peak(fn: Callable[[], Any]) -> int | None:
    """Peak bytes allocated during one call of fn, from the profiler's allocator events."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # profiler internals differ between torch versions: then not measurable
        return None
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _flatten(obj: Any) -> list[Any]:
    if isinstance(obj, Mapping):
        return [leaf for v in obj.values() for leaf in _flatten(v)]
    if isinstance(obj, (tuple, list)):
        return [leaf for v in obj for leaf in _flatten(v)]
    return [] if obj is None else [obj]


# ---------------------------------------------------------------- torch


def _torch_compile_variant(model: Any, args, kwargs, cotangents, lr: float, repeats: int, warmup: int,
                           train: bool) -> VariantResult:
    import torch

    torch._dynamo.reset()
    try:
        compiled_model = torch.compile(model, dynamic=False)
    except Exception as exc:
        failed = VariantResult("torch.compile")
        failed.forward.error = failed.train.error = f"torch.compile failed: {_error_text(exc)}"
        return failed
    res = _torch_variant("torch.compile", model, compiled_model, args, kwargs, cotangents, lr, repeats, warmup,
                         train, compiled=True)
    for m in (res.forward, res.train):
        if m.error and not m.error.startswith("no train"):
            m.error = f"torch.compile does not work here: {m.error}"
    return res


def _torch_variant(name: str, model: Any, call_model: Callable, args, kwargs, cotangents, lr: float,
                   repeats: int, warmup: int, train: bool, compiled: bool) -> VariantResult:
    import torch

    result = VariantResult(name)
    # forward: eval, inference mode
    model.eval()

    def forward():
        with torch.inference_mode():
            return call_model(*args, **kwargs)

    try:
        t0 = time.perf_counter()
        forward()
        first = time.perf_counter() - t0
        _store(result.forward, _time_calls(forward, repeats, warmup))
        result.forward.compile_s = first if compiled else None
        result.forward.peak_bytes = _torch_peak(forward)
    except Exception as exc:
        result.forward.error = _error_text(exc)
    if not train:
        result.train.error = "no train step (--no-train, or no float output to build a loss from)"
        return result

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def step():
        optimizer.zero_grad(set_to_none=True)
        outs = [o for o in _flatten(call_model(*args, **kwargs)) if o.is_floating_point()]
        loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
        loss.backward()
        optimizer.step()
        return loss

    try:
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        _store(result.train, _time_calls(step, repeats, warmup))
        result.train.compile_s = first if compiled else None
        result.train.peak_bytes = _torch_peak(step)
    except Exception as exc:
        result.train.error = _error_text(exc)
    finally:
        model.eval()
    return result


# ---------------------------------------------------------------- jax


@dataclass
class _Prepared:
    """A variant ready to time (compiled, warm): the calls to time (None where it failed), and
    `phase(what)`, called before the forward or train calls are timed (torch's eval/train mode)."""

    result: VariantResult
    forward: Callable[[], Any] | None = None
    train: Callable[[], Any] | None = None
    phase: Callable[[str], None] | None = None


def _prepare_torch_eager(model: Any, args, kwargs, cotangents, lr: float, train: bool) -> _Prepared:
    """torch eager's forward (eval, inference mode) and train step (train mode, SGD), peak memory."""
    import torch

    prepared = _Prepared(VariantResult("torch eager"))
    prepared.phase = lambda what: model.train() if what == "train" else model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def forward():
        with torch.inference_mode():
            return model(*args, **kwargs)

    def step():
        optimizer.zero_grad(set_to_none=True)
        outs = [o for o in _flatten(model(*args, **kwargs)) if o.is_floating_point()]
        loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
        loss.backward()
        optimizer.step()
        return loss

    calls = [("forward", forward)] + ([("train", step)] if train else [])
    for what, fn in calls:
        prepared.phase(what)
        try:
            fn()
            getattr(prepared.result, what).peak_bytes = _torch_peak(fn)
            setattr(prepared, what, fn)
        except Exception as exc:
            getattr(prepared.result, what).error = _error_text(exc)
    if not train:
        prepared.result.train.error = "no train step (--no-train, or no float output to build a loss from)"
    model.eval()
    return prepared


def _prepare_jax(name: str, flax_model: Any, args, kwargs, cotangents, lr: float, train: bool) -> _Prepared:
    """Compile the forward pass and the train step of one flax model (compile time, peak memory)."""
    import jax
    from flax import nnx

    prepared = _Prepared(VariantResult(name))
    result = prepared.result

    # forward: eval mode; one jitted function of the flat state arrays
    flax_model.eval()
    graphdef, state = nnx.split(flax_model)
    leaves, treedef = jax.tree.flatten(state)

    def forward_fn(leaves, args, kwargs):
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        return model(*args, **kwargs)

    try:
        t0 = time.perf_counter()
        forward = jax.jit(forward_fn).lower(leaves, args, kwargs).compile()
        result.forward.compile_s = time.perf_counter() - t0
        result.forward.peak_bytes = _xla_peak(forward)
        prepared.forward = lambda: jax.block_until_ready(forward(leaves, args, kwargs))
    except Exception as exc:
        result.forward.error = _error_text(exc)
    if not train:
        result.train.error = "no train step (--no-train, or no float output to build a loss from)"
        return prepared

    flax_model.train()
    try:
        t0 = time.perf_counter()
        step_fn, carry, _ = jax_train_step(flax_model, args, kwargs, cotangents, lr)
        result.train.compile_s = time.perf_counter() - t0
        result.train.peak_bytes = _xla_peak(step_fn)
        box = [carry]

        def step():
            box[0], loss = step_fn(box[0], args, kwargs)
            return jax.block_until_ready(loss)

        prepared.train = step
    except Exception as exc:
        result.train.error = _error_text(exc)
    finally:
        flax_model.eval()
    return prepared


def _prepare_emitted_step(flax_model: Any, args, kwargs, cotangents, lr: float) -> _Prepared:
    """The train step the way porter writes a converted training loop (README, "Training loops"):
    `@nnx.jit` over model and optimizer, called through `fast_partial`; on a copy of the model.
    No forward: porter emits no jitted inference function."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from porter.emitted_training import fast_partial

    prepared = _Prepared(VariantResult(EMITTED))
    prepared.result.forward.error = "porter emits no jitted forward; see jax.jit (converted)"
    model = nnx.clone(flax_model)
    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(lr), wrt=nnx.Param)
    cots = [jnp.asarray(c) for c in cotangents]

    @nnx.jit
    def train_step(model, optimizer, args, kwargs):
        def loss_fn(model):
            outs = [o for o in _flatten(model(*args, **kwargs)) if jnp.issubdtype(o.dtype, jnp.floating)]
            return sum(jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cots))

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    step = fast_partial(train_step, model, optimizer)
    try:
        t0 = time.perf_counter()
        jax.block_until_ready(step(args, kwargs))  # the first call traces and compiles
        prepared.result.train.compile_s = time.perf_counter() - t0
        prepared.train = lambda: jax.block_until_ready(step(args, kwargs))
    except Exception as exc:
        prepared.result.train.error = _error_text(exc)
    return prepared


SHORT_CALL_MS = 20.0  # below this, a call's time depends on what ran just before it (caches)


def _time_side_by_side(prepared: list[_Prepared], repeats: int, warmup: int) -> None:
    """Time the prepared variants' calls in turn, one timed call of each per round in a shuffled
    order, so that a change in machine load during the measurement touches every variant alike.

    A short call (under SHORT_CALL_MS) gets one untimed call of its own just before its timed one:
    a training loop runs the same step back to back, so its timed call should find the caches as
    its own step left them, not as the other framework's did.
    """
    order = random.Random(0)
    for what in ("forward", "train"):
        for p in prepared:
            if p.phase:
                p.phase(what)
        ready = [(p, fn, _warm_up(p, what, fn, warmup)) for p in prepared if (fn := getattr(p, what)) is not None]
        ready = [(p, fn, last_ms) for p, fn, last_ms in ready if getattr(p.result, what).error is None]
        samples: list[list[float]] = [[] for _ in ready]
        for _ in range(repeats):
            for i in order.sample(range(len(ready)), len(ready)):
                _, fn, last_ms = ready[i]
                if last_ms < SHORT_CALL_MS:
                    fn()
                t0 = time.perf_counter()
                fn()
                samples[i].append((time.perf_counter() - t0) * 1e3)
        for (p, _, _), times in zip(ready, samples):
            _store(getattr(p.result, what), _summarise(times))


def _warm_up(p: _Prepared, what: str, fn: Callable[[], Any], warmup: int) -> float:
    """Run the warm-up calls; the last one's time in ms (inf where the call failed: then noted)."""
    last_ms = math.inf
    try:
        for _ in range(max(warmup, 1)):
            t0 = time.perf_counter()
            fn()
            last_ms = (time.perf_counter() - t0) * 1e3
    except Exception as exc:
        getattr(p.result, what).error = _error_text(exc)
    return last_ms


def jax_train_step(flax_model: Any, args, kwargs, cotangents, lr: float):
    """(compiled step, initial carry, unflatten): step(carry, args, kwargs) -> (carry, loss).

    The carry is the flat list of the parameters, the rest of the state (batch statistics, RNG
    counters) and the optimizer state, donated, so a step reuses the previous step's buffers; it
    starts as a copy of the model's arrays. unflatten(carry) -> (params, rest, opt_state).
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)
    tx = optax.sgd(lr)
    opt_state = tx.init(params)
    carry, carry_def = jax.tree.flatten((params, rest, opt_state))
    carry = [jnp.array(x, copy=True) for x in carry]  # donated: must not be the model's own buffers
    cots = [jnp.asarray(c) for c in cotangents]

    def step_fn(carry, args, kwargs):
        params, rest, opt_state = jax.tree.unflatten(carry_def, carry)

        def loss_fn(params):
            # copy=True: rest's Variables belong to the jit trace; batch norm writes them under grad's
            model = nnx.merge(graphdef, params, rest, copy=True)
            outs = [o for o in _flatten(model(*args, **kwargs)) if jnp.issubdtype(o.dtype, jnp.floating)]
            loss = sum(jnp.sum(o.astype(jnp.float32) * c) for o, c in zip(outs, cots))
            return loss, nnx.split(model, nnx.Param, ...)[2]

        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return jax.tree.leaves((params, new_rest, opt_state)), loss

    compiled = jax.jit(step_fn, donate_argnums=0).lower(carry, args, kwargs).compile()
    return compiled, carry, lambda leaves: jax.tree.unflatten(carry_def, leaves)


def _xla_peak(compiled: Any) -> int | None:
    try:
        stats = compiled.memory_analysis()
    except Exception:
        return None
    if stats is None:
        return None
    return int(stats.temp_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes)


# ---------------------------------------------------------------- the benchmark


def machine_info() -> dict[str, Any]:
    import jax
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": f"{cpu}, {os.cpu_count()} cores", "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
            "jax_backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_average_1min": load, "python": platform.python_version()}


def bench_models(torch_model: Any, flax_model: Any, *inputs: Any, kw_inputs: Mapping[str, Any] | None = None,
                 name: str | None = None, repeats: int = 20, warmup: int = 3, compile: bool = True,
                 train: bool = True, lr: float = 1e-3, seed: int = 0, load_weights: bool = True,
                 stat: str = "median", handwritten: Any = None, emitted_step: bool = False) -> BenchResult:
    """Time forward and train step of torch eager, torch.compile and the converted model under jax.jit.

    `handwritten`: optionally the same model written by hand in NNX, with the original's weights
    already in it (its layout is its own business), timed like the converted one, call for call
    in turn with it, as a fourth variant. `emitted_step`: also time the train step the way porter
    emits it in a converted training loop (nnx.jit through fast_partial), in the same turns.
    """
    import jax
    import torch

    from porter.weights.arrays import to_numpy
    from porter.weights.loader import load_torch_state_dict

    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if stat not in ("median", "min"):
        raise ValueError("stat must be 'median' or 'min'")
    notes: list[str] = []
    if load_weights:
        load_torch_state_dict(flax_model, torch_model.state_dict(), strict=True)
    cpu = jax.devices("cpu")[0]
    items = [(i, to_numpy(x)) for i, x in enumerate(inputs)] + [(k, to_numpy(v)) for k, v in
                                                                  (kw_inputs or {}).items()]
    t_args = [torch.from_numpy(a.copy()) for k, a in items if isinstance(k, int)]
    t_kwargs = {k: torch.from_numpy(a.copy()) for k, a in items if isinstance(k, str)}

    def to_jax(a: np.ndarray):
        if a.dtype == np.int64 and not jax.config.jax_enable_x64:
            a = a.astype(np.int32)
        return jax.device_put(a, cpu)

    j_args = [to_jax(a) for k, a in items if isinstance(k, int)]
    j_kwargs = {k: to_jax(a) for k, a in items if isinstance(k, str)}

    torch_model.eval()
    with torch.no_grad():
        outs = [o for o in _flatten(torch_model(*t_args, **t_kwargs)) if o.is_floating_point()]
    rng = np.random.default_rng(seed)
    cotangents = [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outs]
    do_train = train and bool(cotangents)
    t_cots = [torch.from_numpy(c) for c in cotangents]
    state_before = {k: v.clone() for k, v in torch_model.state_dict().items()}

    results = []
    if compile:  # first, alone: its compilation must not land between the timed calls of the others
        results.append(_torch_compile_variant(torch_model, t_args, t_kwargs, t_cots, lr, repeats, warmup, do_train))
        torch_model.load_state_dict(state_before)  # every variant trains from the same weights
    else:
        skipped = VariantResult("torch.compile")
        skipped.forward.error = skipped.train.error = "skipped (--no-compile)"
        results.append(skipped)
    flax_models = [("jax.jit (converted)", flax_model)] + ([(HANDWRITTEN, handwritten)] if handwritten else [])
    with jax.default_device(cpu):
        prepared = [_prepare_torch_eager(torch_model, t_args, t_kwargs, t_cots, lr, do_train)]
        prepared += [_prepare_jax(variant, model, j_args, j_kwargs, cotangents, lr, do_train)
                     for variant, model in flax_models]
        if emitted_step and do_train:
            prepared.append(_prepare_emitted_step(flax_model, j_args, j_kwargs, cotangents, lr))
        _time_side_by_side(prepared, repeats, warmup)
    torch_model.eval()
    torch_model.load_state_dict(state_before)
    results = [prepared[0].result] + results + [p.result for p in prepared[1:]]

    if not do_train and train:
        notes.append("no float output: no train step")
    shown = [f"{a.dtype}{tuple(a.shape)}" if isinstance(k, int) else f"{k}={a.dtype}{tuple(a.shape)}"
             for k, a in items]
    settings = {"repeats": repeats, "warmup": warmup, "lr": lr, "seed": seed, "optimizer": "SGD",
                "loss": "sum(output * fixed random cotangent)", "torch_compile": compile, "stat": stat,
                "interleaved": True}
    return BenchResult(name or type(torch_model).__name__, shown, results, settings, machine_info(), notes)


def write_json(results: list[BenchResult], path: str) -> None:
    data = [r.to_json() for r in results]
    text = json.dumps(data if len(data) != 1 else data[0], indent=2, default=_json_default)
    if path == "-":
        print(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(results: list[BenchResult], path: str) -> None:
    """Grouped bars: forward and train-step time per variant, one panel per benchmark (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.6), squeeze=False)
    for ax, res in zip(axes[0], results):
        xs = np.arange(2)
        width = 0.8 / len(res.results)
        for i, r in enumerate(res.results):
            values = [r.forward.median_ms or 0.0, r.train.median_ms or 0.0]
            ax.bar(xs + (i - (len(res.results) - 1) / 2) * width, values, width, label=r.variant)
        ax.set_xticks(xs, ["forward", "train step"])
        ax.set_ylabel("ms (median)")
        ax.set_title(f"{res.name}\n{', '.join(res.inputs)}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
