"""porter: move PyTorch code bases to JAX (Flax NNX + Optax).

Library API (what migration scripts use):
    convert_source(source, *, filename=None) -> Conversion
    load_torch_state_dict(model, state_dict, *, strict=True)
    check_equivalence(torch_model, flax_model, *inputs)
"""

__all__ = ["Conversion", "convert_file", "convert_source", "load_torch_state_dict", "check_equivalence"]


def __getattr__(name: str):
    # Imported on first use: the weight and check modules import torch and jax, which converting source
    # needs neither of; the converter imports libcst, which `porter weights` does not need.
    if name in ("Conversion", "convert_file", "convert_source"):
        from porter.convert import pipeline
        return getattr(pipeline, name)
    if name == "load_torch_state_dict":
        from porter.weights.loader import load_torch_state_dict
        return load_torch_state_dict
    if name == "check_equivalence":
        from porter.check.equivalence import check_equivalence
        return check_equivalence
    raise AttributeError(f"module 'porter' has no attribute {name!r}")
