"""Decoding cache of the hybrid stack and the cache-aware layer steps (prefill and single-token decode).

Per layer slot of the repeated block pattern (leaves stacked over the ``num_blocks`` scanned blocks, like the
parameters): a full-attention slot holds its K/V ``[NB, B, S_max, kv_heads, head_dim]`` (compute dtype); a GDN slot
holds the last ``K-1`` pre-conv inputs of q, k, v ``[NB, B, K-1, heads, dim]`` (compute dtype) and the fp32
recurrent state ``[NB, B, Hv, dk, dv]`` (spec §2.4). ``valid [B, S_max]`` marks slots holding real tokens
(left padding never does), ``positions [B]`` the next rope position of each row, ``index`` the next slot.

The steps call the model's own submodules and parameters (norms, projections, rope, ``multihead_attention``,
``causal_depthwise_conv``, the GDN core) and follow ``GatedAttention`` / ``GatedDeltaNet`` / ``DecoderLayer``; only
the cache reads and writes are new. Prefill runs the chunked (or Pallas) core with ``segment_ids`` = the 0/1
attention mask, so padding starts a segment of its own: it never reaches a real token's conv window or GDN state
(the same as transformers zeroing padded inputs, HF-M ``apply_mask_to_padding_states``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.attention import multihead_attention
from qwen35_jax.model.decoder import DecoderLayer
from qwen35_jax.model.gated_deltanet import GatedDeltaNet, causal_depthwise_conv
from qwen35_jax.model.params import dense
from qwen35_jax.ops import gated_delta_rule
from qwen35_jax.ops.gated_delta_rule import gated_delta_rule_decode_step

GDN_PARTS = ("q", "k", "v")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class HybridCache:
    layers: tuple[dict[str, jax.Array], ...]  # one dict per slot of config.block_pattern
    valid: jax.Array  # [B, S_max] bool
    positions: jax.Array  # [B] int32
    index: jax.Array  # [] int32

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


def init_cache(config: ModelConfig, batch: int, max_length: int) -> HybridCache:
    """An empty cache for ``batch`` rows of at most ``max_length`` tokens (prompt + generated)."""
    dtype, nb = jnp.dtype(config.dtype), config.num_blocks
    layers = []
    for kind in config.block_pattern:
        if kind == "full_attention":
            shape = (nb, batch, max_length, config.num_key_value_heads, config.head_dim)
            layers.append({"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)})
        else:
            hk, hv = config.linear_num_key_heads, config.linear_num_value_heads
            dk, dv, width = config.linear_key_head_dim, config.linear_value_head_dim, config.linear_conv_kernel_dim - 1
            layers.append({
                "conv_q": jnp.zeros((nb, batch, width, hk, dk), dtype),
                "conv_k": jnp.zeros((nb, batch, width, hk, dk), dtype),
                "conv_v": jnp.zeros((nb, batch, width, hv, dv), dtype),
                "state": jnp.zeros((nb, batch, hv, dk, dv), jnp.float32),
            })
    return HybridCache(layers=tuple(layers), valid=jnp.zeros((batch, max_length), bool),
                       positions=jnp.zeros((batch,), jnp.int32), index=jnp.zeros((), jnp.int32))


# ------------------------------------------------------------------------------------------------ attention


def cached_attention(attn: nnx.Module, x: jax.Array, cos: jax.Array, sin: jax.Array, layer: dict[str, jax.Array],
                     valid: jax.Array, index: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``GatedAttention`` on ``x [B, T, H]`` occupying cache slots ``index .. index+T-1`` (``valid`` already marks
    them); queries attend causally to every valid slot up to their own."""
    length = x.shape[1]
    query, gate, key, value = attn.project(x, cos, sin)
    keys = jax.lax.dynamic_update_slice_in_dim(layer["key"], key.astype(layer["key"].dtype), index, axis=1)
    values = jax.lax.dynamic_update_slice_in_dim(layer["value"], value.astype(layer["value"].dtype), index, axis=1)
    slots = jnp.arange(keys.shape[1])
    causal = slots[None, :] <= (index + jnp.arange(length))[:, None]  # [T, S]
    mask = (causal[None] & valid[:, None, :])[:, None]  # [B, 1, T, S]
    out = multihead_attention(query, keys.astype(query.dtype), values.astype(query.dtype), mask)
    return attn.output(out, gate), {"key": keys, "value": values}


