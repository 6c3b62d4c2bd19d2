"""qwen35-jax: the Qwen3.5 hybrid Gated-DeltaNet / gated-attention family in JAX and Flax NNX."""

__version__ = "0.1.0"
