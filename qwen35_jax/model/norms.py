"""The two RMSNorms of Qwen3.5 (numerics §2.2, §7.1–7.2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.model.params import constant_init, make_param


def _normalize_f32(x: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    return xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """Zero-centred RMSNorm: ``normalize(x) * (1 + w)`` in fp32, then cast back (weight initialised to zeros)."""

    def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype, rngs: nnx.Rngs, axis_name: str = "norm"):
        self.eps = eps
        self.weight = make_param(rngs, (dim,), (axis_name,), param_dtype, constant_init(0.0))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = _normalize_f32(x, self.eps) * (1.0 + self.weight[...].astype(jnp.float32))
        return y.astype(x.dtype)


class GatedRMSNorm(nnx.Module):
    """GDN output norm: plain scale ``w`` (ones init) on the normalised input, then ``* silu(z)`` (numerics §2.2b)."""

    def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.weight = make_param(rngs, (dim,), ("norm",), param_dtype, constant_init(1.0))

    def __call__(self, x: jax.Array, gate: jax.Array) -> jax.Array:
        n = _normalize_f32(x, self.eps).astype(x.dtype) * self.weight[...].astype(x.dtype)
        return (n * jax.nn.silu(gate.astype(jnp.float32))).astype(x.dtype)
