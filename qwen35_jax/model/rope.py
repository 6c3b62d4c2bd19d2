"""Partial rotary position embedding with interleaved multimodal sections (numerics §2.3.1).

Positions come as three rows (temporal, height, width) per token, ``[3, B, T]``; plain text passes ``[B, T]`` and
all rows are equal, which reduces to 1-D partial RoPE. Qwen3-Next (``mrope_section=None``) uses the first row only.
``partial_rotary_factor=0`` (NoPE, numerics §10) gives empty ``[B, T, 0]`` tables and leaves q/k unrotated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from qwen35_jax.config import ModelConfig


def mrope_axis_of_frequency(rotary_dim: int, mrope_section: tuple[int, ...] | None) -> np.ndarray:
    """For each of the ``rotary_dim / 2`` frequencies, which position row (0=T, 1=H, 2=W) drives it."""
    half = rotary_dim // 2
    axis = np.zeros(half, np.int32)
    if mrope_section is not None:
        j = np.arange(half)
        axis[(j % 3 == 1) & (j < 3 * mrope_section[1])] = 1
        axis[(j % 3 == 2) & (j < 3 * mrope_section[2])] = 2
    return axis


def rope_cos_sin(config: ModelConfig, positions: jax.Array, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[B, T, rotary_dim]``: computed in fp32, cast to the activation dtype as HF does (§7.6)."""
    if positions.ndim == 2:
        positions = jnp.broadcast_to(positions[None], (3, *positions.shape))
    if positions.ndim != 3 or positions.shape[0] != 3:
        raise ValueError(f"positions must be [B, T] or [3, B, T]; got shape {positions.shape}")
    rotary = config.rotary_dim
    if rotary == 0:  # NoPE (numerics §10): empty tables, and apply_partial_rope passes q/k through
        return jnp.zeros((*positions.shape[1:], 0), dtype), jnp.zeros((*positions.shape[1:], 0), dtype)
    exponents = np.arange(0, rotary, 2).astype(np.float32) / np.float32(rotary)
    inv_freq = np.float32(1.0) / (np.float32(config.rope_theta) ** exponents)  # fp32 like the reference
    axis = mrope_axis_of_frequency(rotary, config.mrope_section)
    pos = positions.astype(jnp.float32)[axis]  # [R/2, B, T]: each frequency reads its own position row
    angles = jnp.moveaxis(pos, 0, -1) * jnp.asarray(inv_freq, jnp.float32)  # [B, T, R/2]
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_partial_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate the first ``rotary_dim`` channels of ``x [B, T, N, D]`` (rotate-half pairing), pass the rest."""
    rotary = cos.shape[-1]
    if rotary == 0:  # NoPE: nothing rotates (static shape, so no ops are traced)
        return x
    rot, rest = x[..., :rotary], x[..., rotary:]
    half = rotary // 2
    rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([rot * cos + rotated_half * sin, rest], axis=-1)
