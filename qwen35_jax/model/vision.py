"""Vision tower (numerics §2.10): patch embedding, resampled learned position table, 2D rotary, pre-LN blocks with
attention restricted to each image / temporal slice, and the 2×2 patch merger.

Grid sizes are static Python ints (they fix every shape); everything that depends only on them — patch coordinates,
the bilinear resampling taps of the position table and the attention segments — is computed on the host in NumPy
(``VisionGeometry``), so the traced computation is dense and jit-friendly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import VisionConfig
from qwen35_jax.model.params import constant_init, make_param

VISION_ROPE_THETA = 10000.0  # rope_type "axial" default of Qwen3_5VisionConfig (not a config field here)
LAYER_NORM_EPS = 1e-6

Grid = tuple[int, int, int]


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.weight = make_param(rngs, (dim,), ("norm",), param_dtype, constant_init(1.0))
        self.bias = make_param(rngs, (dim,), ("norm",), param_dtype, constant_init(0.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``(x − mean) / sqrt(var + 1e-6) · w + b`` in fp32, cast back to the input dtype."""
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class Linear(nnx.Module):
    def __init__(self, fan_in: int, fan_out: int, axes: tuple[str, str], *, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.kernel = make_param(rngs, (fan_in, fan_out), axes, param_dtype)
        self.bias = make_param(rngs, (fan_out,), (axes[1],), param_dtype, constant_init(0.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype), preferred_element_type=jnp.float32)
        return (y + self.bias[...].astype(jnp.float32)).astype(x.dtype)


# ------------------------------------------------------------------------------------------------ host geometry


def normalize_grids(grid_thw: object, name: str = "grid_thw") -> tuple[Grid, ...]:
    """``[n, 3]`` (t, h, w) as a tuple of Python int triples; tracers are rejected (shapes depend on the grid)."""
    if isinstance(grid_thw, jax.core.Tracer):
        raise ValueError(f"{name} must be concrete (NumPy / a list of (t, h, w) ints): grid sizes fix the vision "
                         "tower's shapes, so they cannot be traced; pass them as static arguments under jit")
    grids = np.asarray(grid_thw)
    if grids.ndim != 2 or grids.shape[1] != 3 or not np.issubdtype(grids.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array of shape [num_images, 3] (t, h, w); got {grids.dtype} "
                         f"{grids.shape}")
    if (grids <= 0).any():
        raise ValueError(f"{name} entries must be positive; got {grids.tolist()}")
    return tuple((int(t), int(h), int(w)) for t, h, w in grids)


@dataclasses.dataclass(frozen=True)
class VisionGeometry:
    """Per-patch host arrays for a tuple of grids (patches in the processor's merge-block-major order)."""

    rows: np.ndarray  # [N] patch row inside its image
    cols: np.ndarray  # [N] patch column
    taps: np.ndarray  # [N, 4] int32 indices into the flattened side×side position table
    weights: np.ndarray  # [N, 4] float32 bilinear weights (align_corners=True, border clamp)
    segments: tuple[tuple[int, np.ndarray], ...]  # (length L, [count, L] token indices): attention groups
    num_patches: int


def _block_order_coords(h: int, w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of each patch when patches are listed block row, block col, in-block row, in-block col."""
    r = np.arange(h).reshape(h // merge, merge, 1, 1)
    c = np.arange(w).reshape(1, 1, w // merge, merge)
    rows = np.broadcast_to(r, (h // merge, merge, w // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
    cols = np.broadcast_to(c, (h // merge, merge, w // merge, merge)).transpose(0, 2, 1, 3).reshape(-1)
    return rows, cols


def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Two bilinear taps per target index on one axis, ``src = i·(side−1)/max(size−1, 1)`` (fp32 like HF-V)."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    taps = floor.astype(np.int64)[:, None] + np.arange(2)
    weights = np.clip(np.float32(1) - np.abs(src[:, None] - taps.astype(np.float32)), 0, None).astype(np.float32)
    return np.clip(taps, 0, side - 1), weights


@functools.lru_cache(maxsize=64)
def vision_geometry(grids: tuple[Grid, ...], merge: int, side: int) -> VisionGeometry:
    rows, cols, taps, weights, by_length = [], [], [], [], {}
    start = 0
    for t, h, w in grids:
        if h % merge or w % merge:
            raise ValueError(f"grid (t={t}, h={h}, w={w}) is invalid: h and w must be multiples of "
                             f"spatial_merge_size={merge} (the processor resizes images to multiples of "
                             f"patch_size·merge_size)")
        r, c = _block_order_coords(h, w, merge)
        h_taps, h_w = _axis_taps(r, h, side)
        w_taps, w_w = _axis_taps(c, w, side)
        frame_taps = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
        frame_weights = (h_w[:, :, None] * w_w[:, None, :]).reshape(-1, 4)
        for _ in range(t):  # every temporal slice is its own attention segment (HF-V cu_seqlens)
            rows.append(r)
            cols.append(c)
            taps.append(frame_taps)
            weights.append(frame_weights)
            by_length.setdefault(h * w, []).append(np.arange(start, start + h * w))
            start += h * w
    segments = tuple((length, np.stack(idx)) for length, idx in sorted(by_length.items()))
    return VisionGeometry(rows=np.concatenate(rows), cols=np.concatenate(cols),
                          taps=np.concatenate(taps).astype(np.int32), weights=np.concatenate(weights),
                          segments=segments, num_patches=start)


def vision_rope(rows: np.ndarray, cols: np.ndarray, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial 2D rotary tables ``[N, head_dim]``: ``[r·f, c·f, r·f, c·f]`` with ``f = θ^(−2i/(head_dim/2))``."""
    spatial = head_dim // 2
    inv_freq = np.float32(1.0) / (np.float32(VISION_ROPE_THETA) **
                                  (np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial)))
    angles = np.concatenate([rows[:, None].astype(np.float32) * inv_freq, cols[:, None].astype(np.float32) * inv_freq],
                            axis=-1)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# ------------------------------------------------------------------------------------------------ modules


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half rotary over the full head dim, in fp32 (numerics §7.6), cast back."""
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array, segments: Sequence[tuple[int, np.ndarray]]
                      ) -> jax.Array:
    """Bidirectional softmax attention within each segment; ``q, k, v [N, heads, dh]``.

    Segments of equal length are gathered into one batch ``[count, L, heads, dh]``, so the cost is Σ L² rather than
    N², and the result is scattered back to the original patch order.
    """
    scale = q.shape[-1] ** -0.5
    out = jnp.zeros_like(q)
    for _, index in segments:
        idx = jnp.asarray(index)
        logits = jnp.einsum("sqhd,skhd->shqk", q[idx], k[idx], preferred_element_type=jnp.float32) * scale
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        seg = jnp.einsum("shqk,skhd->sqhd", probs, v[idx], preferred_element_type=jnp.float32).astype(q.dtype)
        out = out.at[idx.reshape(-1)].set(seg.reshape(-1, *seg.shape[2:]))
    return out


class VisionBlock(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d, i = config.hidden_size, config.intermediate_size
        self.num_heads = config.num_heads
        self.norm1 = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Linear(d, 3 * d, ("vision_embed", "vision_qkv"), param_dtype=param_dtype, rngs=rngs)
        self.proj = Linear(d, d, ("vision_heads", "vision_embed"), param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(d, i, ("vision_embed", "vision_mlp"), param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(i, d, ("vision_mlp", "vision_embed"), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 segments: Sequence[tuple[int, np.ndarray]]) -> jax.Array:
        n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, 3, self.num_heads, d // self.num_heads)  # [q | k | v], head-major
        q, k = _rotate(qkv[:, 0], cos, sin), _rotate(qkv[:, 1], cos, sin)
        x = x + self.proj(segment_attention(q, k, qkv[:, 2], segments).reshape(n, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=True))  # gelu_pytorch_tanh


class VisionOutput(NamedTuple):
    last_hidden_state: jax.Array  # [N, D] block output before the merger (patch order of the processor)
    pooler_output: jax.Array  # [N / merge², out_hidden_size] merged tokens, images concatenated in order


class VisionTower(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        d, merged = config.hidden_size, config.hidden_size * config.spatial_merge_size**2
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.patch_embed = Linear(config.patch_dim, d, ("vision_patch", "vision_embed"), param_dtype=param_dtype,
                                  rngs=rngs)
        self.pos_embed = make_param(rngs, (config.num_position_embeddings, d), ("vision_positions", "vision_embed"),
                                    param_dtype)
        self.blocks = nnx.List([VisionBlock(config, param_dtype=param_dtype, rngs=rngs) for _ in range(config.depth)])
        self.merger_norm = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.merger_fc1 = Linear(merged, merged, ("vision_merged", "vision_merged_out"), param_dtype=param_dtype,
                                 rngs=rngs)
        self.merger_fc2 = Linear(merged, config.out_hidden_size, ("vision_merged", "embed"), param_dtype=param_dtype,
                                 rngs=rngs)

    def geometry(self, grid_thw: object) -> VisionGeometry:
        side = math.isqrt(self.config.num_position_embeddings)
        return vision_geometry(normalize_grids(grid_thw), self.config.spatial_merge_size, side)

    def __call__(self, pixel_values: jax.Array, grid_thw: object) -> VisionOutput:
        """``pixel_values [Σ t·h·w, C·Tp·P·P]`` (processor layout) and ``grid_thw [n, 3]`` → merged embeddings."""
        cfg = self.config
        geo = self.geometry(grid_thw)
        if pixel_values.ndim != 2 or pixel_values.shape != (geo.num_patches, cfg.patch_dim):
            raise ValueError(f"pixel_values must be [Σ t·h·w, in_channels·temporal_patch_size·patch_size²] = "
                             f"{[geo.num_patches, cfg.patch_dim]} for grid_thw {list(normalize_grids(grid_thw))}; "
                             f"got {list(pixel_values.shape)}")
        x = self.patch_embed(pixel_values.astype(self.dtype))
        table = self.pos_embed[...].astype(jnp.float32)
        pos = jnp.sum(table[jnp.asarray(geo.taps)] * jnp.asarray(geo.weights)[..., None], axis=1)
        x = x + pos.astype(x.dtype)
        cos, sin = (jnp.asarray(a) for a in vision_rope(geo.rows, geo.cols, cfg.hidden_size // cfg.num_heads))
        for block in self.blocks:
            x = block(x, cos, sin, geo.segments)
        merged = self.merger_norm(x).reshape(-1, cfg.hidden_size * cfg.spatial_merge_size**2)
        merged = self.merger_fc2(jax.nn.gelu(self.merger_fc1(merged), approximate=False))  # exact-erf GELU (§7.13)
        return VisionOutput(last_hidden_state=x, pooler_output=merged)
