"""Is a float32 difference the conversion's fault, or float32's? The float64 verdict.

Some models turn float32's rounding into differences far above any tolerance,
and there both frameworks are right: a ReLU whose input is within rounding of
zero passes or blocks its gradient depending on the last bit (in a VGG, about
one of a million gates does, and the input gradient then moves by 1e-3), a max
pool picks between two nearly equal values, a norm divides by a nearly zero
variance. When a float32 check fails, the original is run in float64
(the truth), and in float64 with its inputs and every parameter and buffer
perturbed by one float32 rounding (relative 2^-24, random size and sign,
PERTURBED_RUNS times), with the check's own loss. A row out of tolerance is
float32 rounding when

    rel(converted vs torch float32) <= CONDITION_FACTOR * max(torch float32's own error,
                                                              the perturbed runs' spread) + tolerance

(both measured against float64, in the row's units: max|a - b| / max|torch|).
A conversion that computes something else lies far outside that band: the
band is the spread the original itself shows, not a wider tolerance.

Three perturbed runs may miss a rare flip (one max-pool window in a million
whose two largest values are within rounding of each other), so there is a
second witness: the converted model run in float64 too (jax's 64-bit types
switched on for that run). A row whose float64 values agree with the
original's float64 values to FLOAT64_AGREEMENT is float32 rounding as well:
in exact-enough arithmetic the two models compute the same function.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

CONDITION_FACTOR = 4.0
PERTURBED_RUNS = 3
ROUNDING = 2.0 ** -24  # one float32 rounding, relative
# both models in float64 agreeing this closely compute the same function: float64's own rounding through a
# deep network stays orders of magnitude below it, a conversion error (a wrong eps, a transposed kernel) far above
FLOAT64_AGREEMENT = 1e-9


def explain_by_conditioning(report: Any, torch_model: Any, arrays: list, cotangents: dict[str, np.ndarray],
                            torch_device: Any, run_reference: Any, set_mode: Any = None,
                            converted64: Any = None) -> None:
    """Marks the failing rows of `report` that float32 rounding explains (see the module docstring).

    `torch_model` is the original as the check started from it; `set_mode(model)` puts a copy in the
    check's mode (eval when not given). `run_reference(model, arrays, device, cotangents, layers=False)`
    is the check's own run of a torch model (porter/check/equivalence.py): outputs, input and parameter
    gradients keyed (kind, name). State after training steps is not judged. `converted64()`, when given,
    runs the converted model in float64 (same keys): a row whose float64 values agree with the original's
    to FLOAT64_AGREEMENT is float32 rounding too (the perturbed runs may miss a rare flip).
    """
    failing = [row for row in report.failures if row.kind in ("output", "grad input", "grad param")]
    if not failing:
        return
    import torch

    def run(dtype: Any, perturb: int | None = None) -> dict:
        model = copy.deepcopy(torch_model).to(dtype=dtype)
        (set_mode or (lambda module: module.eval()))(model)
        model.zero_grad(set_to_none=True)
        inputs = [(k, _as(a, dtype, perturb)) for k, a in arrays]
        if perturb is not None:
            generator = torch.Generator().manual_seed(perturb)
            with torch.no_grad():
                for tensor in model.state_dict().values():
                    if tensor.is_floating_point():
                        noise = torch.randn(tensor.shape, generator=generator, dtype=dtype).to(tensor.device)
                        tensor.mul_(1 + ROUNDING * noise)
        return run_reference(model, inputs, torch_device, cotangents, layers=False).arrays

    exact, single = run(torch.float64), run(torch.float32)
    perturbed = [run(torch.float64, perturb=k) for k in range(PERTURBED_RUNS)]
    witness = converted64() if converted64 is not None else {}
    explained = 0
    for row in failing:
        key = (row.kind, row.name)
        if key not in exact or key not in single:
            continue
        t64 = exact[key]
        scale = max(_largest(single[key]), float(np.finfo(np.float32).tiny))  # the row's units
        own_error = _max_difference(single[key], t64) / scale
        spread = max(_max_difference(p[key], t64) for p in perturbed) / scale
        tolerance = report.output_rtol if row.kind == "output" else report.grad_rtol
        in_float64 = _max_difference(witness[key], t64) / max(_largest(t64), float(np.finfo(np.float64).tiny)) \
            if key in witness else float("inf")
        if row.rel <= CONDITION_FACTOR * max(own_error, spread) + tolerance:
            row.ok = True
            row.note = (f"float32 rounding: the original itself moves by {max(own_error, spread):.3g} "
                        f"(float64 runs; see porter/check/conditioning.py)")
            explained += 1
        elif in_float64 <= FLOAT64_AGREEMENT:
            row.ok = True
            row.note = (f"float32 rounding: in float64 both models agree to {in_float64:.2g} "
                        f"(see porter/check/conditioning.py)")
            explained += 1
        else:
            row.note = (row.note + "; " if row.note else "") + \
                f"not float32 rounding: the original moves by {max(own_error, spread):.3g} at most" + \
                (f", and in float64 the models differ by {in_float64:.2g}" if key in witness else "")
    report.notes.append(f"float64 verdict: {explained} of {len(failing)} arrays out of tolerance are within "
                        f"{CONDITION_FACTOR:g}x what one float32 rounding of the inputs and weights does to "
                        f"the original (run in float64)")


def _largest(a: np.ndarray) -> float:
    return float(np.abs(a).max(initial=0.0))


def _max_difference(a: np.ndarray, b: np.ndarray) -> float:
    if np.shape(a) != np.shape(b):
        return float("inf")
    return _largest(np.asarray(a, np.float64) - b)


def _as(a: np.ndarray, dtype: Any, perturb: int | None) -> np.ndarray:
    """An input in the run's precision (float arrays only), perturbed by one rounding when asked."""
    if not (np.issubdtype(a.dtype, np.floating) or "float" in str(a.dtype)):
        return a
    import torch

    values = np.asarray(a, dtype=np.float64)
    if perturb is not None:
        noise = np.random.default_rng(1000 + perturb).standard_normal(values.shape)
        values = values * (1 + ROUNDING * noise)
    return values.astype(np.float64 if dtype == torch.float64 else np.float32)
