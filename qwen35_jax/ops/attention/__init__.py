"""Memory-bounded causal attention (``flash``) and its sequence-sharded wrapper (``context_parallel``)."""

from qwen35_jax.ops.attention.context_parallel import ContextParallelAttention
from qwen35_jax.ops.attention.flash import flash_attention

__all__ = ["ContextParallelAttention", "flash_attention"]
