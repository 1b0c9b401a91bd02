"""Numerical equivalence of a torch model and its Flax NNX conversion.

`check_equivalence(torch_model, flax_model, *inputs, kw_inputs=None, ...)`:

1. copies the torch model's state_dict into the flax model (strict,
   porter.weights.load_torch_state_dict), unless load_weights=False; then
   casts both models' floating-point parameters and buffers to `dtype`
   (float32, bfloat16 or float16) and puts both on the same device (CPU by
   default);
2. puts both in eval mode, or with mode="train" in train mode with dropout
   switched off on both sides (torch: every `nn.Dropout*` and
   `nn.MultiheadAttention` module in eval; flax:
   `set_attributes(deterministic=True)`), so batch norm normalises with batch
   statistics and updates its running statistics. Both are left in eval mode
   afterwards, with the torch parameters' `.grad` filled. (A functional
   `F.dropout(x, training=self.training)` in the original cannot be switched
   off from outside: check such a model in eval mode.);
3. runs both on the same inputs (numpy arrays or torch tensors, positional and
   keyword; float inputs cast to `dtype`, integer inputs such as token ids kept
   integer) and compares every output array (a tensor, or tuples/lists/dicts of
   them). The flax model runs eagerly, and (jit=True, default) once more under
   `jax.jit` over nnx.split/merge: row kind "jit", "forward under jax.jit",
   its outputs against the eager run's (output tolerance), or failed with the
   exception, its first line and the innermost frame of the user's code (a
   Python `if` on a traced value, a tracer's `.device`, boolean-mask
   indexing). A failed jit row fails the check; every other row is still
   computed, eagerly. With layers=True (default) every submodule's output is
   captured on both sides (porter.check.layers) and compared in execution
   order: the first module out of tolerance is the first divergence, reported
   with its path and where both classes are defined and assigned;
4. takes the gradient of loss = sum_i sum(output_i * c_i), where each
   cotangent c_i is drawn from numpy's default_rng(seed) (rounded to `dtype`),
   with respect to every float input and every torch parameter; the flax
   gradients, computed under `jax.jit(jax.grad(...))` over nnx.split/merge
   as training will run them (a row "gradients under jax.jit(jax.grad)";
   eagerly when the forward or that fails, and a failed row kind "grad" when
   even the eager jax.grad raises), are mapped back to torch names and layouts (the
   layout's to_torch) and compared, one row per parameter. A gradient that is
   zero in exact arithmetic (a bias in front of a train-mode batch norm) is
   rounding noise in both frameworks: such a row passes when max_abs <=
   NOISE_EPS (64) eps times the largest gradient of the check, and says so;
5. with train_steps=k > 0, takes k plain SGD steps (p -= lr * grad of that
   loss, the same inputs each step) on both sides and compares every
   state_dict entry afterwards: parameters and buffers, batch-norm running
   statistics included (`num_batches_tracked` has no flax counterpart).

Metric, per array: max_abs = max|a - b| and rel = max_abs / max(max|ref|, tiny),
ref being the torch value and tiny the smallest normal float32. That is a
norm-wise (infinity-norm) relative error, not an elementwise one: float sums
round relative to the magnitude of the whole computation, so an element that
happens to be near zero (a cancelling sum, a ReLU edge) carries an absolute
error of order eps*max|ref| and would fail any elementwise relative test
although both frameworks are right. Norm-wise, errors are judged against the
scale of the array, which is what an acceptance criterion such as "outputs
within 1e-5" means.

An array passes when rel <= rtol or max_abs <= atol. Default tolerances per
dtype (TOLERANCES; rtol/atol/grad_rtol/grad_atol override them), eps being
the dtype's machine epsilon (float32 2^-23, bfloat16 2^-7, float16 2^-10):

| dtype    | outputs, layers       | gradients, state after k steps |
|----------|-----------------------|--------------------------------|
| float32  | 1e-5 (84 eps)         | 1e-4 (840 eps)                 |
| bfloat16 | 2^-5 = 0.031 (4 eps)  | 2^-4 = 0.0625 (8 eps)          |
| float16  | 2^-8 = 0.0039 (4 eps) | 2^-7 = 0.0078 (8 eps)          |

float32's are the project's acceptance criteria. In 16 bits the two
frameworks round at different places (torch's CPU kernels accumulate 16-bit
matmuls and reductions in float32; XLA:CPU accumulates a 16-bit reduction such
as a bias gradient in 16 bits and fuses elementwise chains), and a
saturating op (tanh) or a tie (max-pool, ReLU at 0) can turn a rounding
difference into a large one. So for bfloat16/float16 a float32 copy of the
original runs on the same (16-bit-rounded) inputs as the yardstick, and an
array out of tolerance still passes when the converted model's error against
that float32 result is at most LOWP_FACTOR (2) times the original's own
16-bit error: the converted model is then as accurate as the original in
that dtype. The row's note gives both figures ("vs float32 converted X,
torch Y"). (Measured 2026-11-26 with torch 2.13 / jax 0.10.2 on the
fixtures' MLP, LeNet, transformer block and TinyGPT, conv/batch-norm net, three
seeds each: every output within the table in both dtypes;
tests/test_check_modes.py checks the transformer block. LeNet's bfloat16 bias
gradients came out up to 10x less accurate in JAX than in torch, because of
the 16-bit accumulation, and fail.) atol is 1e-12 for all, only there so that arrays that are all (near)
zero in both frameworks, such as the gradient of an unused parameter, pass.
Integer and boolean outputs must be equal. NaNs must sit in the same places.

Precision and hardware: device="cpu" (default) runs both on the CPU, where
jax computes float32 matmuls and convolutions in full float32, so nothing is
changed. device="gpu" runs both on the GPU (torch "cuda", jax's first gpu
device) and, unless allow_tf32=True, turns TF32 off on both sides for the
check: torch's matmul and cuDNN fp32 precision "ieee" (the legacy allow_tf32
flags on an older torch), cuDNN deterministic, and the flax side under
`jax.default_matmul_precision("highest")`. With allow_tf32=True both keep
TF32 and the default tolerances become float16's (TF32 keeps float16's
10-bit mantissa). The report says which precision was used.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from porter.check import layers as layerlib
from porter.check.conditioning import explain_by_conditioning
from porter.weights.arrays import is_torch_tensor, to_numpy
from porter.weights.loader import load_torch_state_dict
from porter.weights.mapping import build_mapping
from porter.weights.plan import identity_of

OUTPUT_RTOL = 1e-5
GRAD_RTOL = 1e-4
DEFAULT_ATOL = 1e-12
TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Tolerance:
    output: float  # outputs and per-layer outputs
    grad: float  # gradients, and the state after k training steps


TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(OUTPUT_RTOL, GRAD_RTOL),
    "bfloat16": Tolerance(2.0**-5, 2.0**-4),
    "float16": Tolerance(2.0**-8, 2.0**-7),
}
TF32_TOLERANCE = TOLERANCES["float16"]
DTYPES = tuple(TOLERANCES)
MODES = ("eval", "train")
DEVICES = ("cpu", "gpu")


class ModelRunError(RuntimeError):
    """One of the two models raised while running; `.side` is 'original' or 'converted'."""

    def __init__(self, side: str, exc: BaseException, where: str = ""):
        self.side = side
        super().__init__(f"the {side} model raised {type(exc).__name__}{' ' + where if where else ''}: {exc}")


TRANSFORM_KINDS = ("jit", "grad")  # rows saying whether a run under a jax transform worked at all


@dataclass
class Row:
    kind: str  # "output", "grad input", "grad param", "state", "layer"; "jit", "grad" (TRANSFORM_KINDS)
    name: str
    shape: tuple[int, ...] | None
    max_abs: float
    rel: float
    ok: bool
    note: str = ""
    scale: float = float("nan")  # max|torch value|


@dataclass
class EquivalenceReport:
    torch_name: str = ""
    flax_name: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    output_rtol: float = OUTPUT_RTOL
    grad_rtol: float = GRAD_RTOL
    output_atol: float = DEFAULT_ATOL
    grad_atol: float = DEFAULT_ATOL
    mode: str = "eval"
    dtype: str = "float32"
    train_steps: int = 0
    layers: layerlib.LayerReport | None = None
    layer_rows: str = "all"  # how format() shows the layer table: "all", "first", "none"
    warnings: list[str] = field(default_factory=list)
    jit_ok: bool | None = None  # the forward (and the gradients) also ran under jax.jit (None: not tried)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if not row.ok]

    @property
    def first_divergence(self) -> layerlib.Divergence | None:
        return None if self.layers is None else self.layers.first

    def row(self, name: str, kind: str | None = None) -> Row:
        return next(r for r in self.rows if r.name == name and (kind is None or r.kind == kind))

    def format(self) -> str:
        lines = [f"porter check: {self.torch_name} (torch) vs {self.flax_name} (flax nnx), "
                 f"{self.mode} mode, {self.dtype}"]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  tolerances: outputs rtol {self.output_rtol:g} atol {self.output_atol:g}; "
                     f"gradients{' and state' if self.train_steps else ''} rtol {self.grad_rtol:g} "
                     f"atol {self.grad_atol:g} (rel = max|a-b| / max|torch|)")
        table = [("kind", "name", "shape", "max_abs", "rel", "result")]
        for row in self.rows:
            shape = "-" if row.shape is None else str(tuple(row.shape))
            verdict = "ok" if row.ok else "FAIL"
            if row.note:
                verdict += f"  {row.note}"
            table.append((row.kind, row.name, shape, f"{row.max_abs:.3g}", f"{row.rel:.3g}", verdict))
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5])
        if self.layers is not None and self.layer_rows != "none":
            lines += self.layers.format(limit=0 if self.layer_rows == "first" else None)
        lines += [f"WARNING: {w}" for w in self.warnings]
        arrays = [row for row in self.rows if row.kind not in TRANSFORM_KINDS]
        failed = sum(not row.ok for row in arrays)
        broken = [row.name for row in self.rows if row.kind in TRANSFORM_KINDS and not row.ok]
        if self.passed:
            verdict = f"PASS: all {len(arrays)} arrays within tolerance"
            if any(row.kind == "jit" for row in self.rows):
                verdict += ", and under jax.jit"
            rounding = sum(row.note.startswith("float32 rounding") for row in self.rows)
            if rounding:
                verdict += f" ({rounding} by the float64 verdict: float32 rounding decides them in torch too)"
            if self.layers is not None and self.layers.failures:
                verdict += (f" (but {len(self.layers.failures)} module outputs differ: "
                            f"first {self.layers.first.row.label})")
        elif broken and not failed:
            verdict = f"FAIL: the converted model runs eagerly but fails {' and '.join(broken)} (see the row); " \
                      f"all {len(arrays)} arrays within tolerance eagerly"
        elif self.rows:
            verdict = f"FAIL: {failed} of {len(arrays)} arrays out of tolerance"
            if broken:
                verdict += f"; fails {' and '.join(broken)}"
            if self.first_divergence is not None:
                verdict += f"; first diverging module: {self.first_divergence.row.label}"
        else:
            verdict = "FAIL: nothing was compared"
        lines.append(verdict)
        return "\n".join(lines)


def _flatten(obj: Any, name: str = "output") -> list[tuple[str, Any]]:
    if obj is None:
        return []
    if isinstance(obj, Mapping):
        return [leaf for k, v in obj.items() for leaf in _flatten(v, f"{name}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        return [leaf for i, v in enumerate(obj) for leaf in _flatten(v, f"{name}[{i}]")]
    return [(name, obj)]


def _is_float(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.floating) or a.dtype.kind == "V" or "float" in str(a.dtype)


def compare(kind: str, name: str, ref: Any, got: Any, rtol: float, atol: float) -> Row:
    """One row: `ref` (torch) against `got` (flax), norm-wise (see the module docstring)."""
    ref_a, got_a = to_numpy(ref), to_numpy(got)
    if ref_a.shape != got_a.shape:
        return Row(kind, name, tuple(ref_a.shape), float("inf"), float("inf"), False,
                   f"shape: torch {tuple(ref_a.shape)}, flax {tuple(got_a.shape)}")
    if not (_is_float(ref_a) or _is_float(got_a)):
        diff = np.abs(ref_a.astype(np.float64) - got_a.astype(np.float64)) if ref_a.size else np.zeros(0)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(ref_a.astype(np.float64)).max()) if ref_a.size else 0.0
        return Row(kind, name, tuple(ref_a.shape), max_abs, max_abs / max(scale, TINY), max_abs == 0.0,
                   "" if max_abs == 0.0 else "integer values differ")
    r, g = ref_a.astype(np.float64), got_a.astype(np.float64)
    nan_r, nan_g = np.isnan(r), np.isnan(g)
    if not np.array_equal(nan_r, nan_g):
        return Row(kind, name, tuple(r.shape), float("nan"), float("nan"), False, "NaNs in different places")
    keep = ~nan_r
    r, g = r[keep], g[keep]
    if r.size == 0:
        return Row(kind, name, tuple(ref_a.shape), 0.0, 0.0, True)
    inf_r, inf_g = np.isinf(r), np.isinf(g)
    if not np.array_equal(inf_r, inf_g) or not np.array_equal(r[inf_r], g[inf_g]):
        return Row(kind, name, tuple(ref_a.shape), float("inf"), float("inf"), False, "infinities differ")
    r, g = r[~inf_r], g[~inf_r]
    max_abs = float(np.abs(r - g).max()) if r.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    rel = max_abs / max(scale, TINY)
    return Row(kind, name, tuple(ref_a.shape), max_abs, rel, rel <= rtol or max_abs <= atol, scale=scale)


# ---------------------------------------------------------------- hardware and precision


def _devices(device: str) -> tuple[Any, Any]:
    """(torch device, jax device) for 'cpu' or 'gpu'; ValueError when a side has no GPU."""
    import torch

    if device == "cpu":
        return torch.device("cpu"), jax.devices("cpu")[0]
    if device != "gpu":
        raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    missing = []
    if not torch.cuda.is_available():
        missing.append(f"torch {torch.__version__} sees no CUDA device")
    try:
        jax_gpu = jax.devices("gpu")[0]
    except RuntimeError:
        jax_gpu = None
        missing.append(f"jax {jax.__version__} has no gpu backend (install jax[cuda12])")
    if missing:
        raise ValueError("--device gpu: " + "; ".join(missing))
    return torch.device("cuda"), jax_gpu


def _torch_fp32_flags(torch: Any) -> list[tuple[Any, str]]:
    """(object, attribute) pairs that choose TF32 for float32 matmuls/convolutions on a GPU."""
    b = torch.backends
    if hasattr(b.cuda.matmul, "fp32_precision") and hasattr(getattr(b.cudnn, "conv", None), "fp32_precision"):
        return [(b.cuda.matmul, "fp32_precision"), (b.cudnn.conv, "fp32_precision")]
    return [(b.cuda.matmul, "allow_tf32"), (b.cudnn, "allow_tf32")]


@contextlib.contextmanager
def precision(platform: str, allow_tf32: bool, notes: list[str]):
    """Same float32 precision on both sides for the check; a note says which."""
    import torch

    if platform == "cpu":
        notes.append("precision: jax backend cpu computes float32 matmuls/convolutions in full float32; "
                     "no precision setting changed (both models on the CPU)")
        yield
        return
    flags = _torch_fp32_flags(torch)
    saved = [(obj, name, getattr(obj, name)) for obj, name in flags]
    saved += [(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic),
              (torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)]
    legacy = flags[0][1] == "allow_tf32"
    value = (True if legacy else "tf32") if allow_tf32 else (False if legacy else "ieee")
    try:
        for obj, name in flags:
            setattr(obj, name, value)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if allow_tf32:
            notes.append(f"precision: both models on the {platform}; TF32 allowed on both sides (torch fp32 "
                         f"precision {value!r}, jax default matmul precision)")
            yield
        else:
            notes.append(f"precision: both models on the {platform}; TF32 off on both sides (torch fp32 precision "
                         f"{value!r}, jax.default_matmul_precision('highest')), cuDNN deterministic")
            with jax.default_matmul_precision("highest"):
                yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


# ---------------------------------------------------------------- dtypes and inputs


def _np_dtype(dtype: str) -> Any:
    return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _prepare_inputs(items: list[tuple[Any, Any]], dtype: str, notes: list[str]) -> list[tuple[Any, np.ndarray]]:
    out = []
    target = np.dtype(_np_dtype(dtype))
    for key, x in items:
        a = to_numpy(x)
        if _is_float(a):
            if a.dtype != target:
                notes.append(f"input {_input_name(key)}: {a.dtype} cast to {dtype}")
            a = a.astype(target)
        out.append((key, a))
    return out


def _input_name(key: Any) -> str:
    return f"input[{key!r}]"


def _to_torch(a: np.ndarray, device: Any) -> Any:
    import torch

    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(device=device, dtype=torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a).copy()).to(device)


def _jax_input(a: np.ndarray, device: Any = None) -> jax.Array:
    if a.dtype == np.int64 and not jax.config.jax_enable_x64:
        if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
            raise ValueError("an int64 input does not fit int32 (jax runs with 64-bit types off)")
        a = a.astype(np.int32)
    return jax.device_put(jnp.asarray(a), device) if device is not None else jnp.asarray(a)


def _split_args(values: list[tuple[Any, Any]]) -> tuple[list[Any], dict[str, Any]]:
    return [v for k, v in values if isinstance(k, int)], {k: v for k, v in values if isinstance(k, str)}


def _cast_flax_state(model: nnx.Module, dtype: str, device: Any) -> None:
    """Floating-point variables to `dtype`, every array onto `device`."""
    target = jnp.dtype(_np_dtype(dtype))

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != target:
            x = x.astype(target)
        return jax.device_put(x, device) if isinstance(x, jax.Array) else x

    nnx.update(model, jax.tree.map(cast, nnx.state(model)))


def _set_torch_mode(torch_model: Any, mode: str) -> int:
    """eval, or train with every dropout (and attention-dropout) module in eval; returns how many."""
    import torch

    if mode == "eval":
        torch_model.eval()
        return 0
    torch_model.train()
    switched = 0
    for module in torch_model.modules():
        if isinstance(module, (torch.nn.modules.dropout._DropoutNd, torch.nn.MultiheadAttention)):
            module.eval()
            switched += 1
    return switched


def _set_mode(torch_model: Any, flax_model: nnx.Module, mode: str, notes: list[str]) -> None:
    switched = _set_torch_mode(torch_model, mode)
    if mode == "eval":
        flax_model.eval()
        return
    flax_model.train()
    flax_model.set_attributes(deterministic=True, raise_if_not_found=False)
    notes.append(f"mode: train (batch norm uses batch statistics and updates its running statistics); "
                 f"dropout off on both sides ({switched} torch dropout/attention modules in eval, flax "
                 f"deterministic=True)")


# ---------------------------------------------------------------- the check


def check_equivalence(
    torch_model: Any,
    flax_model: nnx.Module,
    *inputs: Any,
    kw_inputs: Mapping[str, Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    grad_rtol: float | None = None,
    grad_atol: float | None = None,
    load_weights: bool = True,
    grads: bool = True,
    seed: int = 0,
    mode: str = "eval",
    train_steps: int = 0,
    lr: float = 1e-2,
    dtype: str = "float32",
    device: str = "cpu",
    allow_tf32: bool = False,
    layers: bool = True,
    jit: bool = True,
) -> EquivalenceReport:
    """Compare outputs, per-layer outputs, gradients (and the state after k steps) of the two models.

    See the module docstring. rtol/atol apply to outputs and per-layer outputs
    and, unless grad_rtol/grad_atol are given, to gradients and state too; left
    None they are the defaults for `dtype` (TOLERANCES). With the default
    float32 tolerances, outputs and gradients out of tolerance get the float64
    verdict (porter/check/conditioning.py): those float32 rounding decides in the
    original too pass, with a note.
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if train_steps < 0:
        raise ValueError("train_steps must be >= 0")
    torch_device, jax_device = _devices(device)
    tf32 = allow_tf32 and device == "gpu"
    tol = TOLERANCES[dtype] if not (tf32 and dtype == "float32") else TF32_TOLERANCE
    report = EquivalenceReport(
        torch_name=type(torch_model).__name__, flax_name=type(flax_model).__name__,
        output_rtol=tol.output if rtol is None else rtol,
        grad_rtol=grad_rtol if grad_rtol is not None else (tol.grad if rtol is None else rtol),
        output_atol=DEFAULT_ATOL if atol is None else atol,
        grad_atol=grad_atol if grad_atol is not None else (DEFAULT_ATOL if atol is None else atol),
        mode=mode, dtype=dtype, train_steps=train_steps,
    )
    notes = report.notes
    if load_weights:
        loaded = load_torch_state_dict(flax_model, torch_model.state_dict(), strict=True)
        notes.append(f"weights: {len(loaded.loaded)} torch state_dict entries loaded into the flax model "
                     f"({len(loaded.transposed)} transposed, {len(loaded.ignored)} ignored)")
    torch_model.to(device=torch_device)
    reference = None
    if dtype != "float32":
        reference = copy.deepcopy(torch_model)  # float32, the yardstick for both 16-bit runs
        _set_torch_mode(reference, mode)
        torch_model.to(dtype=_torch_dtype(dtype))
        notes.append(f"dtype: both models' floating-point parameters and buffers cast to {dtype}; a float32 "
                     f"copy of the original is the reference for rows out of tolerance (see 'vs float32')")
    _cast_flax_state(flax_model, dtype, jax_device)
    _set_mode(torch_model, flax_model, mode, notes)
    default_tolerances = rtol is None and atol is None and grad_rtol is None and grad_atol is None
    verdict = dtype == "float32" and default_tolerances
    # train mode changes the original (running statistics, the K steps): the float64 verdict starts from a copy
    pristine = copy.deepcopy(torch_model) if verdict and mode == "train" else torch_model
    pristine_flax = nnx.clone(flax_model) if verdict and mode == "train" else flax_model

    items = [(i, x) for i, x in enumerate(inputs)] + list((kw_inputs or {}).items())
    arrays = _prepare_inputs(items, dtype, notes)
    notes.append("inputs: " + ", ".join(
        (f"{k}=" if isinstance(k, str) else "") + f"{a.dtype}{tuple(a.shape)}" for k, a in arrays))

    try:
        with precision(jax_device.platform, tf32, notes), jax.default_device(jax_device):
            cotangents = _run(report, torch_model, flax_model, arrays, torch_device, jax_device, grads=grads,
                              seed=seed, layers=layers, train_steps=train_steps, lr=lr, dtype=dtype,
                              reference=reference, jit=jit)
        if verdict and report.failures:
            converted64 = lambda: _converted_in_float64(pristine, pristine_flax, arrays, cotangents, jax_device)  # noqa: E731
            explain_by_conditioning(report, pristine, arrays, cotangents, torch_device, _run_reference,
                                    set_mode=lambda model: _set_torch_mode(model, mode), converted64=converted64)
        _name_convert_warnings(report, torch_model)
    finally:
        torch_model.eval()
        flax_model.eval()
    return report


