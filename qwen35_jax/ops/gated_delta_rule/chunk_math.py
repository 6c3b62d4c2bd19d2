"""Chunked gated delta rule shared by the Pallas kernels (numerics §2.5; numerics §7 items 4 and 8).

Two halves, both used by ``pallas_tpu`` and ``pallas_gpu``:

* In-kernel algebra on one chunk (``CHUNK`` tokens) of one value head, written with 2-D arrays and only ops that
  lower on both Mosaic TPU and Triton (dot, exp, where, iota, axis sums; no cumsum, no 1-D vectors):
  ``chunk_forward``, ``chunk_backward`` and ``unit_lower_inverse``. Both are compositions of phases the GPU
  kernels launch separately (numerics §2.5 "GPU phases"): ``chunk_prepare`` -> ``state_step`` -> ``chunk_output``
  forward; ``chunk_dvn_local`` -> ``dstate_step`` -> ``chunk_local_grads`` backward. Only ``state_step`` and
  ``dstate_step`` carry anything from chunk to chunk.
* Host-side plumbing: packing the core-contract inputs into the kernel layout, the ``jax.custom_vjp`` wiring around
  a backend's forward and backward launches and the reduction of per-tile partial gradients.

Per chunk, with cumulative log-decay gamma_i = sum_{j<=i} g_j (computed outside the kernels, Pallas TPU has no
cumsum) and sigma_i = the number of segment starts at or before i inside the chunk:

    D_ij = exp(gamma_i - gamma_j) [j <= i, sigma_i = sigma_j]       intra-chunk decay (masked *before* exp)
    e_i  = exp(gamma_i) [sigma_i = 0]                               decay of the incoming state seen by token i
    f_j  = exp(gamma_C - gamma_j) [sigma_j = sigma_C]               decay from token j to the end of the chunk
    lam  = exp(gamma_C) [sigma_C = 0]                               decay of the incoming state over the chunk
    A    = diag(beta) (K K^T * D) strictly lower;  Tm = (I + A)^-1
    U    = Tm diag(beta) V;  W = Tm diag(beta e) K;  Vn = U - W S
    O    = diag(e) Q S + (Q K^T * D) Vn;             S' = lam S + (diag(f) K)^T Vn

The segment masks make tokens of different packed documents independent and zero the carried state at a reset,
exactly like ``reference.recurrent_core``. ``chunk_backward`` is the hand-derived transpose of these formulas.
Every per-chunk result is linear in the value columns of (V, S, dO, dS'), so a launch may split d_v into tiles; the
gradients that mix value columns (dq, dk, dbeta, dgamma) then come back as per-tile partials that the host sums.

Matmul operands are cast to the input dtype (bf16 inputs -> bf16 MXU/tensor-core passes) with fp32 accumulation;
fp32 operands use ``Precision.HIGHEST`` (no TF32 / single bf16 pass) unless a kernel traces its body inside
``fp32_dot_precision(...)`` (the compiled Triton kernels use 3-pass TF32, see ``pallas_gpu``). The triangular inverse
always runs in fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from qwen35_jax.ops.gated_delta_rule.reference import segment_starts

CHUNK = 64
# Per-chunk scalar tables [.., n_chunks, CHUNK] are padded to a multiple of this many rows: Mosaic blocks need a
# second-minor size divisible by 8, and an 8-row block keeps VMEM use independent of the sequence length.
TABLE_ROWS = 8


# ----------------------------------------------------------------------------------------------------------------
# In-kernel algebra (one chunk, one value head).
# ----------------------------------------------------------------------------------------------------------------


_FP32_PRECISION: contextvars.ContextVar = contextvars.ContextVar("fp32_dot_precision", default=lax.Precision.HIGHEST)


@contextlib.contextmanager
def fp32_dot_precision(precision: lax.Precision | lax.DotAlgorithmPreset) -> Iterator[None]:
    """Precision of the fp32-operand matmuls traced inside this context (default ``Precision.HIGHEST``)."""
    token = _FP32_PRECISION.set(precision)
    try:
        yield
    finally:
        _FP32_PRECISION.reset(token)


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int], dtype) -> jax.Array:
    """fp32-accumulated a·b contracting a's axis contract[0] with b's axis contract[1], operands cast to dtype."""
    precision = _FP32_PRECISION.get() if jnp.dtype(dtype) == jnp.float32 else lax.Precision.DEFAULT
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), (((contract[0],), (contract[1],)), ((), ())),
        precision=precision, preferred_element_type=jnp.float32,
    )


def _mm(a, b, dtype):  # a @ b
    return _dot(a, b, (1, 0), dtype)


def _mm_nt(a, b, dtype):  # a @ b.T
    return _dot(a, b, (1, 1), dtype)


def _mm_tn(a, b, dtype):  # a.T @ b
    return _dot(a, b, (0, 0), dtype)


def _iota(shape: tuple[int, int], axis: int) -> jax.Array:
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def _row_to_col(x_row: jax.Array, eye: jax.Array) -> jax.Array:
    """[1, C] -> [C, 1] by an exact masked lane reduction (a vector transpose both Mosaic and Triton lower)."""
    return jnp.sum(jnp.where(eye, x_row, 0.0), axis=1, keepdims=True)


def _col_to_row(x_col: jax.Array, eye: jax.Array) -> jax.Array:
    """[C, 1] -> [1, C], the inverse of ``_row_to_col``."""
    return jnp.sum(jnp.where(eye, x_col, 0.0), axis=0, keepdims=True)


def unit_lower_inverse(a: jax.Array) -> jax.Array:
    """(I + A)^-1 for a strictly lower-triangular fp32 [C, C] matrix A, C a power of two, with 2·log2(C) matmuls.

    Blocked inversion by recursive doubling: with T_b the block-diagonal inverse for diagonal blocks of size b and
    E_b the part of A inside a 2b-block but below its two b-blocks, T_2b = T_b - T_b E_b T_b (the 2x2 block formula
    [[X, 0], [Y, Z]]^-1 = [[X^-1, 0], [-Z^-1 Y X^-1, Z^-1]] applied to all 2b-blocks at once). Every intermediate is
    a sub-block of the true inverse, so its magnitude stays that of the result, unlike a truncated Neumann series
    (I - A)(I + A^2)(I + A^4)... whose partial products grow like binomial coefficients (~1e17 for C = 64 when the
    keys are parallel) and cancel catastrophically in fp32. Rows i and j share a 2b-block but not a b-block exactly
    when b <= (i xor j) < 2b.
    """
    size = a.shape[0]
    if size & (size - 1):
        raise ValueError(f"unit_lower_inverse needs a power-of-two size, got {size}")
    rows, cols = _iota((size, size), 0), _iota((size, size), 1)
    pair = jnp.bitwise_xor(rows, cols)
    inv = jnp.where(rows == cols, 1.0, 0.0) - jnp.where(pair == 1, a, 0.0)
    block = 2
    while block < size:
        off = jnp.where((pair >= block) & (pair < 2 * block), a, 0.0)
        inv = inv - _mm(_mm(inv, off, jnp.float32), inv, jnp.float32)
        block *= 2
    return inv


class Decay(NamedTuple):
    eye: jax.Array  # [C, C] bool
    last: jax.Array  # [1, C] bool, one-hot at the chunk's last position
    d: jax.Array  # [C, C] D (lower incl. diagonal, same segment)
    d_strict: jax.Array  # [C, C] D with the diagonal removed
    e: jax.Array  # [C, 1]
    f: jax.Array  # [C, 1]
    lam: jax.Array  # [1, 1]


def _last_entry(row: jax.Array) -> jax.Array:
    """[1, C] -> [1, 1]: the chunk's last entry (a masked lane sum; no scalar indexing in Mosaic or Triton)."""
    return jnp.sum(jnp.where(_iota(row.shape, 1) == row.shape[1] - 1, row, 0.0), axis=1, keepdims=True)


