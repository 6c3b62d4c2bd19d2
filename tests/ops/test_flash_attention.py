"""flash_attention against the dense reference (multihead_attention + attention_mask): values, gradients, query
offsets, fully masked rows, and a jaxpr check that no score array larger than a tile exists."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen35_jax.model.attention import attention_mask, blocked_causal_attention, multihead_attention
from qwen35_jax.ops.attention import flash_attention

TOL = 1e-5


def assert_close(actual, expected, rtol=TOL, what=""):
    """Max |Δ| within ``rtol`` of the expected array's largest magnitude."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.isfinite(actual).all(), f"{what}: non-finite values"
    err, scale = np.abs(actual - expected).max(), max(np.abs(expected).max(), 1e-30)
    assert err <= rtol * scale, f"{what}: max |Δ| {err:.3g} > {rtol} × {scale:.3g}"


def packed_segments(batch, length, seed):
    """Random packed documents per row (ids from 1), the last few tokens of row 1 padding (id 0)."""
    rng = np.random.default_rng(seed)
    segments = 1 + np.cumsum(rng.random((batch, length)) < 0.12, axis=1)
    if batch > 1:
        segments[1, -3:] = 0
    return jnp.asarray(segments, jnp.int32)


def inputs(batch, length, nq, nkv, hd, seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (batch, length, nq, hd), dtype)
    k = jax.random.normal(ks[1], (batch, length, nkv, hd), dtype)
    v = jax.random.normal(ks[2], (batch, length, nkv, hd), dtype)
    return q, k, v, jax.random.normal(ks[3], (batch, length, nq, hd), jnp.float32)


def reference(q, k, v, segments):
    return multihead_attention(q, k, v, attention_mask(segments))


# (nq, nkv, T, block_q, block_k)
CASES = [(4, 2, 40, 16, 8), (2, 2, 37, 8, 16), (4, 1, 33, 32, 32), (4, 2, 24, 512, 512)]


@pytest.mark.parametrize("nq, nkv, length, block_q, block_k", CASES)
def test_matches_reference(nq, nkv, length, block_q, block_k):
    q, k, v, ct = inputs(2, length, nq, nkv, 8)
    segments = packed_segments(2, length, seed=length)

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v) * ct)

    flash = lambda q, k, v: flash_attention(q, k, v, segments, segments, block_q=block_q, block_k=block_k)
    dense = lambda q, k, v: reference(q, k, v, segments)
    assert_close(jax.jit(flash)(q, k, v), dense(q, k, v), what="output")
    grads = jax.jit(jax.grad(lambda *a: loss(flash, *a), (0, 1, 2)))(q, k, v)
    want = jax.grad(lambda *a: loss(dense, *a), (0, 1, 2))(q, k, v)
    for name, got, exp in zip("qkv", grads, want, strict=True):
        assert_close(got, exp, what=f"d{name}")


@pytest.mark.parametrize("start, stop, block_q, block_k", [(16, 40, 8, 8), (13, 41, 8, 16), (0, 20, 16, 8)])
def test_query_offset(start, stop, block_q, block_k):
    """Queries are rows start..stop-1 of the sequence, keys all of it; the (traced) offset places them."""
    length = 48
    q_full, k, v, _ = inputs(2, length, 4, 2, 8, seed=1)
    segments = packed_segments(2, length, seed=3)
    ct = jax.random.normal(jax.random.PRNGKey(9), (2, stop - start, 4, 8))

    def flash_loss(q, k, v, offset):
        out = flash_attention(q, k, v, segments[:, start:stop], segments, query_offset=offset, block_q=block_q,
                              block_k=block_k)
        return jnp.sum(out * ct), out

    def dense_loss(q, k, v):
        out = reference(q_full.at[:, start:stop].set(q), k, v, segments)[:, start:stop]
        return jnp.sum(out * ct), out

    q = q_full[:, start:stop]
    grads, out = jax.jit(jax.grad(flash_loss, (0, 1, 2), has_aux=True))(q, k, v, jnp.int32(start))
    want_grads, want = jax.grad(dense_loss, (0, 1, 2), has_aux=True)(q, k, v)
    assert_close(out, want, what="output")
    for name, got, exp in zip("qkv", grads, want_grads, strict=True):
        assert_close(got, exp, what=f"d{name}")


def test_fully_masked_rows_are_zero():
    """Rows whose segment no key has output exactly 0 with finite gradients; the other rows are unaffected."""
    length = 24
    q, k, v, ct = inputs(2, length, 4, 2, 8, seed=2)
    key_segments = packed_segments(2, length, seed=5)
    query_segments = key_segments.at[:, 3:6].set(99).at[1, 20:].set(-7)
    masked = np.asarray(query_segments) >= 99
    masked[1, 20:] = True

    def loss(q, k, v):
        out = flash_attention(q, k, v, query_segments, key_segments, block_q=8, block_k=8)
        return jnp.sum(out * ct), out

    (dq, dk, dv), out = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
    out = np.asarray(out)
    assert (out[masked] == 0).all()
    for grad in (dq, dk, dv):
        assert np.isfinite(np.asarray(grad)).all()
    assert (np.asarray(dq)[masked] == 0).all()
    want = multihead_attention(q, k, v, attention_mask(key_segments, query_segments))
    assert_close(out[~masked], np.asarray(want)[~masked], what="visible rows")


