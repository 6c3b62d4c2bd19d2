"""Single-token gated delta rule step for generation (pure jnp, every backend)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qwen35_jax.ops.gated_delta_rule.api import check_float, check_heads, check_shape, prepare_qk
from qwen35_jax.ops.gated_delta_rule.reference import delta_rule_step


def gated_delta_rule_decode_step(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    state: jax.Array,
    *,
    scale: float | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """One token: q, k ``[B, Hk, dk]``, v ``[B, Hv, dv]``, g, beta ``[B, Hv]``, state ``[B, Hv, dk, dv]`` (fp32).

    Same pre-processing as :func:`gated_delta_rule` (fp32, L2 norm, ``q *= scale``). Returns ``(o [B, Hv, dv]`` in v's
    dtype, ``new_state`` fp32)``; chaining it over T tokens equals the ``recurrent`` implementation.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 3:
            raise ValueError(f"gated_delta_rule_decode_step: {name} must be rank 3 [B, H, D], got {tuple(x.shape)}")
    batch, h_k, d_k = q.shape
    check_shape("k", k, q.shape, "[B, Hk, dk] (same as q)")
    if v.shape[0] != batch:
        raise ValueError(f"gated_delta_rule_decode_step: v must be [B, Hv, dv] with B = {batch}, got {v.shape}")
    h_v, d_v = v.shape[1], v.shape[2]
    check_heads(h_k, h_v)
    check_shape("g", g, (batch, h_v), "[B, Hv]")
    check_shape("beta", beta, (batch, h_v), "[B, Hv]")
    check_shape("state", state, (batch, h_v, d_k, d_v), "[B, Hv, dk, dv]")
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta), ("state", state)):
        check_float(name, x)
    q, k = prepare_qk(q, k, scale, use_qk_l2norm)
    v32, g, beta = (x.astype(jnp.float32) for x in (v, g, beta))
    new_state, o = delta_rule_step(state.astype(jnp.float32), q, k, v32, g, beta)
    return o.astype(v.dtype), new_state
