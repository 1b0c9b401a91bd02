"""Load a torch state_dict into a converted Flax NNX model, and back.

Dtype policy (`dtype=` of `load_torch_state_dict`):

- "model" (default, what torch's `load_state_dict` does: `param.copy_(value)`
  casts into the parameter): each variable keeps its dtype and the checkpoint
  value is cast into it. Widening (bfloat16 -> float32) is exact; narrowing
  rounds to nearest even. The report lists every key whose dtype was cast.
- "checkpoint": each variable takes the checkpoint's dtype, bit for bit (a
  bfloat16 checkpoint gives bfloat16 variables). `porter weights` uses this,
  so a converted checkpoint keeps the original's dtypes and size.

Either way the values come from the checkpoint exactly (see arrays.to_numpy:
bfloat16/float8 tensors are reinterpreted bit for bit, never through float).

Strict mode checks everything before it writes anything: on a mismatch it
raises StateDictMismatch and leaves the model untouched. Non-strict mode loads
every key that fits and reports the rest (a mis-shaped key is never loaded).
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from porter.weights.arrays import to_numpy
from porter.weights.plan import KeyMeta, Target, identity_of, meta_of, plan_load, targets_from_model
from porter.weights.report import LoadReport, ShapeMismatch, StateDictMismatch

__all__ = ["LoadReport", "ShapeMismatch", "StateDictMismatch", "load_torch_state_dict", "flax_to_torch_state_dict"]

DtypePolicy = Literal["model", "checkpoint"]


def load_torch_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    dtype: DtypePolicy = "model",
    strip_prefix: Iterable[str] | None = None,
    add_prefix: str | None = None,
) -> LoadReport:
    """Load a torch-style state_dict (torch tensors or numpy arrays) into `model` in place.

    Each value goes through the layout of its layer rule (Linear weight
    transposed, conv kernels to (*spatial, in, out), ...). strict=True raises
    StateDictMismatch naming every missing, unexpected and mis-shaped key, before
    changing anything; strict=False loads what fits and reports the rest.
    Non-persistent buffers load when present and are never "missing".

    Prefixes: by default a known wrapper prefix (`module.`, `_orig_mod.`,
    `model.`) is stripped or added when that makes the keys match the model;
    `strip_prefix=[...]` / `add_prefix=` choose exactly (strip_prefix=[] turns
    the automatic handling off). Tied weights (one variable under two names in
    the model, or one tensor under two names in the state_dict) load once and
    stay one variable; the report's `tied` says which.
    """
    if dtype not in ("model", "checkpoint"):
        raise ValueError(f"dtype must be 'model' or 'checkpoint', not {dtype!r}")
    targets, ignored = targets_from_model(model)
    metas: dict[str, KeyMeta] = {}
    seen: dict[tuple, str] = {}
    for key, value in state_dict.items():
        meta = meta_of(value)
        identity = identity_of(value)
        alias = seen.setdefault(identity, key) if identity is not None else key
        metas[key] = KeyMeta(meta.shape, meta.dtype, alias if alias != key else None)
    try:
        plan = plan_load(targets, ignored, metas, model_name=type(model).__name__, strip=strip_prefix,
                         add=add_prefix)
    except ValueError as exc:  # prefix handling made two keys one
        raise StateDictMismatch(LoadReport(model=type(model).__name__, prefix=[str(exc)])) from None
    report = plan.report
    converted = []
    for item in plan.items:
        array = to_numpy(state_dict[item.source_key])
        for other in item.tied_keys:
            if not _same_values(array, to_numpy(state_dict[other])):
                report.tied_conflicts.append(f"{plan.renamed[other]} differs from {item.key} (one variable "
                                             f"{item.target.flax_key} in the model); {item.key} is loaded")
        converted.append((item, item.target.layout.to_flax(array)))
    if strict and not report.ok:
        raise StateDictMismatch(report)
    for item, array in converted:
        _assign(item.target, item.key, array, dtype, report)
    return report


def _same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (tied tensors are copies of one another, NaNs and -0.0 included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = np.ascontiguousarray(a).reshape(-1), np.ascontiguousarray(b).reshape(-1)
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def _assign(target: Target, key: str, array: np.ndarray, policy: DtypePolicy, report: LoadReport) -> None:
    old = target.variable.get_raw_value()
    source_dtype = array.dtype
    if policy == "model" and array.dtype != np.dtype(old.dtype):
        array = array.astype(old.dtype)
    array = np.require(array, requirements="C")
    sharding = getattr(old, "sharding", None)
    if isinstance(old, jax.Array) and sharding is not None:
        value = jax.device_put(array, sharding)
    else:
        value = jnp.asarray(array)
    if np.dtype(value.dtype) != source_dtype:  # cast by policy, or by jax (64-bit off)
        report.cast[key] = (str(source_dtype), str(value.dtype))
    target.variable.set_value(value)


def flax_to_torch_state_dict(model: nnx.Module, *, include_non_persistent: bool = False) -> dict[str, np.ndarray]:
    """The model's variables named and laid out as torch's state_dict (numpy arrays, dtypes kept).

    Ignored torch entries (BatchNorm's num_batches_tracked) are not produced;
    torch's BatchNorm fills that one in itself when loading.
    """
    from porter.weights.mapping import build_mapping

    out: dict[str, np.ndarray] = {}
    for entry in build_mapping(model):
        if entry.persistent or include_non_persistent:
            array = np.asarray(entry.variable.get_raw_value())
            out[entry.torch_key] = np.array(entry.layout.to_torch(array), order="C", copy=True)
    return out
