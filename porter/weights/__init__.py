"""Checkpoint conversion: torch state_dicts into converted Flax NNX models (and back).

Public API (imported lazily, so `porter --help` does not load jax):

- load_torch_state_dict(model, state_dict, *, strict=True, dtype="model") -> LoadReport
- flax_to_torch_state_dict(model) -> dict[str, np.ndarray]
- build_mapping(model) -> WeightMapping (torch key -> nnx path, layout, variable)
- read_state_dict(path, key=None) -> (dict[str, np.ndarray], ReadInfo)
- write_orbax(model, path, *, force=False), write_safetensors(model, path, *, force=False)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_torch_state_dict": "porter.weights.loader",
    "flax_to_torch_state_dict": "porter.weights.loader",
    "LoadReport": "porter.weights.loader",
    "StateDictMismatch": "porter.weights.loader",
    "build_mapping": "porter.weights.mapping",
    "WeightMapping": "porter.weights.mapping",
    "WeightEntry": "porter.weights.mapping",
    "read_state_dict": "porter.weights.readers",
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
