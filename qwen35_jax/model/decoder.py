"""Decoder layers, the repeated hybrid block, and the scanned stack (spec §2.8, DESIGN §3)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import LINEAR_ATTENTION, ModelConfig
from qwen35_jax.model.attention import GatedAttention
from qwen35_jax.model.gated_deltanet import GatedDeltaNet
from qwen35_jax.model.mlp import MLP
from qwen35_jax.model.moe import RouterStats, SparseMoE
from qwen35_jax.model.norms import RMSNorm

# Remat is per decoder layer inside the scanned block (the scan keeps each layer's input): the backward recomputes
# one layer at a time, so only one layer's activations (e.g. its MoE dispatch buffers) are live, not a block's.
REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer, recompute it all in the backward
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LayerInputs(NamedTuple):
    """What every layer of the stack sees besides the residual stream."""

    cos: jax.Array  # [B, T, rotary_dim]
    sin: jax.Array
    segment_ids: jax.Array  # [B, T] int; equal ids attend / recur together, 0 marks padding
    token_mask: jax.Array  # [B, T] bool; False on padding (excluded from router statistics)


class DecoderLayer(nnx.Module):
    """Pre-norm residual layer: ``x += mixer(norm(x)); x += ffn(norm(x))``; mixer = GDN or gated attention."""

    def __init__(self, config: ModelConfig, layer_type: str, *, rngs: nnx.Rngs):
        pdt = jnp.dtype(config.param_dtype)
        self.is_linear = layer_type == LINEAR_ATTENTION
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(config, rngs=rngs)
        else:
            self.self_attn = GatedAttention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.is_moe = config.is_moe
        if self.is_moe:
            self.mlp = SparseMoE(config, rngs=rngs)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size, param_dtype=pdt, rngs=rngs)

    def __call__(self, x: jax.Array, inputs: LayerInputs) -> tuple[jax.Array, RouterStats | None]:
        h = self.input_layernorm(x)
        if self.is_linear:
            x = x + self.linear_attn(h, inputs.segment_ids)
        else:
            x = x + self.self_attn(h, inputs.cos, inputs.sin, inputs.segment_ids)
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            out, stats = self.mlp(h, inputs.token_mask)
            return x + out, stats
        return x + self.mlp(h), None


def _add_stats(total: RouterStats | None, new: RouterStats | None) -> RouterStats | None:
    return new if total is None else jax.tree.map(jnp.add, total, new)


class HybridBlock(nnx.Module):
    """One repeat of the layer pattern, e.g. [GDN, GDN, GDN, attention]."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([DecoderLayer(config, kind, rngs=rngs) for kind in config.block_pattern])
        self.remat_policy = config.remat_policy

    def __call__(self, x: jax.Array, inputs: LayerInputs) -> tuple[jax.Array, RouterStats | None]:
        stats = None
        for layer in self.layers:
            if self.remat_policy == "none":
                x, layer_stats = layer(x, inputs)
            else:
                graphdef, state = nnx.split(layer)
                run = jax.checkpoint(lambda s, h, gd=graphdef: nnx.merge(gd, s)(h, inputs),
                                     policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
                x, layer_stats = run(state, x)
            stats = _add_stats(stats, layer_stats)
        return x, stats


class DecoderStack(nnx.Module):
    """``num_blocks`` hybrid blocks with parameters stacked on a leading ``layers`` axis, run by ``lax.scan``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        # Static hook: ``qwen35_jax.parallel.mesh.ActivationSharding`` constrains the residual stream [B, T, H]
        # at every block boundary to the mesh's batch / sequence / embed sharding.
        self.constrain_activations = None

        @nnx.split_rngs(splits=config.num_blocks)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(block_rngs: nnx.Rngs) -> HybridBlock:
            return HybridBlock(config, rngs=block_rngs)

        self.blocks = make_blocks(rngs)
        self.scan_unroll = config.scan_unroll

    def __call__(self, x: jax.Array, inputs: LayerInputs) -> tuple[jax.Array, RouterStats | None]:
        graphdef, state = nnx.split(self.blocks)

        def body(carry: jax.Array, block_state: nnx.State) -> tuple[jax.Array, RouterStats | None]:
            if self.constrain_activations is not None:
                carry = self.constrain_activations(carry)
            return nnx.merge(graphdef, block_state)(carry, inputs)  # remat: per layer (HybridBlock)

        x, per_block_stats = jax.lax.scan(body, x, state, unroll=self.scan_unroll)
        if per_block_stats is None:
            return x, None
        return x, jax.tree.map(lambda s: jnp.sum(s, axis=0), per_block_stats)