def chunk_lam(gam_row: jax.Array, seg_row: jax.Array) -> jax.Array:
    """lam [1, 1]: decay of the incoming state over the whole chunk (0 when a segment starts inside it)."""
    return jnp.exp(jnp.where(_last_entry(seg_row) == 0.0, _last_entry(gam_row), -jnp.inf))


def entry_decay(gam_row: jax.Array, seg_row: jax.Array, eye: jax.Array) -> jax.Array:
    """e [C, 1]: decay of the incoming state as seen by each token (0 from the chunk's first segment start on)."""
    return jnp.exp(jnp.where(_row_to_col(seg_row, eye) == 0.0, _row_to_col(gam_row, eye), -jnp.inf))


def eye_mask(size: int) -> jax.Array:
    """[C, C] bool identity (the masked-reduction transposes need it)."""
    return _iota((size, size), 0) == _iota((size, size), 1)


def decay(gam_row: jax.Array, seg_row: jax.Array) -> Decay:
    """The decay factors of one chunk (module docstring) from its cumulative log-decay and segment-index rows."""
    size = gam_row.shape[1]
    rows, cols = _iota((size, size), 0), _iota((size, size), 1)
    eye = eye_mask(size)
    gam, seg = _row_to_col(gam_row, eye), _row_to_col(seg_row, eye)
    gam_last, seg_last = _last_entry(gam_row), _last_entry(seg_row)
    d = jnp.exp(jnp.where((rows >= cols) & (seg == seg_row), gam - gam_row, -jnp.inf))
    return Decay(
        eye=eye,
        last=_iota((1, size), 1) == size - 1,
        d=d,
        d_strict=jnp.where(rows > cols, d, 0.0),
        e=entry_decay(gam_row, seg_row, eye),
        f=jnp.exp(jnp.where(seg == seg_last, gam_last - gam, -jnp.inf)),
        lam=chunk_lam(gam_row, seg_row),
    )


class Prepared(NamedTuple):
    """Value-independent per-chunk factors of the WY/UT transform (``chunk_prepare``)."""

    tm: jax.Array  # (I + A)^-1 [C, C] fp32
    w: jax.Array  # Tm diag(beta e) K [C, dk] fp32
    u: jax.Array  # Tm diag(beta) V [C, dv] fp32 (linear in the value columns)
    kf: jax.Array  # diag(f) K [C, dk] fp32: the keys as they enter the end-of-chunk state


def chunk_prepare(k, v, beta_row, dec: Decay) -> Prepared:
    """Everything of one chunk that does not depend on the incoming state; k [C, dk], v [C, dv] input dtype."""
    dtype = k.dtype
    kf32 = k.astype(jnp.float32)
    beta = _row_to_col(beta_row, dec.eye)
    tm = unit_lower_inverse(beta * _mm_nt(k, k, dtype) * dec.d_strict)
    return Prepared(
        tm=tm,
        w=_mm(tm, (beta * dec.e) * kf32, dtype),
        u=_mm(tm, beta * v.astype(jnp.float32), dtype),
        kf=dec.f * kf32,
    )


def state_step(kf, w, u, s, lam, dtype) -> tuple[jax.Array, jax.Array]:
    """The only sequential part of the forward: Vn = U - W S, S' = lam S + (diag(f) K)^T Vn -> (Vn, S')."""
    vn = u - _mm(w, s, dtype)
    return vn, lam * s + _mm_tn(kf, vn, dtype)


def chunk_output(q, k, vn, s, dec: Decay, dtype) -> jax.Array:
    """O = diag(e) Q S + (Q K^T * D) Vn [C, dv] fp32."""
    return _mm(dec.e * q.astype(jnp.float32), s, dtype) + _mm(_mm_nt(q, k, dtype) * dec.d, vn, dtype)


