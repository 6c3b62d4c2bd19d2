"""Training losses: next-token cross-entropy in fp32 over masked positions, optionally with the LM head in chunks."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position negative log-likelihood ``[B, T]`` (fp32) of ``targets`` under ``logits [B, T, V]``; the
    log-softmax runs in fp32 whatever the logits' dtype."""
    return _nll_and_lse(logits, targets)[0]


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` where ``mask`` is set; 0 when nothing is (never NaN)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over positions where ``loss_mask`` is set (scalar fp32)."""
    return masked_mean(token_nll(logits, targets), loss_mask)


def _nll_and_lse(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0], lse


def lm_head_losses(hidden: jax.Array, unembed: Callable[[jax.Array], jax.Array], targets: jax.Array,
                   loss_mask: jax.Array, chunk: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(Σ m·nll, Σ m·logsumexp², Σ m)`` over ``hidden [B, T, H]`` with the LM head ``unembed`` applied in pieces.

    ``chunk`` > 0 runs the head and the fp32 log-softmax over ``chunk`` positions at a time in a ``lax.scan`` whose
    body is rematerialised, so the ``[B, T, V]`` logits (and their fp32 cotangent) never exist at once: the peak is
    ``[B, chunk, V]``. ``chunk`` = 0 (or ≥ T) computes all positions in one piece. ``T`` must be a multiple of it.
    """
    batch, length = targets.shape
    mask = loss_mask.astype(jnp.float32)

    def piece(h: jax.Array, t: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
        nll, lse = _nll_and_lse(unembed(h), t)
        return jnp.sum(nll * m), jnp.sum(jnp.square(lse) * m)

    if chunk <= 0 or chunk >= length:
        nll_sum, z_sum = piece(hidden, targets, mask)
        return nll_sum, z_sum, jnp.sum(mask)
    if length % chunk:
        raise ValueError(f"sequence length {length} is not a multiple of train.loss_chunk={chunk}: use a divisor "
                         "of data.seq_len (or 0 for the whole sequence at once)")

    # Piece i holds positions i, i + T/chunk, i + 2·T/chunk, ...: one from each of ``chunk`` contiguous blocks. The
    # losses are sums, so the order is free, and a sequence split over devices (context parallelism) stays split:
    # every device reads its own blocks and nothing is gathered.
    def split(a: jax.Array) -> jax.Array:  # [B, T, ...] -> [T / chunk, B, chunk, ...]
        return jnp.moveaxis(a.reshape(batch, chunk, length // chunk, *a.shape[2:]), 2, 0)

    body_piece = jax.checkpoint(piece)

    def body(totals: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, ...]) -> tuple[tuple, None]:
        nll_sum, z_sum = body_piece(*xs)
        return (totals[0] + nll_sum, totals[1] + z_sum), None

    zero = jnp.zeros((), jnp.float32)
    (nll_sum, z_sum), _ = jax.lax.scan(body, (zero, zero), (split(hidden), split(targets), split(mask)))
    return nll_sum, z_sum, jnp.sum(mask)