def _converted_in_float64(torch_model: Any, flax_model: nnx.Module, arrays, cotangents: dict[str, np.ndarray],
                          jax_device: Any) -> dict[tuple[str, str], np.ndarray]:
    """The converted model's outputs and gradients (the check's loss) with jax's 64-bit types switched on
    and every float in float64, keyed as the report's rows: the float64 verdict's second witness
    (porter/check/conditioning.py). The model itself is left as it was."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)

        def widen(a):
            return a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a

        params, rest = jax.tree.map(widen, params), jax.tree.map(widen, rest)
        float_keys = [k for k, a in arrays if _is_float(a)]
        values = {k: jax.device_put(jnp.asarray(a.astype(np.float64) if _is_float(a) else a), jax_device)
                  for k, a in arrays}
        cot = {n: jnp.asarray(c, jnp.float64) for n, c in cotangents.items()}

        def loss(p, float_values):
            args, kwargs = _split_args(list({**values, **dict(zip(float_keys, float_values))}.items()))
            out = dict(_flatten(nnx.merge(graphdef, p, rest, copy=True)(*args, **kwargs)))
            return sum((jnp.sum(out[n] * c) for n, c in cot.items()), jnp.float64(0)), out

        (_, out), (param_grads, input_grads) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
            params, [values[k] for k in float_keys])
        got = {("output", n): np.asarray(v) for n, v in out.items()}
        got.update({("grad input", _input_name(k)): np.asarray(g) for k, g in zip(float_keys, input_grads)})
        _compare_param_grads(EquivalenceReport(), torch_model, flax_model, param_grads, build_mapping(flax_model),
                             lambda kind, name, ref, value, *tolerances: got.__setitem__((kind, name), value))
        return got
    finally:
        jax.config.update("jax_enable_x64", previous)


LOWP_FACTOR = 2.0  # 16-bit dtypes: the converted model may be up to this much less accurate than torch


@dataclass
class _Reference:
    """The float32 original's results, keyed (kind, name) / (path, call)."""

    arrays: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    layers: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)


