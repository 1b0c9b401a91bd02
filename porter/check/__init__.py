"""Numerical equivalence of an original torch model and its Flax NNX conversion.

Public API (imported lazily, so `porter --help` does not load jax):

- check_equivalence(torch_model, flax_model, *inputs, rtol=None, atol=None,
  load_weights=True, seed=0) -> EquivalenceReport
- parse_model_spec("file.py:Class(args)") -> ModelSpec; import_file(path); build_model(spec)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check_equivalence": "porter.check.equivalence",
    "EquivalenceReport": "porter.check.equivalence",
    "ModelRunError": "porter.check.equivalence",
    "parse_model_spec": "porter.check.modelspec",
    "import_file": "porter.check.modelspec",
    "build_model": "porter.check.modelspec",
    "ModelSpec": "porter.check.modelspec",
    "ModelSpecError": "porter.check.modelspec",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'porter.check' has no attribute {name!r}")
