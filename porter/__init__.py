"""porter: move PyTorch code bases to JAX (Flax NNX + Optax)."""