def _run_reference(model: Any, arrays, torch_device, cotangents: dict[str, np.ndarray] | None,
                   layers: bool) -> _Reference:
    import torch

    ref = _Reference()
    items = []
    for key, a in arrays:
        t = _to_torch(a.astype(np.float32) if _is_float(a) and a.dtype != np.float64 else a, torch_device)
        if _is_float(a) and cotangents:
            t.requires_grad_(True)
        items.append((key, t))
    args, kwargs = _split_args(items)
    capture = layerlib.capture_torch(model) if layers else contextlib.nullcontext([])
    with capture as calls:
        out = model(*args, **kwargs)
    leaves = dict(_flatten(out))
    ref.arrays.update({("output", n): to_numpy(v) for n, v in leaves.items()})
    ref.layers = {(c.path, c.index): dict(c.leaves) for c in calls}
    if cotangents and all(n in leaves for n in cotangents):
        sum((leaves[n] * torch.from_numpy(c).to(torch_device)).sum() for n, c in cotangents.items()).backward()
        for key, t in items:
            if t.requires_grad:
                ref.arrays[("grad input", _input_name(key))] = to_numpy(
                    t.grad if t.grad is not None else torch.zeros_like(t))
        for name, p in model.named_parameters(remove_duplicate=False):
            ref.arrays[("grad param", name)] = to_numpy(p.grad if p.grad is not None else torch.zeros_like(p))
    return ref


