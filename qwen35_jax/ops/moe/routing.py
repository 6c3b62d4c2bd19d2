"""Router softmax / top-k and the per-layer statistics of the load-balancing loss (numerics §3)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RouterStats(NamedTuple):
    """Per-layer sums for the pooled aux loss: Σ_n m_n·1[e ∈ topk_n], Σ_n m_n·p_{n,e}, Σ_n m_n; plus the number of
    (token, expert) assignments a capacity-limited expert-parallel dispatch dropped (0 on the dropless paths)."""

    assignments: jax.Array  # [E] fp32
    probabilities: jax.Array  # [E] fp32
    tokens: jax.Array  # [] fp32
    dropped: jax.Array  # [] fp32

    @staticmethod
    def zeros(num_experts: int) -> RouterStats:
        return RouterStats(jnp.zeros((num_experts,), jnp.float32), jnp.zeros((num_experts,), jnp.float32),
                           jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def load_balancing_loss(stats: RouterStats) -> jax.Array:
    """``E · Σ_e f_e · P_e`` with f and P pooled over layers and tokens (equals top_k at perfect balance)."""
    denom = jnp.maximum(stats.tokens, 1.0)
    num_experts = stats.assignments.shape[-1]
    return num_experts * jnp.sum((stats.assignments / denom) * (stats.probabilities / denom))


def router_stats(probs: jax.Array, experts: jax.Array, token_mask: jax.Array,
                 dropped: jax.Array | None = None) -> RouterStats:
    """One layer's aux-loss sums from router probabilities ``[N, E]`` and chosen experts ``[N, k]``."""
    mask = token_mask.astype(jnp.float32)
    hits = jnp.zeros(probs.shape, jnp.float32).at[jnp.arange(probs.shape[0])[:, None], experts].add(1.0)
    dropped = jnp.zeros((), jnp.float32) if dropped is None else dropped.astype(jnp.float32)
    return RouterStats(assignments=mask @ hits, probabilities=mask @ probs, tokens=jnp.sum(mask), dropped=dropped)


def route(logits: jax.Array, top_k: int, normalize: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax (fp32) → top-k → optional renormalisation. Returns (probs [N,E], weights [N,k], experts [N,k])."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts
