"""Causal, segment-masked softmax attention whose memory is bounded by ``[block_q, block_k]`` score tiles.

The forward walks the key blocks of each query block with an online softmax (running row max, row sum and output
accumulator in fp32) and keeps only the output and the per-row log-sum-exp; the hand-written backward recomputes
the score tiles from them. Key blocks wholly in the causal future of a query block are never visited (dynamic loop
bounds), so causal attention costs about half the tiles of the full square.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Residuals = tuple[jax.Array, ...]


def flash_attention(query: jax.Array, key: jax.Array, value: jax.Array, query_segments: jax.Array,
                    key_segments: jax.Array, *, query_offset: jax.Array | int = 0, block_q: int = 512,
                    block_k: int = 512) -> jax.Array:
    """Softmax attention ``[B, Tq, nq, hd]`` of ``query [B, Tq, nq, hd]`` over ``key`` / ``value [B, Tk, nkv, hd]``.

    Query head ``i`` reads kv head ``i // (nq // nkv)`` (GQA by grouping; k/v are never repeated). Query row ``i``
    sits at position ``query_offset + i`` (a Python int or a traced int32 scalar) and key ``j`` at ``j``; the row sees
    key ``j`` iff ``j <= query_offset + i`` and ``query_segments[:, i] == key_segments[:, j]``. A row that sees no key
    outputs 0. Logits and softmax statistics are fp32 (scale ``hd ** -0.5``); the output has the query's dtype.
    """
    if query.ndim != 4 or key.ndim != 4 or key.shape != value.shape:
        raise ValueError(f"flash_attention: query {query.shape} must be [B, Tq, nq, hd] and key {key.shape}, value "
                         f"{value.shape} the same [B, Tk, nkv, hd]")
    batch, length_q, heads_q, head_dim = query.shape
    heads_kv = key.shape[2]
    if key.shape[0] != batch or key.shape[3] != head_dim or heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"flash_attention: query {query.shape} and key {key.shape} need the same batch and head_dim, "
                         "and the query heads a multiple of the kv heads")
    if query_segments.shape != (batch, length_q) or key_segments.shape != (batch, key.shape[1]):
        raise ValueError(f"flash_attention: query_segments {query_segments.shape} must be {(batch, length_q)} and "
                         f"key_segments {key_segments.shape} must be {(batch, key.shape[1])}")
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"flash_attention: block_q={block_q} and block_k={block_k} must be positive")
    offset = jnp.asarray(query_offset, jnp.int32)
    if length_q == 0 or key.shape[1] == 0:  # nothing to attend: zeros (and zero gradients)
        return jnp.zeros_like(query)
    block_q, block_k = min(block_q, length_q), min(block_k, key.shape[1])
    return _flash(block_q, block_k, query, key, value, query_segments, key_segments, offset)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _blocked(x: jax.Array, block: int) -> jax.Array:
    """``[B, T, ...]`` → ``[T / block, B, block, ...]``, zero-padding T up to a whole number of blocks."""
    blocks = _cdiv(x.shape[1], block)
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, blocks * block - x.shape[1])
    x = jnp.pad(x, pad)
    return jnp.moveaxis(x.reshape(x.shape[0], blocks, block, *x.shape[2:]), 1, 0)


def _unblocked(x: jax.Array, length: int) -> jax.Array:
    """Inverse of ``_blocked``: ``[n, B, block, ...]`` → ``[B, length, ...]``."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _anchor(*refs: jax.Array) -> jax.Array:
    """A float32 zero scalar that varies over the manual mesh axes of all ``refs``: added to a loop's initial carry
    inside ``shard_map`` (check_vma) it gives the carry the type the loop body produces. A no-op elsewhere."""
    return sum(lax.full_like(r, 0, jnp.float32, ()) for r in refs)