def _judge(row: Row, ref: np.ndarray | None, torch_value: Any, flax_value: Any, dtype: str) -> None:
    """16-bit dtypes: a row out of tolerance passes if the converted model, measured against the float32
    original, is at most LOWP_FACTOR times less accurate than the original in the same dtype."""
    if row.ok or ref is None or row.rel != row.rel or row.rel == float("inf"):
        return
    e_torch = compare("", "", ref, torch_value, 0.0, 0.0).rel
    e_flax = compare("", "", ref, flax_value, 0.0, 0.0).rel
    if e_flax <= LOWP_FACTOR * e_torch:
        row.ok = True
        row.note = f"as accurate as torch in {dtype}: vs float32 converted {e_flax:.3g}, torch {e_torch:.3g}"
    else:
        row.note = (row.note + "; " if row.note else "") + \
            f"vs float32 converted {e_flax:.3g}, torch {e_torch:.3g}"


def _run(report: EquivalenceReport, torch_model: Any, flax_model: nnx.Module, arrays, torch_device,
         jax_device, *, grads: bool, seed: int, layers: bool, train_steps: int, lr: float, dtype: str,
         reference: Any = None, jit: bool = True) -> dict[str, np.ndarray]:
    """Fills the report; returns the cotangents the gradients were taken with (output name -> array)."""
    import torch

    notes = report.notes
    # --- torch forward, every submodule's output captured
    torch_items = []
    for key, a in arrays:
        t = _to_torch(a, torch_device)
        if _is_float(a) and grads:
            t.requires_grad_(True)
        torch_items.append((key, t))
    t_args, t_kwargs = _split_args(torch_items)
    torch_model.zero_grad(set_to_none=True)
    capture_t = layerlib.capture_torch(torch_model) if layers else contextlib.nullcontext([])
    try:
        with capture_t as torch_calls:
            torch_out = torch_model(*t_args, **t_kwargs)
    except Exception as exc:
        raise ModelRunError("original", exc) from exc
    torch_leaves = _flatten(torch_out)

    # --- cotangents, from the torch outputs' shapes, in output order, rounded to the dtype
    rng = np.random.default_rng(seed)
    cotangents: dict[str, np.ndarray] = {}
    for name, t in torch_leaves:
        if grads and is_torch_tensor(t) and t.is_floating_point() and t.requires_grad:
            c = rng.standard_normal(tuple(t.shape)).astype(np.float32)
            cotangents[name] = c.astype(_np_dtype(dtype)).astype(np.float32)
    ref = _run_reference(reference, arrays, torch_device, cotangents, layers) if reference is not None else None

    # --- flax forward, eagerly, the objects at the same paths captured
    jax_items = [(k, _jax_input(a, jax_device)) for k, a in arrays]
    j_args, j_kwargs = _split_args(jax_items)
    paths = list(dict.fromkeys(c.path for c in torch_calls))
    capture_f = layerlib.capture_flax(flax_model, paths) if layers else contextlib.nullcontext(([], {}))
    try:
        with capture_f as (flax_calls, found):
            flax_out = flax_model(*j_args, **j_kwargs)
    except Exception as exc:
        raise ModelRunError("converted", exc) from exc
    flax_leaves = dict(_flatten(flax_out))

    def add(kind: str, name: str, t: Any, f: Any, rtol: float, atol: float) -> None:
        row = compare(kind, name, t, f, rtol, atol)
        if ref is not None:
            _judge(row, ref.arrays.get((kind, name)), t, f, dtype)
        report.rows.append(row)

    # --- outputs
    same_structure = {n for n, _ in torch_leaves} == set(flax_leaves)
    for name, t in torch_leaves:
        if name not in flax_leaves:
            report.rows.append(Row("output", name, tuple(getattr(t, "shape", ())), float("inf"),
                                   float("inf"), False, "missing from the flax output"))
            continue
        add("output", name, t, flax_leaves[name], report.output_rtol, report.output_atol)
    torch_names = {n for n, _ in torch_leaves}
    for name in flax_leaves:
        if name not in torch_names:
            report.rows.append(Row("output", name, None, float("inf"), float("inf"), False,
                                   "only in the flax output"))
    # the same forward compiled, as training and inference will run it, against the eager run: its rows go
    # here, after the outputs; where gradients are taken, their compilation gives the compiled outputs too
    jit_at = len(report.rows)

    def jit_forward() -> Row:
        return _jit_forward_row(flax_model, j_args, j_kwargs, flax_leaves, dict(torch_leaves), report.output_rtol,
                                report.output_atol)

    differentiated = grads and same_structure and bool(cotangents)
    if jit and not differentiated:
        report.rows.insert(jit_at, jit_forward())
        report.jit_ok = report.rows[jit_at].ok

    # --- layers
    if layers:
        lrep = layerlib.compare_layers(torch_calls, flax_calls, found, compare,
                                       report.output_rtol, report.output_atol)
        if ref is not None:
            _judge_layers(lrep, torch_calls, flax_calls, ref, dtype, report.output_rtol, report.output_atol)
        layerlib.rerun_locally(lrep, torch_calls, flax_model, compare, report.output_rtol,
                               report.output_atol, lambda a: _jax_input(a, jax_device))
        layerlib.locate(lrep, torch_model, flax_model, found)
        report.layers = lrep

    if not grads:
        return cotangents
    if not same_structure:
        notes.append("gradients not compared: the outputs differ in structure")
        return {}
    if not cotangents:
        notes.append("gradients not compared: no differentiable float output")
        return cotangents
    torch_cot = {n: torch.from_numpy(c).to(torch_device) for n, c in cotangents.items()}
    jax_cot = {n: jax.device_put(jnp.asarray(c), jax_device) for n, c in cotangents.items()}

    def torch_loss(out):
        leaves = dict(_flatten(out))
        return sum((leaves[n] * c.to(leaves[n].dtype)).sum() for n, c in torch_cot.items())

    torch_loss(torch_out).backward()

    # --- flax: the same loss, differentiated w.r.t. float inputs and nnx.Param variables
    float_keys = [k for k, a in arrays if _is_float(a)]
    graphdef, param_state, rest = nnx.split(flax_model, nnx.Param, ...)

    def flax_outputs(model, float_values):
        values = dict(jax_items)
        values.update(zip(float_keys, float_values))
        args, kwargs = _split_args(list(values.items()))
        return dict(_flatten(model(*args, **kwargs)))

    def cotangent_loss(out):
        return sum(jnp.sum(out[n].astype(jnp.float32) * c) for n, c in jax_cot.items())

    def flax_loss(model, float_values):
        return cotangent_loss(flax_outputs(model, float_values))

    def loss_fn(p, float_values, rest):
        # copy=True: merge would otherwise reuse rest's Variable objects (jax.grad passes a
        # non-differentiated argument through as is), and in train mode batch norm writes its
        # statistics into them from inside the trace, which nnx refuses.
        return flax_loss(nnx.merge(graphdef, p, rest, copy=True), float_values)

    def loss_and_outputs(p, float_values, rest):
        out = flax_outputs(nnx.merge(graphdef, p, rest, copy=True), float_values)
        return cotangent_loss(out), out

    # Compiled, as training will run them (one compilation is also far cheaper than eager jax's
    # op-by-op dispatch). Code that runs eagerly but not under jit (a reduce_window whose init value
    # jit cannot see as a constant has no reverse-mode rule) fails the jit row and gets the eager figures;
    # code whose gradient fails even eagerly (a tracer has no .device) fails a row of its own.
    grad_fn = jax.grad(loss_fn, argnums=(0, 1))
    grad_args = (param_state, [dict(jax_items)[k] for k in float_keys], rest)
    grads_out = None
    if jit:
        grads_out = _jitted_gradients(report, jit_at, jax.grad(loss_and_outputs, argnums=(0, 1), has_aux=True),
                                      grad_args, flax_leaves, dict(torch_leaves), jit_forward)
        if grads_out is not None:
            notes.append("gradients: torch autograd; flax jax.jit(jax.grad(loss)) over nnx.split/nnx.merge")
    if grads_out is None:
        try:
            grads_out = grad_fn(*grad_args)
        except Exception as exc:
            report.rows.append(_failed_row("grad", "gradients under jax.grad (eager)", exc,
                                           "no gradient compared"))
            return cotangents
        notes.append("gradients: torch autograd; flax jax.grad(loss), eagerly")
    param_grads, input_grads = grads_out
    torch_inputs = dict(torch_items)
    for key, g in zip(float_keys, input_grads):
        t_grad = torch_inputs[key].grad
        t_grad = torch.zeros_like(torch_inputs[key]) if t_grad is None else t_grad
        add("grad input", _input_name(key), t_grad, g, report.grad_rtol, report.grad_atol)

    mapping = build_mapping(flax_model)
    _compare_param_grads(report, torch_model, flax_model, param_grads, mapping, add)
    _gradient_noise_floor(report, dtype)

    if train_steps:
        _train_steps(report, torch_model, flax_model, graphdef, param_state, param_grads, torch_items,
                     torch_loss, flax_loss, float_keys, jax_items, mapping, train_steps, lr)
    return cotangents


