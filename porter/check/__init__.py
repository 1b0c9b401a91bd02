"""Numerical equivalence of an original torch model and its Flax NNX conversion.

Public API (imported lazily, so `porter --help` does not load jax):

- check_equivalence(torch_model, flax_model, *inputs, kw_inputs=None, rtol=None, atol=None,
  mode="eval", train_steps=0, dtype="float32", device="cpu", layers=True, seed=0, ...)
  -> EquivalenceReport (outputs, gradients, state; `.layers`: per-module localisation)
- bench_models(torch_model, flax_model, *inputs, ...) -> BenchResult (torch eager,
  torch.compile, jax.jit: forward and train-step times)
- parse_model_spec("file.py:Class(args)") -> ModelSpec; import_file(path); build_model(spec)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check_equivalence": "porter.check.equivalence",
    "EquivalenceReport": "porter.check.equivalence",
    "ModelRunError": "porter.check.equivalence",
    "TOLERANCES": "porter.check.equivalence",
    "LayerReport": "porter.check.layers",
    "bench_models": "porter.check.bench",
    "BenchResult": "porter.check.bench",
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
