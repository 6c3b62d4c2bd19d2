"""Gated full attention with QK-norm, GQA and partial mRoPE (numerics §2.3); the same module serves training (no
cache) and decoding (with its ``AttentionCache``). ``attn_output_gate=False`` drops the output gate (numerics §10)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.cache import AttentionCache
from qwen35_jax.model.norms import RMSNorm
from qwen35_jax.model.params import dense, make_param
from qwen35_jax.model.rope import apply_partial_rope
from qwen35_jax.ops.attention import ContextParallelAttention
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.parallel.sharding import sequence_shards

CONTEXT_PARALLEL_BLOCK = 512  # query / key block of the context-parallel core when attention_block_q is 0


def attention_mask(segment_ids: jax.Array, query_segments: jax.Array | None = None,
                   query_start: jax.Array | int = 0) -> jax.Array:
    """``[B, 1, Tq, T]`` boolean: causal and within the same segment (packed documents, padding = its own segment).
    By default the queries are all ``T`` positions; a block of them is ``query_segments [B, Tq]`` starting at
    position ``query_start``."""
    if query_segments is None:
        query_segments = segment_ids
    query_positions = query_start + jnp.arange(query_segments.shape[1])
    causal = query_positions[:, None] >= jnp.arange(segment_ids.shape[1])[None, :]
    same = query_segments[:, :, None] == segment_ids[:, None, :]
    return (causal[None] & same)[:, None]


class GatedAttention(nnx.Module):
    """``o_proj((softmax(q kᵀ/√hd) v) ⊙ σ(gate))`` with the gate produced by ``q_proj`` next to each query head;
    without the gate (``attn_output_gate=False``) ``o_proj(softmax(q kᵀ/√hd) v)``."""

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        h, nq, nkv, hd = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
        pdt = jnp.dtype(config.param_dtype)
        self.head_dim = hd
        self.backend = runtime.backend
        self.block_q = config.attention_block_q
        self.output_gate = config.attn_output_gate
        # Static: with the sequence split over devices, attention runs context-parallel (numerics §11.2): each
        # device's queries against the all-gathered keys, key block by key block.
        self.context_parallel = None
        if sequence_shards(runtime) > 1:
            block = config.attention_block_q or CONTEXT_PARALLEL_BLOCK
            self.context_parallel = ContextParallelAttention(runtime.mesh, tuple(runtime.rules), block, block)
        # q_proj output per head is [query (hd) | gate (hd)] (per-head interleave, numerics §2.3); the query alone
        # without the output gate (numerics §10).
        q_width = 2 * hd if self.output_gate else hd
        self.q_proj = make_param(rngs, (h, nq, q_width), ("embed", "q_heads", "head_dim"), pdt)
        self.k_proj = make_param(rngs, (h, nkv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.v_proj = make_param(rngs, (h, nkv, hd), ("embed", "kv_heads", "head_dim"), pdt)
        self.o_proj = make_param(rngs, (nq, hd, h), ("q_heads", "head_dim", "embed"), pdt)
        self.q_norm = RMSNorm(hd, config.rms_norm_eps, param_dtype=pdt, rngs=rngs, axis_name="head_dim")
        self.k_norm = RMSNorm(hd, config.rms_norm_eps, param_dtype=pdt, rngs=rngs, axis_name="head_dim")

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 cache: AttentionCache | None = None) -> tuple[jax.Array, AttentionCache | None]:
        """``x [B, T, H]`` → ``(y [B, T, H], cache)``.

        Without a cache (training): causal attention within segments (``segment_ids [B, T]``), cache ``None``.
        With one: the T tokens take the next cache slots (real where ``segment_ids != 0``) and attend causally to
        every real slot; returns the updated cache.
        """
        query, gate, key, value = self.project(x, cos, sin)
        if cache is None:
            if self.context_parallel is not None:
                return self.output(self.context_parallel(query, key, value, segment_ids), gate), None
            return self.output(blocked_causal_attention(query, key, value, segment_ids, self.block_q), gate), None
        attended, cache = cached_attention(query, key, value, segment_ids, cache)
        return self.output(attended, gate), cache

    def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype) -> AttentionCache:
        """An empty cache for ``batch`` rows of at most ``max_length`` tokens."""
        kv_heads, head_dim = self.k_proj.shape[-2:]
        shape = (batch, max_length, kv_heads, head_dim)
        return AttentionCache(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype),
                              valid=jnp.zeros((batch, max_length), bool), index=jnp.zeros((), jnp.int32))

    def project(self, x: jax.Array, cos: jax.Array, sin: jax.Array) -> tuple[jax.Array | None, ...]:
        """(query, output gate or None, key, value), each ``[B, T, heads, head_dim]``; q/k normed and rotated."""
        query_gate = dense(x, self.q_proj, "bte,ehd->bthd", self.backend)
        if self.output_gate:
            query, gate = query_gate[..., : self.head_dim], query_gate[..., self.head_dim:]
        else:
            query, gate = query_gate, None
        query = apply_partial_rope(self.q_norm(query), cos, sin)
        key = apply_partial_rope(self.k_norm(dense(x, self.k_proj, "bte,ehd->bthd", self.backend)), cos, sin)
        return query, gate, key, dense(x, self.v_proj, "bte,ehd->bthd", self.backend)

    def output(self, attended: jax.Array, gate: jax.Array | None) -> jax.Array:
        """Sigmoid output gate (when the layer has one), then the output projection."""
        if gate is not None:
            attended = attended * jax.nn.sigmoid(gate)
        return dense(attended, self.o_proj, "bthd,hde->bte", self.backend)


def multihead_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention, GQA by grouping query heads per kv head (no repeated k/v); logits and softmax in fp32."""
    batch, length, nq, hd = query.shape
    nkv = key.shape[2]
    q = query.reshape(batch, length, nkv, nq // nkv, hd)
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, key, preferred_element_type=jnp.float32) * (hd ** -0.5)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
    out = jnp.einsum("bgrqk,bkgd->bqgrd", probs, value, preferred_element_type=jnp.float32)
    return out.reshape(batch, length, nq, hd).astype(query.dtype)