JIT_FORWARD = "forward under jax.jit"
JIT_GRADIENTS = "gradients under jax.jit(jax.grad)"


def _jitted_gradients(report: EquivalenceReport, at: int, grad_fn, grad_args, eager: dict[str, Any],
                      torch_outputs: dict[str, Any], jit_forward):
    """Gradients under jax.jit(jax.grad), the outputs as their aux: one compilation gives the compiled
    forward's row (its outputs against the eager run's) and the gradients' row, inserted at `at`. When it
    raises, the forward alone under jit says which of the two fails. None when the gradients must be eager."""
    try:
        grads_out, outputs = jax.jit(grad_fn)(*grad_args)
    except Exception as exc:
        forward = jit_forward()
        rows = [forward] if not forward.ok else \
            [forward, _failed_row("jit", JIT_GRADIENTS, exc, "the gradients below are eager figures")]
        report.rows[at:at] = rows
        report.jit_ok = False
        return None
    forward = _jit_outputs_row(eager, dict(outputs), torch_outputs, report.output_rtol, report.output_atol)
    report.rows[at:at] = [forward, Row("jit", JIT_GRADIENTS, None, 0.0, 0.0, True, "ran: its gradients are the "
                                                                                   "ones compared below")]
    report.jit_ok = forward.ok
    return grads_out


