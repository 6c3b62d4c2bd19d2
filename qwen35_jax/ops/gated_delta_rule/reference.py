"""Token-by-token gated delta rule (numerics §2.4): the reference every other implementation is tested against.

Core contract shared by every implementation in this package (``recurrent``, ``chunked``, Pallas):

    core(q, k, v, g, beta, initial_state, segment_ids) -> (o, final_state)

    q, k           [B, T, Hk, dk] float32, already L2-normalised (when requested) and q already scaled
    v              [B, T, Hv, dv] float32, Hv a multiple of Hk (value head j reads key head j // (Hv // Hk))
    g              [B, T, Hv]     float32 log-decay (<= 0)
    beta           [B, T, Hv]     float32 write strength
    initial_state  [B, Hv, dk, dv] float32 or None (zeros)
    segment_ids    [B, T] int or None; the state is reset to zero at every token whose segment id differs from
                   the previous token's (packed documents). The initial state feeds the first segment only.
    o              [B, T, Hv, dv] float32;  final_state [B, Hv, dk, dv] float32 (state after the last token)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_starts(segment_ids: jax.Array | None, batch: int, length: int) -> jax.Array:
    """Boolean [B, T]: True where a new segment starts (never at t = 0, where the initial state applies)."""
    if segment_ids is None:
        return jnp.zeros((batch, length), dtype=bool)
    prev = jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)
    return segment_ids != prev


def delta_rule_step(state, q_t, k_t, v_t, g_t, b_t):
    """One token of the recurrence for all heads, value heads grouped by key head (q/k never repeated).

    state [B, Hv, dk, dv] fp32; q_t, k_t [B, Hk, dk]; v_t [B, Hv, dv]; g_t, b_t [B, Hv] -> (new_state, o_t [B, Hv, dv]).
    """
    batch, h_v, d_k, d_v = state.shape
    h_k = k_t.shape[1]
    group = h_v // h_k
    s = state.reshape(batch, h_k, group, d_k, d_v) * jnp.exp(g_t).reshape(batch, h_k, group, 1, 1)
    kv_mem = jnp.einsum("bhrkv,bhk->bhrv", s, k_t)
    u = b_t.reshape(batch, h_k, group, 1) * (v_t.reshape(batch, h_k, group, d_v) - kv_mem)
    s = s + jnp.einsum("bhk,bhrv->bhrkv", k_t, u)
    o_t = jnp.einsum("bhrkv,bhk->bhrv", s, q_t).reshape(batch, h_v, d_v)
    return s.reshape(batch, h_v, d_k, d_v), o_t


def recurrent_core(q, k, v, g, beta, initial_state=None, segment_ids=None):
    """Reference recurrence: S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - (exp(g_t) S_{t-1})^T k_t))^T,
    o_t = S_t^T q_t."""
    batch, length, h_k, d_k = q.shape
    h_v, d_v = v.shape[2], v.shape[3]
    if initial_state is None:
        initial_state = jnp.zeros((batch, h_v, d_k, d_v), jnp.float32)
    reset = segment_starts(segment_ids, batch, length)

    def step(state, xs):
        q_t, k_t, v_t, g_t, b_t, r_t = xs  # [B,Hk,dk] [B,Hk,dk] [B,Hv,dv] [B,Hv] [B,Hv] [B]
        state = jnp.where(r_t[:, None, None, None], 0.0, state)
        return delta_rule_step(state, q_t, k_t, v_t, g_t, b_t)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, g, beta, reset))
    final_state, o = jax.lax.scan(step, initial_state.astype(jnp.float32), xs)
    return jnp.moveaxis(o, 0, 1), final_state
