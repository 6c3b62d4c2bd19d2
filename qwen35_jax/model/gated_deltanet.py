"""Gated DeltaNet mixer (spec §2.4).

The fused HF projection ``in_proj_qkv`` (and Qwen3-Next's grouped ``in_proj_qkvz``/``in_proj_ba``, spec §2.12) is
stored here as separate per-head q / k / v / z / b / a kernels, and the depthwise conv likewise per q / k / v, so
every tensor has a head axis that tensor parallelism can shard. ``qwen35_jax.hf`` converts both HF layouts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.norms import GatedRMSNorm
from qwen35_jax.model.params import constant_init, dense, make_param
from qwen35_jax.ops import gated_delta_rule


def causal_depthwise_conv(x: jax.Array, weight: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """``y_t = Σ_s w[K-1-s] · x_{t-s}`` over ``x [B, T, ...]``, with inputs from another segment (or t<0) treated as 0.

    Accumulates in fp32 (like the fused CUDA kernel) and returns the input dtype.
    """
    kernel_size, length = weight.shape[0], x.shape[1]
    w = weight.astype(jnp.float32)
    xf = x.astype(jnp.float32)
    out = xf * w[kernel_size - 1]
    extra = (1,) * (x.ndim - 2)
    for shift in range(1, min(kernel_size, length + 1)):
        shifted = jnp.pad(xf, [(0, 0), (shift, 0)] + [(0, 0)] * (x.ndim - 2))[:, :length]
        shifted_ids = jnp.pad(segment_ids, [(0, 0), (shift, 0)], constant_values=-1)[:, :length]
        same = (shifted_ids == segment_ids).reshape(*segment_ids.shape, *extra)
        out = out + jnp.where(same, shifted, 0.0) * w[kernel_size - 1 - shift]
    return out.astype(x.dtype)


class GatedDeltaNet(nnx.Module):
    """Linear-attention mixer: conv → silu → delta-rule recurrence → gated RMSNorm → out_proj."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h = config.hidden_size
        hk, hv = config.linear_num_key_heads, config.linear_num_value_heads
        dk, dv, ks = config.linear_key_head_dim, config.linear_value_head_dim, config.linear_conv_kernel_dim
        pdt = jnp.dtype(config.param_dtype)
        self.impl = config.gdn_impl
        # Static hook: ``qwen35_jax.parallel.mesh.ShardedDeltaRule`` runs a Pallas kernel in shard_map on a mesh.
        self.sharded_rule = None
        self.in_proj_q = make_param(rngs, (h, hk, dk), ("embed", "gdn_key_heads", "gdn_head_dim"), pdt)
        self.in_proj_k = make_param(rngs, (h, hk, dk), ("embed", "gdn_key_heads", "gdn_head_dim"), pdt)
        self.in_proj_v = make_param(rngs, (h, hv, dv), ("embed", "gdn_value_heads", "gdn_head_dim"), pdt)
        self.in_proj_z = make_param(rngs, (h, hv, dv), ("embed", "gdn_value_heads", "gdn_head_dim"), pdt)
        self.in_proj_b = make_param(rngs, (h, hv), ("embed", "gdn_value_heads"), pdt)
        self.in_proj_a = make_param(rngs, (h, hv), ("embed", "gdn_value_heads"), pdt)
        conv_init = jax.nn.initializers.uniform(ks ** -0.5)
        self.conv_q = make_param(rngs, (ks, hk, dk), ("conv", "gdn_key_heads", "gdn_head_dim"), pdt, conv_init)
        self.conv_k = make_param(rngs, (ks, hk, dk), ("conv", "gdn_key_heads", "gdn_head_dim"), pdt, conv_init)
        self.conv_v = make_param(rngs, (ks, hv, dv), ("conv", "gdn_value_heads", "gdn_head_dim"), pdt, conv_init)
        # A = exp(A_log) ~ U(0, 16) and dt_bias = 1 at init, as in the reference; both kept fp32 (spec §6.1, §7.3).
        self.A_log = make_param(rngs, (hv,), ("gdn_value_heads",), jnp.float32,
                                lambda key, shape, dtype: jnp.log(jax.random.uniform(key, shape, dtype, 1e-4, 16.0)))
        self.dt_bias = make_param(rngs, (hv,), ("gdn_value_heads",), jnp.float32, constant_init(1.0))
        self.norm = GatedRMSNorm(dv, config.rms_norm_eps, param_dtype=jnp.float32, rngs=rngs)
        self.out_proj = make_param(rngs, (hv, dv, h), ("gdn_value_heads", "gdn_head_dim", "embed"), pdt)

    def __call__(self, x: jax.Array, segment_ids: jax.Array) -> jax.Array:
        def conv_silu(kernel: nnx.Param, conv: nnx.Param) -> jax.Array:
            return jax.nn.silu(causal_depthwise_conv(dense(x, kernel, "bte,ehd->bthd"), conv[...], segment_ids))

        q, k, v = conv_silu(self.in_proj_q, self.conv_q), conv_silu(self.in_proj_k, self.conv_k), \
            conv_silu(self.in_proj_v, self.conv_v)
        z, beta, g = self.gates(x)
        if self.sharded_rule is not None:
            o = self.sharded_rule(q, k, v, g, beta, segment_ids)
        else:
            o, _ = gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, use_qk_l2norm=True, impl=self.impl)
        return self.output(o, z)

    def gates(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(z [..., Hv, dv] output gate, beta [..., Hv] in the model dtype, g [..., Hv] fp32 log-decay) of ``x``."""
        z = dense(x, self.in_proj_z, "...e,ehd->...hd")
        beta = jax.nn.sigmoid(dense(x, self.in_proj_b, "...e,eh->...h"))  # model dtype (spec §7.3)
        a = dense(x, self.in_proj_a, "...e,eh->...h").astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a + self.dt_bias[...].astype(jnp.float32))
        return z, beta, g

    def output(self, o: jax.Array, z: jax.Array) -> jax.Array:
        """Gated RMSNorm of the core output ``o [B, T, Hv, dv]`` by ``z``, then the output projection."""
        return dense(self.norm(o.astype(z.dtype), z), self.out_proj, "bthd,hde->bte")