def _jit_forward_row(flax_model: nnx.Module, args: list, kwargs: dict, eager: dict[str, Any],
                     torch_outputs: dict[str, Any], rtol: float, atol: float) -> Row:
    """The forward alone under jax.jit over nnx.split/nnx.merge (a copy: the model's own state is left as
    the eager run left it), its outputs against the eager run's."""
    graphdef, state = nnx.split(flax_model)

    def forward(state, args, kwargs):
        return nnx.merge(graphdef, state, copy=True)(*args, **kwargs)

    try:
        jitted = dict(_flatten(jax.jit(forward)(state, args, kwargs)))
    except Exception as exc:
        return _failed_row("jit", JIT_FORWARD, exc, "runs eagerly only: the other rows are eager figures")
    return _jit_outputs_row(eager, jitted, torch_outputs, rtol, atol)


def _jit_outputs_row(eager: dict[str, Any], jitted: dict[str, Any], torch_outputs: dict[str, Any], rtol: float,
                     atol: float) -> Row:
    """One row for the compiled outputs against the eager ones: the worst output. An output out of tolerance
    still passes when it is as close to torch's as the eager one (up to LOWP_FACTOR): where rounding decides
    the output (an ill-conditioned model), compiled and eager round differently, and neither is wrong."""
    if set(jitted) != set(eager):
        return Row("jit", JIT_FORWARD, None, float("inf"), float("inf"), False,
                   "outputs differ in structure from the eager run's")
    rows = [compare("jit", name, value, jitted[name], rtol, atol) for name, value in eager.items()]
    for row in rows:
        if not row.ok and row.rel == row.rel and row.name in torch_outputs:
            reference = torch_outputs[row.name]
            e_eager = compare("", "", reference, eager[row.name], 0.0, 0.0).rel
            e_jit = compare("", "", reference, jitted[row.name], 0.0, 0.0).rel
            if e_jit <= max(rtol, LOWP_FACTOR * e_eager):
                row.ok, row.note = True, f"as close to torch as the eager run: jit {e_jit:.3g}, eager {e_eager:.3g}"
    worst = max(rows, key=lambda r: (not r.ok, r.rel if r.rel == r.rel else float("inf")), default=None)
    if worst is None:
        return Row("jit", JIT_FORWARD, None, 0.0, 0.0, True, "no output")
    note = next((r.note for r in rows if r.note), f"as the eager run ({len(rows)} outputs)") if worst.ok else \
        f"{worst.name} differs from the eager run{': ' + worst.note if worst.note else ''}"
    return Row("jit", JIT_FORWARD, worst.shape, worst.max_abs, worst.rel, worst.ok, note, worst.scale)