def chunk_forward(q, k, v, s, gam_row, beta_row, seg_row):
    """One chunk of one value head: returns (o [C, dv] fp32 or None when q is None, next state [dk, dv] fp32).

    q, k [C, dk] and v [C, dv] in the input dtype; s [dk, dv] fp32 incoming state; gam_row, beta_row, seg_row
    [1, C] fp32 (cumulative log-decay, write strength, in-chunk segment index).
    """
    dtype = k.dtype
    dec = decay(gam_row, seg_row)
    prep = chunk_prepare(k, v, beta_row, dec)
    vn, s_next = state_step(prep.kf, prep.w, prep.u, s, dec.lam, dtype)
    return (None if q is None else chunk_output(q, k, vn, s, dec, dtype)), s_next


class ChunkGrads(NamedTuple):
    dq: jax.Array  # [C, dk] fp32
    dk: jax.Array  # [C, dk] fp32
    dv: jax.Array  # [C, dv] fp32
    dbeta: jax.Array  # [1, C] fp32
    dgam: jax.Array  # [1, C] fp32, w.r.t. the cumulative log-decay gamma
    ds: jax.Array | None  # [dk, dv] fp32, w.r.t. the incoming state (None from ``chunk_local_grads``)


def chunk_dvn_local(q, k, do, dec: Decay, dtype) -> jax.Array:
    """(Q K^T * D)^T dO [C, dv]: the part of dL/dVn that does not depend on later chunks."""
    return _mm_tn(_mm_nt(q, k, dtype) * dec.d, do, dtype)


def dstate_step(qe, kf, w, do, dvn_local, ds_next, lam, dtype) -> tuple[jax.Array, jax.Array]:
    """The only sequential part of the backward, walking chunks last to first -> (dL/dVn, dL/dS).

    qe = diag(e) Q; dS' is the gradient of the state leaving the chunk.
    """
    d_vn = dvn_local + _mm(kf, ds_next, dtype)
    return d_vn, _mm_tn(qe, do, dtype) + lam * ds_next - _mm_tn(w, d_vn, dtype)


def chunk_local_grads(q, k, v, s, ds_next, do, vn, d_vn, prep: Prepared, beta_row, dec: Decay) -> ChunkGrads:
    """dq, dk, dv, dbeta, dgamma of one chunk given its states (S in, dS' out) and dL/dVn; ``ds`` is None.

    Every term is linear in the value columns of (v, s, ds_next, do, vn, d_vn, prep.u), so with value tiles the
    results other than dv are per-tile partials.
    """
    dtype = k.dtype
    f32 = jnp.float32
    beta = _row_to_col(beta_row, dec.eye)
    qf, kf, vf = q.astype(f32), k.astype(f32), v.astype(f32)
    kk = _mm_nt(k, k, dtype)
    qk = _mm_nt(q, k, dtype)

    dp = _mm_nt(do, vn, dtype)  # dL/d(QK^T * D)
    dpd = dp * dec.d
    do_st = _mm_nt(do, s, dtype)  # dO S^T
    vn_dst = _mm_nt(vn, ds_next, dtype)  # Vn dS'^T
    x = _mm_tn(prep.tm, d_vn, dtype)  # Tm^T dU
    y = -_mm_tn(prep.tm, _mm_nt(d_vn, s, dtype), dtype)  # Tm^T dW, dW = -dVn S^T
    y_k = jnp.sum(y * kf, axis=1, keepdims=True)

    d_a_d = -(_mm_nt(x, prep.u, dtype) + _mm_nt(y, prep.w, dtype)) * dec.d_strict  # dL/dA, masked like A, times D
    g_a = beta * d_a_d
    dq = dec.e * do_st + _mm(dpd, k, dtype)
    dk = (_mm_tn(dpd, q, dtype) + dec.f * vn_dst + (beta * dec.e) * y
          + _mm(g_a, k, dtype) + _mm_tn(g_a, k, dtype))
    dbeta = jnp.sum(x * vf, axis=1, keepdims=True) + dec.e * y_k + jnp.sum(d_a_d * kk, axis=1, keepdims=True)

    # Log-decay: D_ij pulls +gamma_i / -gamma_j; e_i = exp(gamma_i); f_j = exp(gamma_C - gamma_j); lam = exp(gamma_C).
    z = (dp * qk * dec.d) + (d_a_d * beta * kk)
    de = jnp.sum(qf * do_st, axis=1, keepdims=True) + beta * y_k
    df = jnp.sum(kf * vn_dst, axis=1, keepdims=True)
    dlam = jnp.sum(jnp.sum(s * ds_next, axis=1, keepdims=True), axis=0, keepdims=True)
    to_last = jnp.sum(dec.f * df, axis=0, keepdims=True) + dec.lam * dlam
    dgam_col = jnp.sum(z, axis=1, keepdims=True) + dec.e * de - dec.f * df
    dgam = _col_to_row(dgam_col, dec.eye) - jnp.sum(z, axis=0, keepdims=True) + jnp.where(dec.last, to_last, 0.0)
    return ChunkGrads(dq, dk, beta * x, _col_to_row(dbeta, dec.eye), dgam, None)


