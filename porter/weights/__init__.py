"""Checkpoint conversion: torch state_dicts into converted Flax NNX models (and back).

Public API (imported lazily, so `porter --help` does not load jax):

- load_torch_state_dict(model, state_dict, *, strict=True, dtype="model", strip_prefix=None, add_prefix=None)
  -> LoadReport
- flax_to_torch_state_dict(model) -> dict[str, np.ndarray]
- build_mapping(model) -> WeightMapping (torch key -> nnx path, layout, variable)
- read_state_dict(path, key=None) -> (dict[str, np.ndarray], ReadInfo)
- open_checkpoint(path, key=None) -> Source (metadata up front, tensors one at a time)
- convert_checkpoint(ckpt, out, *, model=None, ...) -> ConversionResult (streaming; what `porter weights` runs)
- convert_to_torch(flax_ckpt, out, *, model=None) -> ConversionResult (the reverse direction)
- guess_targets(metas) -> mapping by key names and shapes, without a model
- write_orbax(model, path, *, force=False), write_safetensors(model, path, *, force=False)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_torch_state_dict": "porter.weights.loader",
    "flax_to_torch_state_dict": "porter.weights.loader",
    "LoadReport": "porter.weights.report",
    "StateDictMismatch": "porter.weights.report",
    "build_mapping": "porter.weights.mapping",
    "WeightMapping": "porter.weights.mapping",
    "WeightEntry": "porter.weights.mapping",
    "read_state_dict": "porter.weights.readers",
    "open_checkpoint": "porter.weights.readers",
    "convert_checkpoint": "porter.weights.convert",
    "convert_to_torch": "porter.weights.convert",
    "ConversionError": "porter.weights.convert",
    "ConversionResult": "porter.weights.convert",
    "guess_targets": "porter.weights.guess",
    "ReadInfo": "porter.weights.readers",
    "CheckpointError": "porter.weights.readers",
    "UnsafeCheckpointError": "porter.weights.readers",
    "write_orbax": "porter.weights.writers",
    "write_safetensors": "porter.weights.writers",
    "restore_orbax": "porter.weights.writers",
    "restore_safetensors": "porter.weights.writers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'porter.weights' has no attribute {name!r}")
