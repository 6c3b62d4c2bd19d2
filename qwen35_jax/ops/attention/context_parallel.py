"""Context-parallel causal attention: the sequence sharded over the mesh, each device attending its own query rows.

Inside ``jax.shard_map`` every device holds ``T / S`` consecutive query rows (S = sequence shards) and gathers the
whole key, value and key segment ids over the sequence axes; its rows start at position ``shard index * T / S``,
which ``flash_attention`` takes as its query offset (key blocks after the device's last row are skipped). The
backward comes from JAX's AD: the all-gather transposes to a reduce-scatter of dk, dv.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from qwen35_jax.ops.attention.flash import flash_attention
from qwen35_jax.parallel.rules import Rule, as_axes, axes_size, spec_for


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one call is split: mesh axes of batch, sequence and query heads, and how kv heads are placed."""

    batch: tuple[str, ...]
    seq: tuple[str, ...]
    heads: tuple[str, ...]
    kv_split: bool  # kv heads split over ``heads`` like the query heads; else replicated, picked per device
    heads_q: int  # query heads per device
    group: int  # query heads per kv head (global)


@dataclasses.dataclass(frozen=True)
class ContextParallelAttention:
    """Causal, segment-masked attention of global ``query [B, T, nq, hd]``, ``key`` / ``value [B, T, nkv, hd]``,
    ``segment_ids [B, T]`` (positions 0..T-1) with batch, sequence and heads sharded by the ``act_batch``,
    ``act_seq`` and ``q_heads`` rules; equal to the single-device ``multihead_attention`` with ``attention_mask``."""

    mesh: Mesh
    rules: tuple[Rule, ...]
    block_q: int = 512
    block_k: int = 512

    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array) -> jax.Array:
        layout = self.layout(query.shape, key.shape, value.shape, segment_ids.shape)
        spec = lambda axes: axes[0] if len(axes) == 1 else (axes or None)
        batch, seq, heads = spec(layout.batch), spec(layout.seq), spec(layout.heads)
        q_spec = P(batch, seq, heads, None)
        kv_spec = P(batch, seq, heads if layout.kv_split else None, None)
        block_q, block_k = self.block_q, self.block_k

        def local(q: jax.Array, k: jax.Array, v: jax.Array, segments: jax.Array) -> jax.Array:
            if not layout.kv_split and layout.heads:
                k, v = _local_kv_heads(k, v, layout)
            if layout.seq:
                k, v, k_segments = (jax.lax.all_gather(x, layout.seq, axis=1, tiled=True) for x in (k, v, segments))
                offset = jax.lax.axis_index(layout.seq) * q.shape[1]
            else:
                k_segments, offset = segments, 0
            return flash_attention(q, k, v, segments, k_segments, query_offset=offset, block_q=block_q,
                                   block_k=block_k)

        return jax.shard_map(local, mesh=self.mesh, in_specs=(q_spec, kv_spec, kv_spec, P(batch, seq)),
                             out_specs=q_spec, check_vma=True)(query, key, value, segment_ids)

    def layout(self, query_shape: tuple[int, ...], key_shape: tuple[int, ...], value_shape: tuple[int, ...],
               segments_shape: tuple[int, ...]) -> _Layout:
        """Validate the shapes against the mesh and resolve the rules (raises ``ValueError`` naming the fix)."""
        if len(query_shape) != 4 or tuple(key_shape) != tuple(value_shape) or len(key_shape) != 4:
            raise ValueError(f"context-parallel attention: query {query_shape} must be [B, T, nq, hd] and key "
                             f"{key_shape}, value {value_shape} the same [B, T, nkv, hd]")
        batch, length, heads_q, head_dim = query_shape
        heads_kv = key_shape[2]
        if (key_shape[0], key_shape[1], key_shape[3]) != (batch, length, head_dim) or heads_q % heads_kv:
            raise ValueError(f"context-parallel attention: key {key_shape} must match query {query_shape} in batch, "
                             "length and head_dim, with the query heads a multiple of the kv heads")
        if tuple(segments_shape) != (batch, length):
            raise ValueError(f"context-parallel attention: segment_ids {segments_shape} must be {(batch, length)}")
        # Sequence size None: resolve its axes without the rules' divisibility check, to explain it here instead.
        where = "context-parallel attention query"
        axes = [as_axes(a) for a in spec_for(("act_batch", "act_seq", "q_heads", None),
                                             (batch, None, heads_q, head_dim), self.mesh, self.rules, where)]
        shards = axes_size(self.mesh, axes[1])
        if length % shards:
            sizes = " x ".join(f"mesh.{a}={self.mesh.shape[a]}" for a in axes[1])
            raise ValueError(f"sequence length {length} is not divisible by {sizes}: choose data.seq_len a multiple "
                             f"of {shards} (or shard the sequence less)")
        kv_heads = spec_for(("act_batch", "act_seq", "kv_heads", None), (batch, length, heads_kv, head_dim),
                            self.mesh, self.rules, "context-parallel attention key")[2]
        head_shards = axes_size(self.mesh, axes[2])
        return _Layout(batch=axes[0], seq=axes[1], heads=axes[2], kv_split=as_axes(kv_heads) == axes[2],
                       heads_q=heads_q // head_shards, group=heads_q // heads_kv)


def _local_kv_heads(key: jax.Array, value: jax.Array, layout: _Layout) -> tuple[jax.Array, jax.Array]:
    """From replicated kv heads, those read by this device's query heads ``[t * n, (t + 1) * n)`` (t: its index on
    the head axes, n: query heads per device), laid out so that local query head i reads local kv head
    ``i // (n / local kv heads)``."""
    first = jax.lax.axis_index(layout.heads) * layout.heads_q
    group, count = layout.group, layout.heads_q
    if count % group == 0:  # whole groups: their kv heads, in order
        size = count // group
    elif group % count == 0:  # part of one group: its kv head
        size = 1
    else:  # groups straddle devices unevenly: one kv head per local query head
        index = (first + jnp.arange(count)) // group
        return jnp.take(key, index, axis=2), jnp.take(value, index, axis=2)
    return tuple(jax.lax.dynamic_slice_in_dim(x, first // group, size, axis=2) for x in (key, value))