def _name_convert_warnings(report: EquivalenceReport, torch_model: Any) -> None:
    """A failing gradient or state row that a difference porter convert already reported explains."""
    import torch

    padded = {f"{path}.weight" if path else "weight": module.padding_idx
              for path, module in torch_model.named_modules()
              if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None}
    for row in report.failures:
        if row.kind in ("grad param", "state") and row.name in padded:
            row.note = (row.note + "; " if row.note else "") + (
                f"expected: nn.Embedding(padding_idx={padded[row.name]}) keeps row {padded[row.name]}'s gradient "
                f"at zero in torch, not in the converted nnx.Embed (porter convert's PT005 warning on that line)")


def _failed_row(kind: str, name: str, exc: BaseException, consequence: str) -> Row:
    """A row for a run that raised: the exception's type, first line and innermost frame of the user's code."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    where = _user_frame(exc)
    return Row(kind, name, None, float("nan"), float("nan"), False,
               f"{type(exc).__name__}: {first}{f' (at {where})' if where else ''}; {consequence}")


def _user_frame(exc: BaseException) -> str:
    """file:line of the innermost traceback frame outside installed packages, the standard library and
    this checker: where the converted code did what jit or grad cannot take."""
    import sysconfig
    import traceback
    from pathlib import Path

    skipped = (str(Path(__file__).parent), sysconfig.get_paths()["stdlib"], "site-packages", "dist-packages", "<frozen")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not any(s in f.filename for s in skipped)]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""


NOISE_EPS = 64  # gradients below this many eps of the largest gradient are rounding noise


def _gradient_noise_floor(report: EquivalenceReport, dtype: str) -> None:
    """A gradient that is zero in exact arithmetic (a bias in front of a batch norm in train mode, a
    softmax's shift) comes out as rounding noise of order eps times the gradients it is computed from,
    in both frameworks, and its own scale says nothing. So a gradient row out of tolerance still
    passes when max_abs <= NOISE_EPS * eps * G, G the largest gradient magnitude of the check."""
    rows = [r for r in report.rows if r.kind in ("grad input", "grad param")]
    scales = [r.scale for r in rows if r.scale == r.scale]
    if not scales:
        return
    floor = NOISE_EPS * float(ml_dtypes.finfo(_np_dtype(dtype)).eps) * max(scales)
    for r in rows:
        if not r.ok and not r.note and r.max_abs <= floor:
            r.ok = True
            r.note = f"rounding noise: max_abs <= {NOISE_EPS} eps x largest gradient ({floor:.3g})"


def _judge_layers(lrep: layerlib.LayerReport, torch_calls, flax_calls, ref: _Reference, dtype: str,
                  rtol: float, atol: float) -> None:
    flax_by_key = {(c.path, c.index): dict(c.leaves) for c in flax_calls}
    for row, tc in zip(lrep.rows, torch_calls):  # compare_layers keeps torch's order first
        if row.status != "FAIL" or (row.path, row.call) != (tc.path, tc.index):
            continue
        refs, got = ref.layers.get((tc.path, tc.index)), flax_by_key.get((tc.path, tc.index))
        if refs is None or got is None:
            continue
        verdicts = []
        for name, t in tc.leaves:
            if name not in got:
                break
            r = compare("layer", name, t, got[name], rtol, atol)
            _judge(r, refs.get(name), t, got[name], dtype)
            verdicts.append(r)
        if len(verdicts) == len(tc.leaves) and verdicts and all(v.ok for v in verdicts):
            row.status, row.note = "ok", next((v.note for v in verdicts if v.note), "")
    lrep.first = next((layerlib.Divergence(r) for r in lrep.rows if r.status == "FAIL"), None)


def _compare_param_grads(report, torch_model, flax_model, param_grads, mapping, add) -> None:
    import torch

    flat_grads = {path: value for path, value in nnx.to_flat_state(param_grads)}
    canonical = {id(var): path for path, var in nnx.to_flat_state(nnx.state(flax_model, nnx.Param))}
    frozen = [name for name, p in torch_model.named_parameters(remove_duplicate=False) if not p.requires_grad]
    if frozen:
        report.notes.append(f"gradients not compared for frozen torch parameters (requires_grad=False): "
                            f"{', '.join(frozen)}")
    named = list(torch_model.named_parameters(remove_duplicate=False))
    tied = _tied_in_torch([(name, id(p)) for name, p in named], mapping)
    for name, p in named:
        if not p.requires_grad:
            continue
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        entry = mapping.entries.get(name) or mapping.entries.get(tied.get(name))
        if entry is None:
            report.rows.append(Row("grad param", name, tuple(p.shape), float("inf"), float("inf"), False,
                                   "no such variable in the flax model"))
            continue
        path = canonical.get(id(entry.variable))
        if path is None:
            report.rows.append(Row("grad param", name, tuple(p.shape), float("inf"), float("inf"), False,
                                   f"flax {entry.nnx_name} is a {type(entry.variable).__name__}, not an "
                                   f"nnx.Param: no gradient"))
            continue
        grad = flat_grads[path]
        grad = getattr(grad, "get_raw_value", lambda: grad)()
        add("grad param", name, ref, entry.layout.to_torch(np.asarray(grad)), report.grad_rtol, report.grad_atol)
        if name in tied:
            report.rows[-1].note = _tied_note(tied[name], entry)


def _tied_in_torch(names_and_ids: list[tuple[str, Any]], mapping) -> dict[str, str]:
    """{torch name: the other name of the same tensor} for names with no flax variable of their own whose
    tensor (same id: one Parameter, or one storage in a state_dict) has another name that has one: a head
    tied to the embedding in torch, computed by the embedding's attend in the converted model. Both sides
    then hold one array, and its gradient sums both uses in torch and in JAX alike."""
    mapped: dict[Any, str] = {}
    for name, identity in names_and_ids:
        if name in mapping.entries:
            mapped.setdefault(identity, name)
    return {name: mapped[identity] for name, identity in names_and_ids
            if name not in mapping.entries and name not in mapping.ignored and identity in mapped}


def _tied_note(other: str, entry) -> str:
    return f"tied in torch to {other}: one flax variable ({entry.nnx_name}) for both"


def _train_steps(report, torch_model, flax_model, graphdef, param_state, param_grads, torch_items,
                 torch_loss, flax_loss, float_keys, jax_items, mapping, steps: int, lr: float) -> None:
    """k SGD steps on both sides (the first one's gradients are already there), then every state_dict entry."""
    import torch

    t_args, t_kwargs = _split_args([(k, t.detach()) for k, t in torch_items])
    float_values = [dict(jax_items)[k] for k in float_keys]

    def torch_update():
        with torch.no_grad():
            for p in torch_model.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)

    def flax_update(params, grads, rest):
        params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        nnx.update(flax_model, params, rest)

    def loss_and_state(p, rest):
        model = nnx.merge(graphdef, p, rest, copy=True)
        loss = flax_loss(model, float_values)
        return loss, nnx.split(model, nnx.Param, ...)[2]

    step = jax.value_and_grad(loss_and_state, has_aux=True)
    step = jax.jit(step) if report.jit_ok is not False else step
    torch_update()
    flax_update(param_state, param_grads, nnx.split(flax_model, nnx.Param, ...)[2])
    for _ in range(steps - 1):
        torch_model.zero_grad(set_to_none=True)
        try:
            torch_loss(torch_model(*t_args, **t_kwargs)).backward()
        except Exception as exc:
            raise ModelRunError("original", exc) from exc
        _, params, rest = nnx.split(flax_model, nnx.Param, ...)
        try:
            (_, rest), grads = step(params, rest)
        except Exception as exc:
            raise ModelRunError("converted", exc) from exc
        torch_update()
        flax_update(params, grads, rest)

    report.notes.append(f"train steps: {steps} SGD steps (lr {lr:g}) on the cotangent loss, same inputs each "
                        f"step; then every state_dict entry compared (kind 'state')")
    state = torch_model.state_dict()
    tied = _tied_in_torch([(key, identity_of(ref)) for key, ref in state.items()], mapping)
    for key, ref in state.items():
        entry = mapping.entries.get(key) or mapping.entries.get(tied.get(key))
        if entry is None:
            if key in mapping.ignored:
                continue
            report.rows.append(Row("state", key, tuple(ref.shape), float("inf"), float("inf"), False,
                                   "no such variable in the flax model"))
            continue
        value = np.asarray(entry.variable.get_raw_value())
        report.rows.append(compare("state", key, ref, entry.layout.to_torch(value),
                                   report.grad_rtol, report.grad_atol))
        if key in tied:
            report.rows[-1].note = _tied_note(tied[key], entry)
