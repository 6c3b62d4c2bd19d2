"""Chunked (WY / UT transform) gated delta rule in pure JAX with a hand-written VJP (numerics §2.5).

Same core contract as :func:`reference.recurrent_core` (see that module's docstring).

Per value head and chunk of ``C = 64`` positions (``γ`` = in-chunk cumulative log-decay, ``S`` = incoming state)::

    D_ij = m_ij exp(γ_i − γ_j)       m_ij = [j <= i, i and j in the same segment]    (masked before exp)
    A    = strict_lower(diag(β) (K Kᵀ ⊙ D)),   Tm = (I + A)⁻¹
    e_i  = f_i exp(γ_i)              f_i  = [no segment start in positions 0..i]      (reach of the incoming state)
    b_j  = l_j exp(γ_C − γ_j)        l_j  = [j in the chunk's last segment]           (reach of the outgoing state)
    U    = Tm (β ⊙ V),   W = Tm (βe ⊙ K),   P = (Q Kᵀ) ⊙ D
    Vn   = U − W S,   O = e ⊙ (Q S) + P Vn,   S' = e_C S + Kᵀ (b ⊙ Vn)

The chunks are processed in groups (at most ``max_group(backend)`` chunks each, ``backend`` being the target): an
outer ``lax.scan`` over groups slices the group out of the [B, T, H, D] inputs, computes its state-independent terms
batched over the group's chunks, then an inner scan carries the state through them. Chunk-local tensors therefore
exist for one group at a time.

Backward (``jax.custom_vjp``): the forward saves only the inputs and the incoming state of every chunk
(``[T / 64, dk, dv]`` per head, ``dk / 64`` times the size of ``v``). The backward walks the groups in reverse,
recomputes each group's chunk-local terms, walks its chunks in reverse for the state cotangent ``G``::

    dVn = Pᵀ dO + b ⊙ (K G),   dS = Qᵀ (e ⊙ dO) + e_C G − Wᵀ dVn   (carried to the previous chunk)

and then, batched over the group, back through the WY transform and the decays::

    dVb = Tmᵀ dVn, dKb = Tmᵀ (−dVn Sᵀ), dA = −(dVb Uᵀ + dKb Wᵀ) on the strict lower part   (U = Tm Vb, W = Tm Kb)
    dγ  = rowsum(dD ⊙ D) − colsum(dD ⊙ D) + de ⊙ e − db ⊙ b + [i = C] Σ_j db_j b_j,   dg = reverse_cumsum(dγ)

Value heads are grouped by key head (``Hv = r · Hk``): q/k live as ``[.., Hk, C, dk]`` and every product with them
batches the ``r`` value heads of a group into one matmul, so q/k are never repeated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen35_jax.ops.gated_delta_rule.reference import segment_starts

CHUNK = 64
ACCELERATOR_GROUP = 16  # chunks per outer step on TPU/GPU: batching a group's chunk-local algebra fills the device
_SUB = 16  # diagonal block size of the blocked triangular inverse


def max_group(backend: str) -> int:
    """Most chunks per outer step for the target ``backend``.

    On CPU one chunk per step keeps every operand of the step in cache; batching 16 chunks made forward+backward
    slower, at every size measured (B=1, T=8192, H=16, d=128: 1.45 s vs 1.9 s; B=4, T=512, Hv=8, d=32: 69 vs 89 ms).
    """
    return 1 if backend == "cpu" else ACCELERATOR_GROUP


def _grouping(length: int, max_group: int) -> tuple[int, int]:
    """(number of groups, chunks per group) covering ``length`` tokens with at most ``max_group`` chunks per group."""
    chunks = max(1, -(-length // CHUNK))
    groups = -(-chunks // max_group)
    return groups, -(-chunks // groups)


# ----------------------------------------------------------------------------------------------------------------
# Layout helpers: [B, T, H, D] <-> chunk-major [N, B, Hk, (r,) C, D]
# ----------------------------------------------------------------------------------------------------------------
def _pad_time(x, pad):
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    return jnp.pad(x, widths)


def _chunk_qk(x, n):  # [B, Tp, Hk, d] -> [N, B, Hk, C, d]
    b, _, h, d = x.shape
    return x.reshape(b, n, CHUNK, h, d).transpose(1, 0, 3, 2, 4)


def _chunk_v(x, n, h_k):  # [B, Tp, Hv, d] -> [N, B, Hk, r, C, d]
    b, _, h_v, d = x.shape
    return x.reshape(b, n, CHUNK, h_k, h_v // h_k, d).transpose(1, 0, 3, 4, 2, 5)


def _chunk_gate(x, n, h_k):  # [B, Tp, Hv] -> [N, B, Hk, r, C]
    b, _, h_v = x.shape
    return x.reshape(b, n, CHUNK, h_k, h_v // h_k).transpose(1, 0, 3, 4, 2)


def _unchunk_qk(x):  # [n, B, Hk, C, d] -> [B, n·C, Hk, d]
    n, b, h, c, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * c, h, d)


def _unchunk_v(x):  # [n, B, Hk, r, C, d] -> [B, n·C, Hv, d]
    n, b, h_k, r, c, d = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(b, n * c, h_k * r, d)


def _unchunk_gate(x):  # [n, B, Hk, r, C] -> [B, n·C, Hv]
    n, b, h_k, r, c = x.shape
    return x.transpose(1, 0, 4, 2, 3).reshape(b, n * c, h_k * r)


class _Groups:
    """Walks the padded [B, Tp, ...] arrays one group of chunks at a time (dynamic slices, no chunked copies)."""

    def __init__(self, length: int, h_k: int, group: int):
        self.count, self.chunks = _grouping(length, group)
        self.span = self.chunks * CHUNK
        self.padded = self.count * self.span
        self.h_k = h_k

    def pad(self, x):
        return _pad_time(x, self.padded - x.shape[1])

    def take(self, x, i):
        return jax.lax.dynamic_slice_in_dim(x, i * self.span, self.span, axis=1)

    def put(self, buf, x, i):
        return jax.lax.dynamic_update_slice_in_dim(buf, x, i * self.span, axis=1)

    def chunks_of(self, i, q, k, v, g, beta, reset):
        """Group ``i`` of the padded inputs in chunk-major layout."""
        n, h_k = self.chunks, self.h_k
        r = self.take(reset, i)
        return (
            _chunk_qk(self.take(q, i), n),
            _chunk_qk(self.take(k, i), n),
            _chunk_v(self.take(v, i), n, h_k),
            _chunk_gate(self.take(g, i), n, h_k),
            _chunk_gate(self.take(beta, i), n, h_k),
            r.reshape(r.shape[0], n, CHUNK).transpose(1, 0, 2),
        )


# ----------------------------------------------------------------------------------------------------------------
# Chunk-local algebra
# ----------------------------------------------------------------------------------------------------------------
def _block_diag(a, size):
    """Diagonal ``size``-blocks of a [..., C, C] matrix as [..., C // size, size, size]."""
    c = a.shape[-1]
    nb = c // size
    blocks = a.reshape(*a.shape[:-2], nb, size, nb, size)
    return jnp.stack([blocks[..., i, :, i, :] for i in range(nb)], axis=-3)


def _unit_lower_inverse(a):
    """(I + a)⁻¹ for strictly lower-triangular ``a`` [..., C, C] (C = 16 · 2^k).

    16×16 diagonal blocks: ``(I + a)⁻¹ = (I − a)(I + a²)(I + a⁴)(I + a⁸)`` (exact, ``a`` is nilpotent); then the
    blocks are merged pairwise, ``[[X11, 0], [X21, X22]]`` with ``X21 = −X22 a21 X11``, doubling the size each level.
    Everything is a batched matmul over all chunks and heads at once (compact HLO, no loops). The optimisation
    barriers keep XLA:CPU from fusing producers into these small matmuls, which cost several seconds of compile time
    per call site and no run time.
    """
    c = a.shape[-1]
    a = jax.lax.optimization_barrier(a)
    eye = jnp.eye(_SUB, dtype=a.dtype)
    d = jax.lax.optimization_barrier(_block_diag(a, _SUB))
    x, p = eye - d, d
    for _ in range(3):  # (I + a^2)(I + a^4)(I + a^8)
        p = p @ p
        x = x + x @ p
    size = _SUB
    while size < c:
        nb = c // size
        blocks = a.reshape(*a.shape[:-2], nb, size, nb, size)
        a21 = jnp.stack([blocks[..., 2 * i + 1, :, 2 * i, :] for i in range(nb // 2)], axis=-3)
        x11, x22 = x[..., 0::2, :, :], x[..., 1::2, :, :]
        x21 = -(x22 @ (a21 @ x11))
        x = jnp.concatenate(
            [jnp.concatenate([x11, jnp.zeros_like(x11)], -1), jnp.concatenate([x21, x22], -1)], axis=-2
        )
        x = jax.lax.optimization_barrier(x)
        size *= 2
    return x[..., 0, :, :]


def _segment_masks(reset):
    """reset [N, B, C] (float, 1 at a segment start) -> m [N,B,1,1,C,C], f [N,B,1,1,C], l [N,B,1,1,C] (bool)."""
    seg = jnp.cumsum((reset > 0).astype(jnp.int32), axis=-1)
    causal = jnp.tril(jnp.ones((CHUNK, CHUNK), dtype=bool))
    m = causal & (seg[..., :, None] == seg[..., None, :])
    f = seg == 0
    last = seg == seg[..., -1:]
    return m[:, :, None, None], f[:, :, None, None], last[:, :, None, None]


def _intra(q, k, v, g, beta, reset):
    """State-independent per-chunk quantities, batched over the given chunks (one group).

    q, k [N,B,Hk,C,dk]; v [N,B,Hk,r,C,dv]; g, beta [N,B,Hk,r,C]; reset [N,B,C].
    """
    m, f, last = _segment_masks(reset)
    gam = jnp.cumsum(g, axis=-1)
    diff = gam[..., :, None] - gam[..., None, :]
    decay = jnp.where(m, jnp.exp(jnp.where(m, diff, 0.0)), 0.0)  # D: masked before exp
    e = jnp.where(f, jnp.exp(gam), 0.0)
    b = jnp.where(last, jnp.exp(gam[..., -1:] - gam), 0.0)
    k_r = k[:, :, :, None]  # key head broadcast over its r value heads
    kk = jnp.einsum("nbhik,nbhjk->nbhij", k, k)[:, :, :, None]
    qk = jnp.einsum("nbhik,nbhjk->nbhij", q, k)[:, :, :, None]
    strict = jnp.tril(jnp.ones((CHUNK, CHUNK), dtype=bool), -1)
    tm = _unit_lower_inverse(jnp.where(strict, beta[..., :, None] * kk * decay, 0.0))
    u = tm @ (beta[..., None] * v)  # U = Tm (β ⊙ V)
    w = tm @ ((beta * e)[..., None] * k_r)  # W = Tm (βe ⊙ K)
    return dict(decay=decay, e=e, b=b, kk=kk, qk=qk, tm=tm, p=qk * decay, u=u, w=w, kb=b[..., None] * k_r)


def _forward(q, k, v, g, beta, s0, reset, keep_states, group):
    """Inputs in the caller's [B, T, ...] layout, s0 [B, Hk, r, dk, dv]; at most ``group`` chunks per outer step.

    Returns o [B, T, Hv, dv], the final state and (if keep_states) the incoming state of every chunk, grouped
    [groups, chunks per group, B, Hk, r, dk, dv]. Outer scan over groups of chunks: the chunk-local algebra runs
    batched over one group, then an inner scan carries the state through the group's chunks.
    """
    length = q.shape[1]
    grp = _Groups(length, q.shape[2], group)
    q, k, v, g, beta, reset = (grp.pad(x) for x in (q, k, v, g, beta, reset))

    def group_step(carry, i):
        s, o_buf = carry
        qc, kc, vc, gc, bc, rc = grp.chunks_of(i, q, k, v, g, beta, reset)
        t = _intra(qc, kc, vc, gc, bc, rc)

        # Operands contracted over the chunk axis are transposed once per group, outside the chunk walk, so every
        # product in the walk is a plain [M, K] @ [K, N] matmul (with 16-chunk groups on CPU: f+b 2.09 -> 1.90 s at
        # T = 8192, H = 16, d = 128; XLA:CPU otherwise copies the transposed operand inside the walk).
        kb_t = jnp.swapaxes(t["kb"], -1, -2)  # (b ⊙ K)ᵀ

        def step(s, xs):
            u_n, w_n, q_n, kb_t_n, p_n, e_n = xs
            vn = u_n - w_n @ s
            o_n = e_n[..., None] * jnp.einsum("bhck,bhrkv->bhrcv", q_n, s) + p_n @ vn
            s_new = e_n[..., -1:, None] * s + kb_t_n @ vn
            return s_new, ((o_n, s) if keep_states else o_n)

        s, ys = jax.lax.scan(step, s, (t["u"], t["w"], qc, kb_t, t["p"], t["e"]))
        o_grp, s_in = ys if keep_states else (ys, None)
        return (s, grp.put(o_buf, _unchunk_v(o_grp), i)), s_in

    (final, o), s_in = jax.lax.scan(group_step, (s0, jnp.zeros_like(v)), jnp.arange(grp.count))
    return o[:, :length], final, s_in


# The custom VJP takes the [B, T, H, D] inputs, so the residuals are the caller's arrays themselves plus the per-chunk
# incoming states; the backward slices the chunk-major layout of one group at a time out of them again. ``group``
# (chunks per outer step) is static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _chunked(q, k, v, g, beta, s0, reset, group):
    o, final, _ = _forward(q, k, v, g, beta, _grouped_heads(s0, q), reset, keep_states=False, group=group)
    return o, final.reshape(s0.shape)


def _grouped_heads(state, q):  # [B, Hv, dk, dv] -> [B, Hk, r, dk, dv]
    batch, h_v, d_k, d_v = state.shape
    return state.reshape(batch, q.shape[2], h_v // q.shape[2], d_k, d_v)


def _chunked_fwd(q, k, v, g, beta, s0, reset, group):
    o, final, s_in = _forward(q, k, v, g, beta, _grouped_heads(s0, q), reset, keep_states=True, group=group)
    return (o, final.reshape(s0.shape)), (q, k, v, g, beta, reset, s_in)


def _group_grads(q, k, v, g, beta, reset, s_in, d_o, gs):
    """Gradients for one group of chunks (chunk-major), given the cotangent ``gs`` of the group's outgoing state.

    Recomputes the chunk-local terms, walks the group's chunks in reverse (carrying the state cotangent), then turns
    the per-chunk cotangents into input gradients batched over the group. Returns (d_state_in, dq, dk, dv, dg, dbeta).
    """
    t = _intra(q, k, v, g, beta, reset)
    e, b, decay, tm, u, w = t["e"], t["b"], t["decay"], t["tm"], t["u"], t["w"]
    k_r = k[:, :, :, None]
    q_r = q[:, :, :, None]

    # Chunk-axis contractions pre-transposed once per group (see _forward).
    p_t = jnp.swapaxes(t["p"], -1, -2)
    w_t = jnp.swapaxes(w, -1, -2)
    qe_t = jnp.swapaxes(e[..., None] * q_r, -1, -2)  # (e ⊙ Q)ᵀ

    # Reverse walk over chunks; gs = cotangent of the chunk's outgoing state. Everything that needs the chunk's
    # state (S or G) is formed here so that no per-chunk cotangent states are stored.
    def step(gs, xs):
        s, u_n, w_n, w_t_n, p_t_n, qe_t_n, kb_n, e_last, do_n = xs
        vn = u_n - w_n @ s
        dvn = p_t_n @ do_n + kb_n @ gs
        ds = qe_t_n @ do_n + e_last * gs - w_t_n @ dvn
        zq = jnp.einsum("bhrcv,bhrkv->bhrck", do_n, s)  # dO Sᵀ
        dw = -jnp.einsum("bhrcv,bhrkv->bhrck", dvn, s)  # −dVn Sᵀ
        dkd = jnp.einsum("bhrcv,bhrkv->bhrck", vn, gs)  # Vn Gᵀ
        dp = jnp.einsum("bhric,bhrjc->bhrij", do_n, vn)  # dO Vnᵀ
        dlam = jnp.sum(s * gs, axis=(-2, -1))
        return ds, (dvn, zq, dw, dkd, dp, dlam)

    xs = (s_in, u, w, w_t, p_t, qe_t, t["kb"], e[..., -1:, None], d_o)
    d_s0, (dvn, zq, dw, dkd, dp, dlam) = jax.lax.scan(step, gs, xs, reverse=True)

    dq = jnp.sum(e[..., None] * zq, axis=3)
    de = jnp.sum(q_r * zq, axis=-1).at[..., -1].add(dlam)
    dk = jnp.sum(b[..., None] * dkd, axis=3)
    db = jnp.sum(k_r * dkd, axis=-1)

    # P = QKᵀ ⊙ D
    dqk = jnp.sum(dp * decay, axis=3)
    d_decay = dp * t["qk"]

    # U = Tm Vb, W = Tm Kb  =>  dVb = Tmᵀ dU, dKb = Tmᵀ dW, dA = −(dVb Uᵀ + dKb Wᵀ) (strict lower part)
    tm_t = jnp.swapaxes(tm, -1, -2)
    dvb = tm_t @ dvn
    dkb = tm_t @ dw
    strict = jnp.tril(jnp.ones((CHUNK, CHUNK), dtype=bool), -1)
    da = jnp.einsum("nbhric,nbhrjc->nbhrij", dvb, u) + jnp.einsum("nbhric,nbhrjc->nbhrij", dkb, w)
    da = jnp.where(strict, -da, 0.0)
    k_dkb = jnp.sum(k_r * dkb, axis=-1)
    dbeta = jnp.sum(v * dvb, axis=-1) + e * k_dkb + jnp.sum(da * t["kk"] * decay, axis=-1)
    dv = beta[..., None] * dvb
    dk = dk + jnp.sum((beta * e)[..., None] * dkb, axis=3)
    de = de + beta * k_dkb

    # A = strict(diag(β) KKᵀ ⊙ D)
    dkk = jnp.sum(beta[..., :, None] * da * decay, axis=3)
    d_decay = d_decay + beta[..., :, None] * da * t["kk"]

    dq = dq + dqk @ k
    dk = dk + jnp.swapaxes(dqk, -1, -2) @ q + (dkk + jnp.swapaxes(dkk, -1, -2)) @ k

    # Decay chain: D, e, b are functions of γ = cumsum(g).
    z = d_decay * decay
    dgam = jnp.sum(z, axis=-1) - jnp.sum(z, axis=-2) + de * e - db * b
    dgam = dgam.at[..., -1].add(jnp.sum(db * b, axis=-1))
    dg = jnp.flip(jnp.cumsum(jnp.flip(dgam, -1), axis=-1), -1)
    return d_s0, dq, dk, dv, dg, dbeta


def _chunked_bwd(group, res, cts):
    q, k, v, g, beta, reset, s_in_all = res
    d_o, d_final = cts
    length = q.shape[1]
    grp = _Groups(length, q.shape[2], group)
    q, k, v, g, beta, reset, d_o = (grp.pad(x) for x in (q, k, v, g, beta, reset, d_o))

    def group_step(carry, xs):
        gs, bufs = carry
        i, s_in = xs
        d_oc = _chunk_v(grp.take(d_o, i), grp.chunks, grp.h_k)
        d_s0, dq, dk, dv, dg, dbeta = _group_grads(*grp.chunks_of(i, q, k, v, g, beta, reset), s_in, d_oc, gs)
        grads = (_unchunk_qk(dq), _unchunk_qk(dk), _unchunk_v(dv), _unchunk_gate(dg), _unchunk_gate(dbeta))
        return (d_s0, tuple(grp.put(buf, x, i) for buf, x in zip(bufs, grads, strict=True))), None

    bufs = tuple(jnp.zeros_like(x) for x in (q, k, v, g, beta))
    init = (_grouped_heads(d_final, q), bufs)
    (d_s0, grads), _ = jax.lax.scan(group_step, init, (jnp.arange(grp.count), s_in_all), reverse=True)
    dq, dk, dv, dg, dbeta = (x[:, :length] for x in grads)
    return dq, dk, dv, dg, dbeta, d_s0.reshape(d_final.shape), jnp.zeros_like(res[5])


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_core(q, k, v, g, beta, initial_state=None, segment_ids=None, *, backend: str):
    """Chunked core following the contract in ``reference``: returns (o [B,T,Hv,dv], final_state [B,Hv,dk,dv]).
    ``backend`` is the target the chunk grouping is sized for (``max_group``)."""
    batch, length, _, d_k = q.shape
    if initial_state is None:
        initial_state = jnp.zeros((batch, v.shape[2], d_k, v.shape[3]), jnp.float32)
    reset = segment_starts(segment_ids, batch, length).astype(jnp.float32)
    return _chunked(q, k, v, g, beta, initial_state.astype(jnp.float32), reset, max_group(backend))
