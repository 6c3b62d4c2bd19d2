"""Decoding caches: one per mixer, and the stack's ``HybridCache`` (numerics §2.3-2.4).

The same modules serve training and decoding: a mixer called without a cache runs the training forward and returns
``None`` for it; called with its cache (built by its ``init_cache``) it continues the cached sequence and returns the
updated cache. In ``HybridCache.layers`` every leaf carries a leading ``num_blocks`` axis, like the stacked
parameters the decoder scans over.
"""

from __future__ import annotations

import dataclasses

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class AttentionCache:
    """K/V of a gated-attention layer. ``valid`` marks slots holding real tokens (never left padding), ``index``
    is the next slot to write; a call of ``T`` tokens fills slots ``index .. index+T-1``."""

    key: jax.Array  # [B, S_max, kv_heads, head_dim], compute dtype
    value: jax.Array  # [B, S_max, kv_heads, head_dim]
    valid: jax.Array  # [B, S_max] bool
    index: jax.Array  # [] int32


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class GDNCache:
    """Gated-DeltaNet state: the last ``K-1`` pre-conv inputs of q, k, v (the causal conv's window) and the fp32
    recurrent state."""

    conv_q: jax.Array  # [B, K-1, key_heads, dk], compute dtype
    conv_k: jax.Array  # [B, K-1, key_heads, dk]
    conv_v: jax.Array  # [B, K-1, value_heads, dv]
    state: jax.Array  # [B, value_heads, dk, dv] fp32


LayerCache = AttentionCache | GDNCache


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HybridCache:
    """The model's cache: one layer cache per slot of ``config.block_pattern`` (leaves ``[num_blocks, ...]``) and
    ``positions [B]``, the next rope position of each row (it counts real tokens only)."""

    layers: tuple[LayerCache, ...]
    positions: jax.Array  # [B] int32

    @property
    def _attention(self) -> AttentionCache:
        for layer in self.layers:
            if isinstance(layer, AttentionCache):
                return layer
        raise ValueError("this block pattern has no attention layer: the cache keeps no slot mask / index")

    @property
    def valid(self) -> jax.Array:
        """``[B, S_max]`` bool: slots holding real tokens (shared by every attention layer)."""
        return self._attention.valid[0]

    @property
    def index(self) -> jax.Array:
        """``[]`` int32: the next slot to write (tokens written so far, padding included)."""
        return self._attention.index[0]

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]