@pytest.mark.parametrize("offset, length_q, block_q, block_k", [(0, 32, 16, 16), (5, 27, 8, 16), (0, 27, 16, 8)])
def test_future_key_blocks_are_skipped(offset, length_q, block_q, block_k):
    """Keys from position 32 on are NaN and every query sits before 32: visiting any of their blocks (even for the
    padding rows of the last query block) would turn outputs or gradients into NaN (0 × NaN in the matmuls)."""
    q, _, _, ct = inputs(2, length_q, 4, 2, 8, seed=7)
    _, k, v, _ = inputs(2, 64, 4, 2, 8, seed=8)
    k, v = k.at[:, 32:].set(jnp.nan), v.at[:, 32:].set(jnp.nan)
    key_segments = packed_segments(2, 64, seed=10)
    query_segments = key_segments[:, offset:offset + length_q]

    def loss(attend, q, k, v):
        out = attend(q, k, v)
        return jnp.sum(out * ct), out

    flash = lambda q, k, v: flash_attention(q, k, v, query_segments, key_segments, query_offset=offset,
                                            block_q=block_q, block_k=block_k)
    dense = lambda q, k, v: multihead_attention(q, k, v, attention_mask(key_segments[:, :32], query_segments,
                                                                        offset))
    (dq, dk, dv), out = jax.jit(jax.grad(lambda *a: loss(flash, *a), (0, 1, 2), has_aux=True))(q, k, v)
    want_grads, want = jax.grad(lambda *a: loss(dense, *a), (0, 1, 2), has_aux=True)(q, k[:, :32], v[:, :32])
    assert_close(out, want, what="output")
    for name, got, exp in zip("qkv", (dq, dk[:, :32], dv[:, :32]), want_grads, strict=True):
        assert_close(got, exp, what=f"d{name}")
    assert (np.asarray(dk[:, 32:]) == 0).all() and (np.asarray(dv[:, 32:]) == 0).all()


def test_bf16_smoke():
    q, k, v, ct = inputs(2, 40, 4, 2, 16, seed=4)
    segments = packed_segments(2, 40, seed=6)
    cast = [x.astype(jnp.bfloat16) for x in (q, k, v)]

    def loss(q, k, v):
        out = flash_attention(q, k, v, segments, segments, block_q=16, block_k=8)
        return jnp.sum(out.astype(jnp.float32) * ct), out

    grads, out = jax.jit(jax.grad(loss, (0, 1, 2), has_aux=True))(*cast)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    assert_close(out, reference(q, k, v, segments), rtol=3e-2, what="bf16 output")
    want = jax.grad(lambda *a: jnp.sum(reference(*a, segments) * ct), (0, 1, 2))(q, k, v)
    for name, got, exp in zip("qkv", grads, want, strict=True):
        assert_close(got, exp, rtol=6e-2, what=f"bf16 d{name}")


def _avals(jaxpr):
    """Every intermediate's abstract value in ``jaxpr`` and its sub-jaxprs (loops, calls, custom rules)."""
    for eqn in jaxpr.eqns:
        yield from (var.aval for var in eqn.outvars)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _avals(inner)


def _oversized(fn, args, length_q, length_k, tile):
    """Shapes of intermediates with a dimension >= Tq and one >= Tk, or one >= Tk next to one >= ``tile``."""
    jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1, 2)))(*args).jaxpr
    bad = set()
    for aval in _avals(jaxpr):
        dims = sorted(getattr(aval, "shape", ()), reverse=True)
        if len(dims) >= 2 and ((dims[0] >= length_k and dims[1] >= min(tile, length_q))
                               or (dims[0] >= length_q and dims[1] >= length_k)):
            bad.add(tuple(aval.shape))
    return bad


@pytest.mark.parametrize("length_q, length_k, offset", [(256, 256, 0), (128, 384, 256)])
def test_memory_bounded_by_tiles(length_q, length_k, offset):
    """Forward + backward hold [block_q, block_k] score tiles only, never [Tq, Tk] nor [block_q, Tk]."""
    block = 32
    q = jnp.zeros((1, length_q, 4, 8))
    k = v = jnp.zeros((1, length_k, 2, 8))
    q_segments, k_segments = jnp.ones((1, length_q), jnp.int32), jnp.ones((1, length_k), jnp.int32)

    def loss(q, k, v):
        return flash_attention(q, k, v, q_segments, k_segments, query_offset=offset, block_q=block,
                               block_k=block).sum()

    assert not _oversized(loss, (q, k, v), length_q, length_k, block)


def test_memory_check_detects_full_rows():
    """The check above flags the dense reference ([T, T]) and the row-blocked one ([block_q, T])."""
    length, block = 256, 32
    q, k, v = jnp.zeros((1, length, 4, 8)), jnp.zeros((1, length, 2, 8)), jnp.zeros((1, length, 2, 8))
    segments = jnp.ones((1, length), jnp.int32)
    dense = lambda q, k, v: reference(q, k, v, segments).sum()
    blocked = lambda q, k, v: blocked_causal_attention(q, k, v, segments, block).sum()
    assert (length, length) in {s[-2:] for s in _oversized(dense, (q, k, v), length, length, block)}
    assert (block, length) in {s[-2:] for s in _oversized(blocked, (q, k, v), length, length, block)}


def test_rejects_bad_shapes():
    q, k, v, _ = inputs(1, 8, 3, 2, 8)
    segments = jnp.ones((1, 8), jnp.int32)
    with pytest.raises(ValueError, match="multiple of the kv heads"):
        flash_attention(q, k, v, segments, segments)
    with pytest.raises(ValueError, match="query_segments"):
        flash_attention(q[:, :, :2], k, v, segments[:, :4], segments)
