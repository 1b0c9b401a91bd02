"""Numerical equivalence of a torch model and its Flax NNX conversion.

`check_equivalence(torch_model, flax_model, *inputs)`:

1. copies the torch model's state_dict into the flax model (strict,
   porter.weights.load_torch_state_dict), unless load_weights=False;
2. puts both in eval mode (`torch_model.eval()`, `flax_model.eval()`; both are
   left in eval mode afterwards, and the torch parameters' `.grad` filled);
3. runs both on the same inputs (numpy arrays or torch tensors; float inputs
   as float32, integer inputs such as token ids as integers) and compares
   every output array (a tensor, or tuples/lists/dicts of them);
4. takes the gradient of loss = sum_i sum(output_i * c_i), where each
   cotangent c_i is drawn from numpy's default_rng(seed), with respect to
   every float input and every torch parameter; the flax gradients are mapped
   back to torch names and layouts (the layout's to_torch) and compared.

Metric, per array: max_abs = max|a - b| and rel = max_abs / max(max|ref|, tiny),
ref being the torch value and tiny the smallest normal float32. That is a
norm-wise (infinity-norm) relative error, not an elementwise one: float32
sums round relative to the magnitude of the whole computation, so an element
that happens to be near zero (a cancelling sum, a ReLU edge) carries an
absolute error of order eps*max|ref| and would fail any elementwise relative
test although both frameworks are right. Norm-wise, errors are judged
against the scale of the array, which is what an acceptance criterion such as
"outputs within 1e-5" means.

An array passes when rel <= rtol or max_abs <= atol. Defaults for float32
(the project's acceptance criteria): outputs rtol 1e-5, gradients rtol 1e-4;
atol 1e-12 for both, only there so that arrays that are all (near) zero in
both frameworks, such as the gradient of an unused parameter, pass. Integer
and boolean outputs must be equal. NaNs must sit in the same places.

Precision: on the CPU backend jax computes float32 matmuls and convolutions
in full float32, so nothing is changed. On GPU/TPU jax defaults to TF32-like
matmuls; the check then runs the flax side under
`jax.default_matmul_precision("highest")` and turns torch's TF32 flags off
for the duration, and the report says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from porter.weights.arrays import is_torch_tensor, to_numpy
from porter.weights.loader import load_torch_state_dict
from porter.weights.mapping import build_mapping

OUTPUT_RTOL = 1e-5
GRAD_RTOL = 1e-4
DEFAULT_ATOL = 1e-12
TINY = float(np.finfo(np.float32).tiny)


class ModelRunError(RuntimeError):
    """One of the two models raised while running; `.side` is 'original' or 'converted'."""

    def __init__(self, side: str, exc: BaseException):
        self.side = side
        super().__init__(f"the {side} model raised {type(exc).__name__}: {exc}")


@dataclass
class Row:
    kind: str  # "output", "grad input", "grad param"
    name: str
    shape: tuple[int, ...] | None
    max_abs: float
    rel: float
    ok: bool
    note: str = ""


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

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [row for row in self.rows if not row.ok]

    def row(self, name: str, kind: str | None = None) -> Row:
        return next(r for r in self.rows if r.name == name and (kind is None or r.kind == kind))

    def format(self) -> str:
        lines = [f"porter check: {self.torch_name} (torch) vs {self.flax_name} (flax nnx)"]
        lines += [f"  {note}" for note in self.notes]
        lines.append(f"  tolerances: outputs rtol {self.output_rtol:g} atol {self.output_atol:g}; "
                     f"gradients rtol {self.grad_rtol:g} atol {self.grad_atol:g} "
                     f"(rel = max|a-b| / max|torch|)")
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
        failed = len(self.failures)
        if self.passed:
            lines.append(f"PASS: all {len(self.rows)} arrays within tolerance")
        else:
            lines.append(f"FAIL: {failed} of {len(self.rows)} arrays out of tolerance"
                         if self.rows else "FAIL: nothing was compared")
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
    return Row(kind, name, tuple(ref_a.shape), max_abs, rel, rel <= rtol or max_abs <= atol)


@contextlib.contextmanager
def _precision(notes: list[str], torch_model: Any):
    import torch

    backend = jax.default_backend()
    if backend == "cpu":
        notes.append("precision: jax backend cpu computes float32 matmuls/convolutions in full float32; "
                     "no precision setting changed")
        yield
        return
    notes.append(f"precision: jax backend {backend}: flax side run under "
                 f"jax.default_matmul_precision('highest'); torch TF32 disabled for the check")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _prepare_inputs(inputs: tuple[Any, ...], notes: list[str]) -> list[np.ndarray]:
    arrays = []
    for i, x in enumerate(inputs):
        a = to_numpy(x)
        if _is_float(a):
            if a.dtype != np.float32:
                notes.append(f"input {i}: {a.dtype} cast to float32")
            a = a.astype(np.float32)
        arrays.append(a)
    return arrays


def _jax_input(a: np.ndarray) -> jax.Array:
    if a.dtype == np.int64 and not jax.config.jax_enable_x64:
        if a.size and (a.max() > np.iinfo(np.int32).max or a.min() < np.iinfo(np.int32).min):
            raise ValueError("an int64 input does not fit int32 (jax runs with 64-bit types off)")
        a = a.astype(np.int32)
    return jnp.asarray(a)


def check_equivalence(
    torch_model: Any,
    flax_model: nnx.Module,
    *inputs: Any,
    rtol: float | None = None,
    atol: float | None = None,
    grad_rtol: float | None = None,
    grad_atol: float | None = None,
    load_weights: bool = True,
    grads: bool = True,
    seed: int = 0,
) -> EquivalenceReport:
    """Compare outputs and gradients of `torch_model` and `flax_model` (see the module docstring).

    rtol/atol apply to outputs and, unless grad_rtol/grad_atol are given, to
    gradients too; left None they are the float32 defaults (outputs 1e-5,
    gradients 1e-4, atol 1e-12).
    """
    import torch

    report = EquivalenceReport(
        torch_name=type(torch_model).__name__, flax_name=type(flax_model).__name__,
        output_rtol=OUTPUT_RTOL if rtol is None else rtol,
        grad_rtol=grad_rtol if grad_rtol is not None else (GRAD_RTOL if rtol is None else rtol),
        output_atol=DEFAULT_ATOL if atol is None else atol,
        grad_atol=grad_atol if grad_atol is not None else (DEFAULT_ATOL if atol is None else atol),
    )
    notes = report.notes
    if load_weights:
        loaded = load_torch_state_dict(flax_model, torch_model.state_dict(), strict=True)
        notes.append(f"weights: {len(loaded.loaded)} torch state_dict entries loaded into the flax model "
                     f"({len(loaded.transposed)} transposed, {len(loaded.ignored)} ignored)")
    torch_model.eval()
    flax_model.eval()
    arrays = _prepare_inputs(inputs, notes)
    notes.append("inputs: " + ", ".join(f"{a.dtype}{tuple(a.shape)}" for a in arrays))
    params = list(torch_model.parameters())
    device = params[0].device if params else torch.device("cpu")

    with _precision(notes, torch_model):
        # --- torch: forward, then backward of the cotangent loss
        torch_inputs = []
        for a in arrays:
            t = torch.from_numpy(a.copy()).to(device)
            if _is_float(a) and grads:
                t.requires_grad_(True)
            torch_inputs.append(t)
        torch_model.zero_grad(set_to_none=True)
        try:
            torch_out = torch_model(*torch_inputs)
        except Exception as exc:
            raise ModelRunError("original", exc) from exc
        torch_leaves = _flatten(torch_out)
        jax_inputs = [_jax_input(a) for a in arrays]
        try:
            flax_out = flax_model(*jax_inputs)
        except Exception as exc:
            raise ModelRunError("converted", exc) from exc
        flax_leaves = dict(_flatten(flax_out))

        # --- outputs
        same_structure = [n for n, _ in torch_leaves] == list(flax_leaves) or \
            {n for n, _ in torch_leaves} == set(flax_leaves)
        for name, t in torch_leaves:
            if name not in flax_leaves:
                report.rows.append(Row("output", name, tuple(getattr(t, "shape", ())), float("inf"),
                                       float("inf"), False, "missing from the flax output"))
                continue
            report.rows.append(compare("output", name, t, flax_leaves[name], report.output_rtol,
                                       report.output_atol))
        torch_names = {n for n, _ in torch_leaves}
        for name in flax_leaves:
            if name not in torch_names:
                report.rows.append(Row("output", name, None, float("inf"), float("inf"), False,
                                       "only in the flax output"))
        if not grads:
            return report
        if not same_structure:
            notes.append("gradients not compared: the outputs differ in structure")
            return report

        # --- cotangents, from the torch outputs' shapes, in output order
        rng = np.random.default_rng(seed)
        cotangents: dict[str, np.ndarray] = {}
        for name, t in torch_leaves:
            if is_torch_tensor(t) and t.is_floating_point() and t.requires_grad:
                cotangents[name] = rng.standard_normal(tuple(t.shape)).astype(np.float32)
        if not cotangents:
            notes.append("gradients not compared: no differentiable float output")
            return report
        leaves = dict(torch_leaves)
        loss = sum((leaves[n] * torch.from_numpy(c).to(leaves[n].device).to(leaves[n].dtype)).sum()
                   for n, c in cotangents.items())
        loss.backward()

        # --- flax: the same loss, differentiated w.r.t. float inputs and nnx.Param variables
        float_idx = [i for i, a in enumerate(arrays) if _is_float(a)]
        graphdef, param_state, rest = nnx.split(flax_model, nnx.Param, ...)

        def loss_fn(p, float_args):
            model = nnx.merge(graphdef, p, rest)
            args = list(jax_inputs)
            for i, a in zip(float_idx, float_args):
                args[i] = a
            out = dict(_flatten(model(*args)))
            return sum(jnp.sum(out[n].astype(jnp.float32) * jnp.asarray(c)) for n, c in cotangents.items())

        try:
            param_grads, input_grads = jax.grad(loss_fn, argnums=(0, 1))(
                param_state, [jax_inputs[i] for i in float_idx])
        except Exception as exc:
            raise ModelRunError("converted", exc) from exc

    # inputs
    for i, g in zip(float_idx, input_grads):
        ref = torch_inputs[i].grad
        ref = torch.zeros_like(torch_inputs[i]) if ref is None else ref
        report.rows.append(compare("grad input", f"input[{i}]", ref, g, report.grad_rtol, report.grad_atol))

    # parameters: flax gradient -> torch name and layout
    flat_grads = {path: value for path, value in nnx.to_flat_state(param_grads)}
    canonical = {id(var): path for path, var in nnx.to_flat_state(nnx.state(flax_model, nnx.Param))}
    mapping = build_mapping(flax_model)
    frozen = [name for name, p in torch_model.named_parameters(remove_duplicate=False) if not p.requires_grad]
    if frozen:
        notes.append(f"gradients not compared for frozen torch parameters (requires_grad=False): "
                     f"{', '.join(frozen)}")
    for name, p in torch_model.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            continue
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        entry = mapping.entries.get(name)
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
        report.rows.append(compare("grad param", name, ref,
                                   entry.layout.to_torch(np.asarray(grad)), report.grad_rtol, report.grad_atol))
    return report