def chunk_backward(q, k, v, s, do, ds_next, gam_row, beta_row, seg_row) -> ChunkGrads:
    """Transpose of ``chunk_forward`` given dO [C, dv] and dS' [dk, dv] (fp32); other arguments as there."""
    dtype = k.dtype
    dec = decay(gam_row, seg_row)
    prep = chunk_prepare(k, v, beta_row, dec)
    vn, _ = state_step(prep.kf, prep.w, prep.u, s, dec.lam, dtype)
    d_vn, ds = dstate_step(dec.e * q.astype(jnp.float32), prep.kf, prep.w, do, chunk_dvn_local(q, k, do, dec, dtype),
                           ds_next, dec.lam, dtype)
    return chunk_local_grads(q, k, v, s, ds_next, do, vn, d_vn, prep, beta_row, dec)._replace(ds=ds)


# ----------------------------------------------------------------------------------------------------------------
# Host-side plumbing.
# ----------------------------------------------------------------------------------------------------------------


class Packed(NamedTuple):
    """Core inputs in kernel layout; T padded to Tp = n_chunks·CHUNK with no-op tokens (k = v = beta = g = 0)."""

    q: jax.Array  # [B, Tp, Hk*dk] compute dtype: a reshape of [B, Tp, Hk, dk] (on TPU XLA folds it into the
    #               producer, or copies when q is a program input with the default tiled layout)
    k: jax.Array  # [B, Tp, Hk*dk]
    v: jax.Array  # [B, Tp, Hv*dv]
    gam: jax.Array  # [B, Hv, rows, CHUNK] fp32 in-chunk cumulative log-decay, rows = n_chunks padded to TABLE_ROWS
    beta: jax.Array  # [B, Hv, rows, CHUNK] fp32
    seg: jax.Array  # [B, rows, CHUNK] fp32 in-chunk segment index (number of segment starts so far in the chunk)
    s0: jax.Array  # [B, Hv, dk, dv] fp32


class Partials(NamedTuple):
    """Backward-kernel results; ``n`` = number of value tiles. Partials are summed over tiles (and head groups)."""

    dq: jax.Array  # [B, Tp, Hv*n*dk] fp32 per (value head, tile) partial
    dk: jax.Array  # [B, Tp, Hv*n*dk] fp32 per (value head, tile) partial
    dv: jax.Array  # [B, Tp, Hv*dv] fp32
    dbeta: jax.Array  # [B, Hv*n, rows, CHUNK] fp32 per-tile partial
    dgam: jax.Array  # [B, Hv*n, rows, CHUNK] fp32 per-tile partial (w.r.t. gamma, not g)
    ds0: jax.Array  # [B, Hv, dk, dv] fp32


