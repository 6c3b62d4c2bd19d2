"""Next-token selection: greedy, temperature, top-k and top-p (nucleus) sampling on ``[B, V]`` logits.

    sample(logits, key, SamplingConfig(temperature=0.8, top_k=50, top_p=0.95))   # -> [B] int32
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """``temperature == 0`` is greedy (argmax); ``top_k == 0`` and ``top_p == 1`` disable those filters."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature={self.temperature} is invalid: use 0 (greedy) or a positive value")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} is invalid: use 0 (off) or a positive integer")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} is invalid: must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """Temperature-scaled fp32 logits with everything outside the top-k / top-p set at -inf."""
    logits = logits.astype(jnp.float32) / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, config.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if config.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = before >= config.top_p  # the most likely token always survives (before = 0)
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(drop_sorted)
        logits = jnp.where(drop, -jnp.inf, logits)
    return logits


def sample(logits: jax.Array, key: jax.Array, config: SamplingConfig) -> jax.Array:
    """One token id per row of ``logits [B, V]``."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits, config), axis=-1).astype(jnp.int32)