def cached_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array,
                     cache: AttentionCache) -> tuple[jax.Array, AttentionCache]:
    """Write ``key`` / ``value [B, T, kv_heads, hd]`` at slots ``index .. index+T-1`` and attend each query to the
    real slots up to its own."""
    length, index = query.shape[1], cache.index
    keys = jax.lax.dynamic_update_slice_in_dim(cache.key, key.astype(cache.key.dtype), index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(cache.value, value.astype(cache.value.dtype), index, axis=1)
    valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids != 0, index, axis=1)
    causal = jnp.arange(keys.shape[1])[None, :] <= (index + jnp.arange(length))[:, None]  # [T, S_max]
    mask = (causal[None] & valid[:, None, :])[:, None]  # [B, 1, T, S_max]
    out = multihead_attention(query, keys.astype(query.dtype), values.astype(query.dtype), mask)
    return out, AttentionCache(key=keys, value=values, valid=valid, index=index + length)


def blocked_causal_attention(query: jax.Array, key: jax.Array, value: jax.Array, segment_ids: jax.Array,
                             block_q: int) -> jax.Array:
    """Causal, segment-masked attention over blocks of ``block_q`` queries (``lax.map``), each block rematerialised
    in the backward: peak memory holds one ``[block_q, T]`` score block per head instead of ``[T, T]``. Every
    query row still sees all its keys in one softmax, so the values equal the unblocked computation's."""
    batch, length, nq, hd = query.shape
    if block_q <= 0 or length <= block_q:
        return multihead_attention(query, key, value, attention_mask(segment_ids))
    blocks = -(-length // block_q)
    pad = blocks * block_q - length
    # Padded queries get segment -1: they see no key, and their rows are dropped below.
    q = jnp.pad(query, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_segments = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
    q = q.reshape(batch, blocks, block_q, nq, hd).swapaxes(0, 1)
    q_segments = q_segments.reshape(batch, blocks, block_q).swapaxes(0, 1)

    @jax.checkpoint
    def one_block(args: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        q_block, q_seg, start = args
        return multihead_attention(q_block, key, value, attention_mask(segment_ids, q_seg, start))

    out = jax.lax.map(one_block, (q, q_segments, jnp.arange(blocks) * block_q))
    return out.swapaxes(0, 1).reshape(batch, blocks * block_q, nq, hd)[:, :length]
