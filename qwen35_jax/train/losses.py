"""Training losses: next-token cross-entropy in fp32 over masked positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position negative log-likelihood ``[B, T]`` (fp32) of ``targets`` under ``logits [B, T, V]``; the
    log-softmax runs in fp32 whatever the logits' dtype."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` is set; 0 when nothing is (never NaN)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over positions where ``loss_mask`` is set (scalar fp32)."""
    return masked_mean(token_nll(logits, targets), loss_mask)
