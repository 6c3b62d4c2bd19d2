"""Gated DeltaNet mixer (numerics §2.4).

The fused HF projection ``in_proj_qkv`` (and Qwen3-Next's grouped ``in_proj_qkvz``/``in_proj_ba``, numerics §2.12) is
stored here as separate per-head q / k / v / z / b / a kernels, and the depthwise conv likewise per q / k / v, so
every tensor has a head axis that tensor parallelism can shard. ``qwen35_jax.hf`` converts both HF layouts.

The same module serves training (no cache) and decoding (with its ``GDNCache``: a prompt, possibly in pieces, runs
the chunked core from the cached conv window and state; a single token runs the recurrent decode step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.cache import GDNCache
from qwen35_jax.model.norms import GatedRMSNorm
from qwen35_jax.model.params import constant_init, dense, make_param
from qwen35_jax.ops import gated_delta_rule_decode_step
from qwen35_jax.ops.gated_delta_rule.sharded import delta_rule_for
from qwen35_jax.parallel.runtime import Runtime

GDN_PARTS = ("q", "k", "v")  # the projections that go through the causal conv


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

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        h = config.hidden_size
        hk, hv = config.linear_num_key_heads, config.linear_num_value_heads
        dk, dv, ks = config.linear_key_head_dim, config.linear_value_head_dim, config.linear_conv_kernel_dim
        pdt = jnp.dtype(config.param_dtype)
        self.backend = runtime.backend
        # Static: the delta-rule core for the runtime (``config.gdn_impl`` resolved for its backend; a Pallas kernel
        # on a mesh runs in shard_map), called as ``(q, k, v, g, beta, *, segment_ids, initial_state=None,
        # output_final_state=False) -> (o, final_state or None)``.
        self.delta_rule = delta_rule_for(config.gdn_impl, runtime)
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
        # A = exp(A_log) ~ U(0, 16) and dt_bias = 1 at init, as in the reference; both kept fp32 (numerics §6.1, §7.3).
        self.A_log = make_param(rngs, (hv,), ("gdn_value_heads",), jnp.float32,
                                lambda key, shape, dtype: jnp.log(jax.random.uniform(key, shape, dtype, 1e-4, 16.0)))
        self.dt_bias = make_param(rngs, (hv,), ("gdn_value_heads",), jnp.float32, constant_init(1.0))
        self.norm = GatedRMSNorm(dv, config.rms_norm_eps, param_dtype=jnp.float32, rngs=rngs)
        self.out_proj = make_param(rngs, (hv, dv, h), ("gdn_value_heads", "gdn_head_dim", "embed"), pdt)

    def __call__(self, x: jax.Array, segment_ids: jax.Array,
                 cache: GDNCache | None = None) -> tuple[jax.Array, GDNCache | None]:
        """``x [B, T, H]`` → ``(y [B, T, H], cache)``.

        Without a cache (training): conv and recurrence within segments (``segment_ids [B, T]``), cache ``None``.
        With one, ``T > 1`` (prefill, or a further piece of a prompt): the cached window and state continue the
        first segment (a left-padded row's real tokens start a segment of their own, so padding never reaches
        them); the new window and final state are returned. ``T == 1`` (decided statically): a decode step that
        continues every row (``segment_ids`` unused).
        """
        if cache is None:
            q, k, v = (self.conv_silu(x, part, segment_ids) for part in GDN_PARTS)
            z, beta, g = self.gates(x)
            o, _ = self.delta_rule(q, k, v, g, beta, segment_ids=segment_ids)
            return self.output(o, z), None
        if x.shape[1] == 1:
            return self.decode_step(x, cache)
        return self.prefill(x, segment_ids, cache)

    def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype) -> GDNCache:
        """An empty cache (zero window and state); its size does not depend on ``max_length``."""
        del max_length
        (kernel, hk, dk), (hv, dv) = self.conv_q.shape[-3:], self.conv_v.shape[-2:]
        return GDNCache(conv_q=jnp.zeros((batch, kernel - 1, hk, dk), dtype),
                        conv_k=jnp.zeros((batch, kernel - 1, hk, dk), dtype),
                        conv_v=jnp.zeros((batch, kernel - 1, hv, dv), dtype),
                        state=jnp.zeros((batch, hv, dk, dv), jnp.float32))

    def conv_silu(self, x: jax.Array, part: str, segment_ids: jax.Array) -> jax.Array:
        """``silu(conv(x @ in_proj_<part>))`` over ``x [B, T, H]``, the conv within segments."""
        pre = dense(x, getattr(self, f"in_proj_{part}"), "bte,ehd->bthd", self.backend)
        return jax.nn.silu(causal_depthwise_conv(pre, getattr(self, f"conv_{part}")[...], segment_ids))

    def prefill(self, x: jax.Array, segment_ids: jax.Array, cache: GDNCache) -> tuple[jax.Array, GDNCache]:
        """``x [B, T, H]`` continuing the cache: the chunked core from the cached state, returning the final one."""
        (q, k, v), windows = self.windowed_conv_silu(x, segment_ids, cache)
        z, beta, g = self.gates(x)
        o, state = self.delta_rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=cache.state,
                                   output_final_state=True)
        return self.output(o, z), GDNCache(**windows, state=state)

    def windowed_conv_silu(self, x: jax.Array, segment_ids: jax.Array,
                           cache: GDNCache) -> tuple[list[jax.Array], dict[str, jax.Array]]:
        """``conv_silu`` of q, k, v with the cached window in front (as segment 1), and the new windows (inputs of
        padding zeroed, as a fresh cache holds)."""
        width = cache.conv_q.shape[1]
        window_ids = jnp.concatenate([jnp.ones((x.shape[0], width), segment_ids.dtype), segment_ids], axis=1)
        real = (window_ids != 0)[..., None, None]
        acts, windows = [], {}
        for part in GDN_PARTS:
            cached = getattr(cache, f"conv_{part}")
            pre = dense(x, getattr(self, f"in_proj_{part}"), "bte,ehd->bthd", self.backend)
            extended = jnp.concatenate([cached.astype(pre.dtype), pre], axis=1)
            conv = causal_depthwise_conv(extended, getattr(self, f"conv_{part}")[...], window_ids)[:, width:]
            acts.append(jax.nn.silu(conv))
            kept = jnp.where(real, extended, 0)[:, extended.shape[1] - width:]
            windows[f"conv_{part}"] = kept.astype(cached.dtype)
        return acts, windows

    def decode_step(self, x: jax.Array, cache: GDNCache) -> tuple[jax.Array, GDNCache]:
        """One token ``x [B, 1, H]``: the conv over (cached window, new input), then the delta-rule decode step."""
        acts, windows = [], {}
        for part in GDN_PARTS:
            cached = getattr(cache, f"conv_{part}")
            pre = dense(x[:, 0], getattr(self, f"in_proj_{part}"), "be,ehd->bhd", self.backend)
            window = jnp.concatenate([cached, pre[:, None].astype(cached.dtype)], axis=1)
            weight = getattr(self, f"conv_{part}")[...].astype(jnp.float32)  # [K, heads, dim]: y = Σ_j w[j] x[j]
            conv = jnp.einsum("bkhd,khd->bhd", window.astype(jnp.float32), weight).astype(x.dtype)
            acts.append(jax.nn.silu(conv))
            windows[f"conv_{part}"] = window[:, 1:]
        z, beta, g = self.gates(x[:, 0])
        o, state = gated_delta_rule_decode_step(*acts, g, beta, cache.state, use_qk_l2norm=True)
        return self.output(o[:, None], z[:, None]), GDNCache(**windows, state=state)

    def gates(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(z [..., Hv, dv] output gate, beta [..., Hv] in the model dtype, g [..., Hv] fp32 log-decay) of ``x``."""
        z = dense(x, self.in_proj_z, "...e,ehd->...hd", self.backend)
        beta = jax.nn.sigmoid(dense(x, self.in_proj_b, "...e,eh->...h", self.backend))  # model dtype (numerics §7.3)
        a = dense(x, self.in_proj_a, "...e,eh->...h", self.backend).astype(jnp.float32)
        g = -jnp.exp(self.A_log[...].astype(jnp.float32)) * jax.nn.softplus(a + self.dt_bias[...].astype(jnp.float32))
        return z, beta, g

    def output(self, o: jax.Array, z: jax.Array) -> jax.Array:
        """Gated RMSNorm of the core output ``o [B, T, Hv, dv]`` by ``z``, then the output projection."""
        return dense(self.norm(o.astype(z.dtype), z), self.out_proj, "bthd,hde->bte", self.backend)
