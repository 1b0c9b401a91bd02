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

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from porter.weights.arrays import to_numpy
from porter.weights.mapping import WeightEntry, build_mapping

DtypePolicy = Literal["model", "checkpoint"]


@dataclass(frozen=True)
class ShapeMismatch:
    key: str
    torch_shape: tuple[int, ...]  # as found in the state_dict
    after_layout: tuple[int, ...]  # what that becomes through the layout
    expected: tuple[int, ...]  # the model variable's shape
    expected_torch: tuple[int, ...]  # the state_dict shape that would have fitted
    layout: str
    nnx_name: str

    def describe(self) -> str:
        if self.layout == "same":
            return (f"{self.key}: state_dict has {self.torch_shape}, model {self.nnx_name} "
                    f"expects {self.expected}")
        return (f"{self.key}: state_dict has {self.torch_shape} -> {self.layout} -> {self.after_layout}, "
                f"model {self.nnx_name} expects {self.expected} (torch shape {self.expected_torch})")


@dataclass
class LoadReport:
    model: str = ""
    loaded: list[str] = field(default_factory=list)
    transposed: dict[str, str] = field(default_factory=dict)  # key -> layout name (subset of loaded)
    ignored: list[str] = field(default_factory=list)  # e.g. num_batches_tracked
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    cast: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (checkpoint dtype, model dtype)
    missing_info: dict[str, str] = field(default_factory=dict)  # key -> what the model expected
    unexpected_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, *, verbose: bool = False) -> str:
        lines = [f"loaded {len(self.loaded)} key(s) into {self.model}: {len(self.transposed)} transposed, "
                 f"{len(self.ignored)} ignored, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} mis-shaped"]
        if verbose and self.transposed:
            lines.append("  transposed: " + ", ".join(f"{k} ({v})" for k, v in self.transposed.items()))
        if self.ignored:
            lines.append("  ignored: " + ", ".join(self.ignored))
        if self.cast:
            lines.append("  dtype cast: " + ", ".join(f"{k} ({a} -> {b})" for k, (a, b) in self.cast.items()))
        lines.extend(_problem_lines(self))
        return "\n".join(lines)


def _problem_lines(report: LoadReport) -> list[str]:
    lines = []
    if report.missing:
        lines.append("  missing (in the model, not in the state_dict):")
        lines += [f"    {k}  ({report.missing_info.get(k, '')})" for k in report.missing]
    if report.unexpected:
        lines.append("  unexpected (in the state_dict, not in the model):")
        lines += [f"    {k}  {report.unexpected_shapes.get(k, '')}" for k in report.unexpected]
    if report.mismatched:
        lines.append("  mis-shaped:")
        lines += [f"    {m.describe()}" for m in report.mismatched]
    hint = _prefix_hint(report)
    if hint:
        lines.append(f"  hint: {hint}")
    return lines


def _prefix_hint(report: LoadReport) -> str | None:
    """A common prefix (DataParallel's 'module.') that explains the mismatch."""
    if not report.missing or not report.unexpected:
        return None
    first = report.unexpected[0].split(".")[0] + "."
    if all(k.startswith(first) for k in report.unexpected):
        stripped = {k[len(first):] for k in report.unexpected}
        if stripped & set(report.missing):
            return (f"every unexpected key starts with {first!r} (as DataParallel/DDP checkpoints do); "
                    f"strip it: {{k.removeprefix({first!r}): v for k, v in state_dict.items()}}")
    return None


class StateDictMismatch(ValueError):
    """Strict loading found missing, unexpected or mis-shaped keys; `.report` has them all."""

    def __init__(self, report: LoadReport):
        self.report = report
        counts = (f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
                  f"{len(report.mismatched)} mis-shaped key(s)")
        super().__init__("\n".join([f"state_dict does not match {report.model}: {counts}; nothing was loaded",
                                    *_problem_lines(report)]))


def load_torch_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, Any],
    *,
    strict: bool = True,
    dtype: DtypePolicy = "model",
) -> LoadReport:
    """Load a torch-style state_dict (torch tensors or numpy arrays) into `model` in place.

    Each value goes through the layout of its layer rule (Linear weight
    transposed, conv kernels to (*spatial, in, out), ...). strict=True raises
    StateDictMismatch naming every missing, unexpected and mis-shaped key, before
    changing anything; strict=False loads what fits and reports the rest.
    Non-persistent buffers load when present and are never "missing".
    """
    if dtype not in ("model", "checkpoint"):
        raise ValueError(f"dtype must be 'model' or 'checkpoint', not {dtype!r}")
    mapping = build_mapping(model)
    report = LoadReport(model=type(model).__name__)
    planned: list[tuple[WeightEntry, np.ndarray]] = []
    for key, value in state_dict.items():
        entry = mapping.entries.get(key)
        if entry is None:
            if key in mapping.ignored:
                report.ignored.append(key)
            else:
                report.unexpected.append(key)
                report.unexpected_shapes[key] = tuple(np.shape(value))
            continue
        array = to_numpy(value)
        converted = entry.layout.to_flax(array)
        if tuple(converted.shape) != entry.flax_shape:
            report.mismatched.append(ShapeMismatch(
                key, tuple(array.shape), tuple(converted.shape), entry.flax_shape, entry.torch_shape,
                entry.layout.name, entry.nnx_name))
            continue
        planned.append((entry, converted))
    for key, entry in mapping.entries.items():
        if entry.persistent and key not in state_dict:
            report.missing.append(key)
            report.missing_info[key] = f"-> {entry.nnx_name}, torch shape {entry.torch_shape}"
    if strict and not report.ok:
        raise StateDictMismatch(report)
    for entry, converted in planned:
        _assign(entry, converted, dtype, report)
        report.loaded.append(entry.torch_key)
        if entry.transposed:
            report.transposed[entry.torch_key] = entry.layout.name
    return report


def _assign(entry: WeightEntry, array: np.ndarray, policy: DtypePolicy, report: LoadReport) -> None:
    old = entry.variable.get_raw_value()
    source_dtype = array.dtype
    if policy == "model" and array.dtype != np.dtype(old.dtype):
        array = array.astype(old.dtype)
    array = np.ascontiguousarray(array)
    sharding = getattr(old, "sharding", None)
    if isinstance(old, jax.Array) and sharding is not None:
        value = jax.device_put(array, sharding)
    else:
        value = jnp.asarray(array)
    if np.dtype(value.dtype) != source_dtype:  # cast by policy, or by jax (64-bit off)
        report.cast[entry.torch_key] = (str(source_dtype), str(value.dtype))
    entry.variable.set_value(value)


def flax_to_torch_state_dict(model: nnx.Module, *, include_non_persistent: bool = False) -> dict[str, np.ndarray]:
    """The model's variables named and laid out as torch's state_dict (numpy arrays, dtypes kept).

    Ignored torch entries (BatchNorm's num_batches_tracked) are not produced;
    torch's BatchNorm fills that one in itself when loading.
    """
    out: dict[str, np.ndarray] = {}
    for entry in build_mapping(model):
        if entry.persistent or include_non_persistent:
            array = np.asarray(entry.variable.get_raw_value())
            out[entry.torch_key] = np.array(entry.layout.to_torch(array), order="C", copy=True)
    return out
