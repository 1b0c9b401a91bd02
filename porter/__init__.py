"""porter: move PyTorch code bases to JAX (Flax NNX + Optax).

Library API (what migration scripts use):
    convert_source(source, *, filename=None) -> Conversion
    load_torch_state_dict(model, state_dict, *, strict=True)
    check_equivalence(torch_model, flax_model, *inputs)
"""

from porter.convert.pipeline import Conversion, convert_file, convert_source

__all__ = ["Conversion", "convert_file", "convert_source", "load_torch_state_dict", "check_equivalence"]


def __getattr__(name: str):
    # The weight and check modules import torch and jax; converting source needs neither.
    if name == "load_torch_state_dict":
        from porter.weights.loader import load_torch_state_dict
        return load_torch_state_dict
    if name == "check_equivalence":
        from porter.check.equivalence import check_equivalence
        return check_equivalence
    raise AttributeError(f"module 'porter' has no attribute {name!r}")