# ------------------------------------------------------------------------------------------------ gated deltanet


def gdn_prefill(gdn: GatedDeltaNet, x: jax.Array, segment_ids: jax.Array,
                layer: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``GatedDeltaNet`` over a (left-padded) prompt, or a further piece of one, returning the new conv windows and
    the final fp32 state. The cached window and state continue the first segment (zeros in a fresh cache; a
    left-padded row's real tokens start a segment of their own, so only an unpadded piece continues the cache)."""
    width = layer["conv_q"].shape[1]
    window_ids = jnp.concatenate([jnp.ones((x.shape[0], width), segment_ids.dtype), segment_ids], axis=1)
    real = (window_ids != 0)[..., None, None]
    new: dict[str, jax.Array] = {}
    qkv = []
    for part in GDN_PARTS:
        pre = dense(x, getattr(gdn, f"in_proj_{part}"), "bte,ehd->bthd")
        extended = jnp.concatenate([layer[f"conv_{part}"].astype(pre.dtype), pre], axis=1)  # cached window first
        conv = causal_depthwise_conv(extended, getattr(gdn, f"conv_{part}")[...], window_ids)[:, width:]
        qkv.append(jax.nn.silu(conv))
        new[f"conv_{part}"] = jnp.where(real, extended, 0)[:, -width:].astype(layer[f"conv_{part}"].dtype)
    z, beta, g = gdn.gates(x)
    o, new["state"] = gated_delta_rule(*qkv, g, beta, segment_ids=segment_ids, use_qk_l2norm=True, impl=gdn.impl,
                                       initial_state=layer["state"], output_final_state=True)
    return gdn.output(o, z), new


def gdn_decode(gdn: GatedDeltaNet, x: jax.Array, layer: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One token ``x [B, 1, H]``: conv over (cached window, new input), then the delta-rule decode step."""
    new: dict[str, jax.Array] = {}
    qkv = []
    for part in GDN_PARTS:
        pre = dense(x[:, 0], getattr(gdn, f"in_proj_{part}"), "be,ehd->bhd")
        window = jnp.concatenate([layer[f"conv_{part}"], pre[:, None].astype(layer[f"conv_{part}"].dtype)], axis=1)
        weight = getattr(gdn, f"conv_{part}")[...].astype(jnp.float32)  # [K, heads, dim]; y = Σ_j w[j] window[j]
        conv = jnp.einsum("bkhd,khd->bhd", window.astype(jnp.float32), weight).astype(x.dtype)
        qkv.append(jax.nn.silu(conv))
        new[f"conv_{part}"] = window[:, 1:]
    z, beta, g = gdn.gates(x[:, 0])
    o, new["state"] = gated_delta_rule_decode_step(*qkv, g, beta, layer["state"], use_qk_l2norm=True)
    return gdn.output(o[:, None], z[:, None]), new


# ------------------------------------------------------------------------------------------------ layers


def layer_step(layer: DecoderLayer, x: jax.Array, cache_layer: dict[str, jax.Array], *, cos: jax.Array,
               sin: jax.Array, segment_ids: jax.Array, valid: jax.Array, index: jax.Array,
               prefill: bool) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``DecoderLayer.__call__`` with the cache (router statistics are not needed for generation)."""
    h = layer.input_layernorm(x)
    if layer.is_linear:
        if prefill:
            out, cache_layer = gdn_prefill(layer.linear_attn, h, segment_ids, cache_layer)
        else:
            out, cache_layer = gdn_decode(layer.linear_attn, h, cache_layer)
    else:
        out, cache_layer = cached_attention(layer.self_attn, h, cos, sin, cache_layer, valid, index)
    x = x + out
    h = layer.post_attention_layernorm(x)
    if layer.is_moe:
        out, _ = layer.mlp(h, segment_ids != 0)
    else:
        out = layer.mlp(h)
    return x + out, cache_layer