def _scores(q: jax.Array, q_segments: jax.Array, q_start: jax.Array, k: jax.Array, k_segments: jax.Array,
            k_start: jax.Array, key_length: int, scale: float) -> jax.Array:
    """Masked fp32 logits ``[B, g, r, bq, bk]`` of one query block against one key block (-inf where not seen)."""
    logits = jnp.einsum("bqgrd,bkgd->bgrqk", q, k, preferred_element_type=jnp.float32) * scale
    q_pos = q_start + jnp.arange(q.shape[1])
    k_pos = k_start + jnp.arange(k.shape[1])
    visible = (k_pos[None, :] <= q_pos[:, None]) & (k_pos < key_length)[None, :]
    visible = visible[None] & (q_segments[:, :, None] == k_segments[:, None, :])
    return jnp.where(visible[:, None, None], logits, -jnp.inf)


def _grouped(x: jax.Array, heads_kv: int) -> jax.Array:
    """``[B, T, nq, hd]`` → ``[B, T, nkv, nq / nkv, hd]``."""
    return x.reshape(*x.shape[:2], heads_kv, x.shape[2] // heads_kv, x.shape[3])


def _forward(block_q: int, block_k: int, query: jax.Array, key: jax.Array, value: jax.Array,
             query_segments: jax.Array, key_segments: jax.Array, offset: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(output ``[B, Tq, nq, hd]``, log-sum-exp ``[Tq / block_q, B, nkv, r, block_q]``; +inf on rows that see no
    key)."""
    length_q, heads_kv, head_dim = query.shape[1], key.shape[2], key.shape[3]
    length_k = key.shape[1]
    scale = head_dim ** -0.5
    key_blocks = _cdiv(length_k, block_k)
    q_blocked = _blocked(_grouped(query, heads_kv), block_q)
    q_seg_blocked = _blocked(query_segments, block_q)
    key_p, value_p, k_seg_p = (_blocked(x, block_k) for x in (key, value, key_segments))
    anchor = _anchor(query, key, value, query_segments, key_segments, offset)

    def query_block(args: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        index, q, q_seg = args
        q_start = offset + index * block_q
        # Key blocks starting after this block's last real query (padding rows excluded) are never visible.
        last_row = jnp.minimum(q_start + block_q, offset + length_q) - 1
        visited = jnp.clip(last_row // block_k + 1, 0, key_blocks)
        stats_shape = (q.shape[0], heads_kv, q.shape[3], block_q)

        def key_block(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            row_max, row_sum, acc = carry
            logits = _scores(q, q_seg, q_start, key_p[j], k_seg_p[j], j * block_k, length_k, scale)
            new_max = jnp.maximum(row_max, logits.max(-1))
            shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)  # rows that have seen nothing yet stay at 0
            probs = jnp.exp(logits - shift[..., None])
            rescale = jnp.exp(row_max - shift)
            row_sum = rescale * row_sum + probs.sum(-1)
            pv = jnp.einsum("bgrqk,bkgd->bgrqd", probs.astype(value.dtype), value_p[j],
                            preferred_element_type=jnp.float32)
            return new_max, row_sum, rescale[..., None] * acc + pv

        init = (jnp.full(stats_shape, -jnp.inf) + anchor, jnp.zeros(stats_shape) + anchor,
                jnp.zeros((*stats_shape, head_dim)) + anchor)
        row_max, row_sum, acc = lax.fori_loop(0, visited, key_block, init)
        seen = row_sum > 0
        out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
        lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), jnp.inf)
        return jnp.einsum("bgrqd->bqgrd", out).astype(query.dtype), lse

    out, lse = lax.map(query_block, (jnp.arange(q_blocked.shape[0]), q_blocked, q_seg_blocked))
    return _unblocked(out, length_q).reshape(query.shape), lse


def _flash_fwd(block_q: int, block_k: int, query: jax.Array, key: jax.Array, value: jax.Array,
               query_segments: jax.Array, key_segments: jax.Array, offset: jax.Array
               ) -> tuple[jax.Array, Residuals]:
    out, lse = _forward(block_q, block_k, query, key, value, query_segments, key_segments, offset)
    return out, (query, key, value, query_segments, key_segments, offset, out, lse)


def _flash_bwd(block_q: int, block_k: int, residuals: Residuals, d_out: jax.Array) -> tuple[jax.Array | None, ...]:
    """dq, dk, dv from recomputed tiles: p = exp(s - lse), dv += pᵀ dO, ds = p ⊙ (dO vᵀ - D) with
    D = rowsum(dO ⊙ O), dq += ds k, dk += dsᵀ q. Outer loop over key blocks (dk, dv of one block accumulate in the
    carry), inner loop over the query blocks that can see it (dq accumulates in place)."""
    query, key, value, query_segments, key_segments, offset, out, lse = residuals
    length_q, heads_kv, head_dim = query.shape[1], key.shape[2], key.shape[3]
    length_k = key.shape[1]
    scale = head_dim ** -0.5
    q_blocked = _blocked(_grouped(query, heads_kv), block_q)  # [nq_blocks, B, bq, g, r, hd]
    do_blocked = _blocked(_grouped(d_out, heads_kv), block_q)
    q_seg_blocked = _blocked(query_segments, block_q)
    query_blocks = q_blocked.shape[0]
    delta = _blocked(jnp.einsum("bqgrd,bqgrd->bqgr", _grouped(d_out, heads_kv), _grouped(out, heads_kv),
                                preferred_element_type=jnp.float32), block_q)  # [nq_blocks, B, bq, g, r]
    anchor = _anchor(query, key, value, query_segments, key_segments, offset, d_out)

    def key_block(dq: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        j, k, v, k_seg = xs
        k_start = j * block_k
        # The first query block whose last row can see this block's first key; none when no real row can.
        first = jnp.clip((k_start - offset) // block_q, 0, query_blocks)
        first = jnp.where(k_start < offset + length_q, first, query_blocks)

        def query_block(i: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            dq, dk, dv = carry
            q, do = q_blocked[i], do_blocked[i]
            logits = _scores(q, q_seg_blocked[i], offset + i * block_q, k, k_seg, k_start, length_k, scale)
            probs = jnp.exp(logits - lse[i][..., None])  # 0 where masked and on rows that see nothing (lse=+inf)
            dv = dv + jnp.einsum("bgrqk,bqgrd->bkgd", probs.astype(do.dtype), do, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqgrd,bkgd->bgrqk", do, v, preferred_element_type=jnp.float32)
            ds = probs * (dp - jnp.einsum("bqgr->bgrq", delta[i])[..., None])
            dq_i = jnp.einsum("bgrqk,bkgd->bqgrd", ds.astype(k.dtype), k, preferred_element_type=jnp.float32)
            dq = lax.dynamic_update_index_in_dim(dq, dq[i] + dq_i, i, 0)
            dk = dk + jnp.einsum("bgrqk,bqgrd->bkgd", ds.astype(q.dtype), q, preferred_element_type=jnp.float32)
            return dq, dk, dv

        zeros = jnp.zeros(k.shape, jnp.float32) + anchor
        dq, dk, dv = lax.fori_loop(first, query_blocks, query_block, (dq, zeros, zeros))
        return dq, (dk, dv)

    key_p, value_p, k_seg_p = (_blocked(x, block_k) for x in (key, value, key_segments))
    dq0 = jnp.zeros(q_blocked.shape, jnp.float32) + anchor
    dq, (dk, dv) = lax.scan(key_block, dq0, (jnp.arange(key_p.shape[0]), key_p, value_p, k_seg_p))
    dq = _unblocked(dq * scale, length_q).reshape(query.shape).astype(query.dtype)
    dk = _unblocked(dk * scale, length_k).astype(key.dtype)
    dv = _unblocked(dv, length_k).astype(value.dtype)
    no_grad = [np.zeros(np.shape(x), jax.dtypes.float0) for x in (query_segments, key_segments, offset)]
    return dq, dk, dv, *no_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(block_q: int, block_k: int, query: jax.Array, key: jax.Array, value: jax.Array,
           query_segments: jax.Array, key_segments: jax.Array, offset: jax.Array) -> jax.Array:
    return _forward(block_q, block_k, query, key, value, query_segments, key_segments, offset)[0]


_flash.defvjp(_flash_fwd, _flash_bwd)