class ChunkKernels(Protocol):
    """A backend's launches; implementations must be hashable (they are a static argument). Only the inputs are
    saved between forward and backward: the backward recomputes what it needs (e.g. the per-chunk states)."""

    def forward(self, x: Packed) -> tuple[jax.Array, jax.Array]:
        """-> o [B, Tp, Hv*dv] fp32, final state [B, Hv, dk, dv] fp32."""

    def backward(self, x: Packed, do: jax.Array, ds_final: jax.Array) -> Partials:
        """do [B, Tp, Hv*dv] fp32, ds_final [B, Hv, dk, dv] fp32."""


def _n_chunks(length: int) -> int:
    return -(-length // CHUNK)


def _table_rows(length: int) -> int:
    return -(-_n_chunks(length) // TABLE_ROWS) * TABLE_ROWS


def _pad_time(x: jax.Array, length: int) -> jax.Array:
    pad = _n_chunks(length) * CHUNK - length
    return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _to_table(x: jax.Array, length: int) -> jax.Array:
    """[B, T, H] -> [B, H, rows, CHUNK] fp32 (zero padded)."""
    batch, _, heads = x.shape
    x = jnp.moveaxis(_pad_time(x.astype(jnp.float32), length), 1, 2).reshape(batch, heads, _n_chunks(length), CHUNK)
    return jnp.pad(x, [(0, 0), (0, 0), (0, _table_rows(length) - x.shape[2]), (0, 0)])


def _from_table(x: jax.Array, length: int) -> jax.Array:
    """[B, H, rows, CHUNK] -> [B, T, H]."""
    batch, heads = x.shape[:2]
    x = x[:, :, : _n_chunks(length)].reshape(batch, heads, -1)[:, :, :length]
    return jnp.moveaxis(x, 1, 2)


def _flat(x: jax.Array, length: int) -> jax.Array:
    """[B, T, H, d] -> [B, Tp, H*d] (padding only when T is not a multiple of CHUNK)."""
    batch, _, heads, dim = x.shape
    return _pad_time(x, length).reshape(batch, -1, heads * dim)


def _segment_table(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
    """[B, rows, CHUNK] fp32: number of segment starts at or before each position inside its chunk."""
    starts = _pad_time(segment_starts(segment_ids, batch, length), length).astype(jnp.int32)
    seg = jnp.cumsum(starts.reshape(batch, _n_chunks(length), CHUNK), axis=-1).astype(jnp.float32)
    return jnp.pad(seg, [(0, 0), (0, _table_rows(length) - seg.shape[1]), (0, 0)])


def _pack(q, k, v, g, beta, s0, seg) -> Packed:
    length = q.shape[1]
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    return Packed(
        q=_flat(q.astype(dtype), length),
        k=_flat(k.astype(dtype), length),
        v=_flat(v.astype(dtype), length),
        gam=jnp.cumsum(_to_table(g, length), axis=-1),
        beta=_to_table(beta, length),
        seg=seg,
        s0=s0.astype(jnp.float32),
    )


def out_struct(shape: tuple[int, ...], like: tuple[jax.Array, ...], dtype=jnp.float32) -> jax.ShapeDtypeStruct:
    """pallas_call output type (fp32 unless given) varying over the manual mesh axes of its inputs (shard_map)."""
    varying = frozenset().union(*(jax.typeof(x).mat.varying for x in like))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def _match_varying(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Give every array the union of the inputs' varying mesh axes (shard_map), so cotangent types match primals."""
    varying = frozenset().union(*(jax.typeof(x).mat.varying for x in arrays))
    return tuple(
        lax.pcast(x, tuple(sorted(varying - jax.typeof(x).mat.varying)), to="varying") for x in arrays
    )


def chunked_core(kernels: ChunkKernels, q, k, v, g, beta, initial_state=None, segment_ids=None):
    """The core contract (see reference.py) on top of a backend's kernels, differentiable via ``jax.custom_vjp``.

    Like the other cores it expects inputs the dispatcher (``api``) has validated; only kernel-specific limits
    (tile sizes, Triton's power-of-two dims) are checked by the backends.
    """
    batch, length = q.shape[:2]
    h_v, d_v = v.shape[2:]
    if initial_state is None:
        initial_state = jnp.zeros((batch, h_v, q.shape[3], d_v), jnp.float32)
    seg = _segment_table(segment_ids, batch, length)
    return _core(kernels, *_match_varying(q, k, v, g, beta, initial_state, seg))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _core(kernels, q, k, v, g, beta, s0, seg):
    batch, length = q.shape[:2]
    o, s_final = kernels.forward(_pack(q, k, v, g, beta, s0, seg))
    return o[:, :length].reshape(batch, length, *v.shape[2:]), s_final


def _core_fwd(kernels, q, k, v, g, beta, s0, seg):
    return _core(kernels, q, k, v, g, beta, s0, seg), (q, k, v, g, beta, s0, seg)


def _core_bwd(kernels, residuals, cotangents):
    q, k, v, g, beta, s0, seg = residuals
    do, ds_final = cotangents
    batch, length, h_k, d_k = q.shape
    h_v = v.shape[2]
    x = _pack(q, k, v, g, beta, s0, seg)
    parts = kernels.backward(x, _flat(do.astype(jnp.float32), length), ds_final.astype(jnp.float32))
    tiles = parts.dq.shape[2] // (h_v * d_k)

    def group_sum(p):  # [B, Tp, Hv*n*dk] -> [B, T, Hk, dk]: value heads h_k*r .. h_k*r + r - 1 read key head h_k
        return p[:, :length].reshape(batch, length, h_k, -1, d_k).sum(axis=3)

    def tile_sum(t):  # [B, Hv*n, rows, C] -> [B, Hv, rows, C]
        return t.reshape(batch, h_v, tiles, *t.shape[2:]).sum(axis=2)

    dgam = tile_sum(parts.dgam)
    dg = lax.cumsum(dgam, axis=3, reverse=True)  # gamma_i = sum_{j<=i} g_j inside a chunk
    return (
        group_sum(parts.dq).astype(q.dtype),
        group_sum(parts.dk).astype(k.dtype),
        parts.dv[:, :length].reshape(v.shape).astype(v.dtype),
        _from_table(dg, length).astype(g.dtype),
        _from_table(tile_sum(parts.dbeta), length).astype(beta.dtype),
        parts.ds0.astype(s0.dtype),
        jnp.zeros_like(seg),
    )


_core.defvjp(_core_fwd, _core_bwd)


def value_tiles(d_v: int, block_dv: int) -> int:
    """Number of value tiles; ValueError unless block_dv divides d_v."""
    if block_dv < 1 or d_v % block_dv:
        raise ValueError(f"block_dv={block_dv} must be a positive divisor of dv={d_v}; pick e.g. block_dv={d_v}")
    return d_v // block_dv


@dataclasses.dataclass(frozen=True)
class KernelDims:
    """Static sizes every launch needs, read off a ``Packed``."""

    batch: int
    padded_length: int
    h_k: int
    h_v: int
    d_k: int
    d_v: int

    @property
    def chunks(self) -> int:
        return self.padded_length // CHUNK

    @property
    def group(self) -> int:
        return self.h_v // self.h_k

    @classmethod
    def of(cls, x: Packed) -> KernelDims:
        batch, h_v, d_k, d_v = x.s0.shape
        return cls(batch, x.q.shape[1], x.q.shape[2] // d_k, h_v, d_k, d_v)
