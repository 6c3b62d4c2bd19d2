"""Decoder layers, the repeated hybrid block, and the scanned stack (numerics §2.8, DESIGN §3).

The same modules serve training and decoding: each ``__call__`` takes an optional cache (a layer's mixer cache, a
block's tuple of them, the stack's tuple with leaves stacked over blocks) and returns it updated, or ``None``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import LINEAR_ATTENTION, ModelConfig
from qwen35_jax.model.attention import GatedAttention
from qwen35_jax.model.cache import LayerCache
from qwen35_jax.model.gated_deltanet import GatedDeltaNet
from qwen35_jax.model.mlp import MLP
from qwen35_jax.model.moe import RouterStats, SparseMoE
from qwen35_jax.model.norms import RMSNorm
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.parallel.sharding import activation_sharding_for

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

    def __init__(self, config: ModelConfig, layer_type: str, *, runtime: Runtime, rngs: nnx.Rngs):
        pdt = jnp.dtype(config.param_dtype)
        self.is_linear = layer_type == LINEAR_ATTENTION
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(config, runtime=runtime, rngs=rngs)
        else:
            self.self_attn = GatedAttention(config, runtime=runtime, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.is_moe = config.is_moe
        if self.is_moe:
            self.mlp = SparseMoE(config, runtime=runtime, rngs=rngs)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size, param_dtype=pdt, backend=runtime.backend,
                           rngs=rngs)

    def __call__(self, x: jax.Array, inputs: LayerInputs,
                 cache: LayerCache | None = None) -> tuple[jax.Array, RouterStats | None, LayerCache | None]:
        """``(x, router statistics or None, the mixer's updated cache or None)``."""
        h = self.input_layernorm(x)
        if self.is_linear:
            out, cache = self.linear_attn(h, inputs.segment_ids, cache)
        else:
            out, cache = self.self_attn(h, inputs.cos, inputs.sin, inputs.segment_ids, cache)
        x = x + out
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            out, stats = self.mlp(h, inputs.token_mask)
            return x + out, stats, cache
        return x + self.mlp(h), None, cache

    def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype) -> LayerCache:
        mixer = self.linear_attn if self.is_linear else self.self_attn
        return mixer.init_cache(batch, max_length, dtype)


def _add_stats(total: RouterStats | None, new: RouterStats | None) -> RouterStats | None:
    return new if total is None else jax.tree.map(jnp.add, total, new)


class HybridBlock(nnx.Module):
    """One repeat of the layer pattern, e.g. [GDN, GDN, GDN, attention]."""

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        self.layers = nnx.List([DecoderLayer(config, kind, runtime=runtime, rngs=rngs)
                                for kind in config.block_pattern])
        self.remat_policy = config.remat_policy

    def __call__(self, x: jax.Array, inputs: LayerInputs, cache: tuple[LayerCache, ...] | None = None
                 ) -> tuple[jax.Array, RouterStats | None, tuple[LayerCache, ...] | None]:
        """Run the layers in order; ``cache`` holds one entry per layer (remat applies to training only)."""
        stats, new_cache = None, []
        for i, layer in enumerate(self.layers):
            if cache is not None:
                x, layer_stats, layer_cache = layer(x, inputs, cache[i])
                new_cache.append(layer_cache)
            elif self.remat_policy == "none":
                x, layer_stats, _ = layer(x, inputs)
            else:
                graphdef, state = nnx.split(layer)
                run = jax.checkpoint(lambda s, h, gd=graphdef: nnx.merge(gd, s)(h, inputs)[:2],
                                     policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
                x, layer_stats = run(state, x)
            stats = _add_stats(stats, layer_stats)
        return x, stats, None if cache is None else tuple(new_cache)

    def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype) -> tuple[LayerCache, ...]:
        return tuple(layer.init_cache(batch, max_length, dtype) for layer in self.layers)


class DecoderStack(nnx.Module):
    """``num_blocks`` hybrid blocks with parameters stacked on a leading ``layers`` axis, run by ``lax.scan``."""

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        # Static: on a mesh, ``parallel.sharding.ActivationSharding`` constrains the residual stream [B, T, H] at
        # every block boundary to the mesh's batch / sequence / embed sharding; None on one device.
        self.constrain_activations = activation_sharding_for(runtime)

        @nnx.split_rngs(splits=config.num_blocks)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(block_rngs: nnx.Rngs) -> HybridBlock:
            return HybridBlock(config, runtime=runtime, rngs=block_rngs)

        self.blocks = make_blocks(rngs)
        self.scan_unroll = config.scan_unroll

    def __call__(self, x: jax.Array, inputs: LayerInputs, cache: tuple[LayerCache, ...] | None = None
                 ) -> tuple[jax.Array, RouterStats | None, tuple[LayerCache, ...] | None]:
        """``(x, router statistics summed over layers or None, updated cache or None)``; ``cache`` as built by
        ``init_cache`` (leaves ``[num_blocks, ...]``), scanned over with the parameters."""
        graphdef, state = nnx.split(self.blocks)

        def body(carry: jax.Array, xs: tuple) -> tuple[jax.Array, tuple]:
            block_state, block_cache = xs
            if self.constrain_activations is not None:
                carry = self.constrain_activations(carry)
            x, stats, block_cache = nnx.merge(graphdef, block_state)(carry, inputs, block_cache)  # remat: per layer
            return x, (stats, block_cache)

        x, (per_block_stats, cache) = jax.lax.scan(body, x, (state, cache), unroll=self.scan_unroll)
        if per_block_stats is None:
            return x, None, cache
        return x, jax.tree.map(lambda s: jnp.sum(s, axis=0), per_block_stats), cache

    def init_cache(self, batch: int, max_length: int, dtype: jnp.dtype) -> tuple[LayerCache, ...]:
        """An empty cache per layer slot, stacked over blocks like the parameters."""
        num_blocks = jax.tree.leaves(nnx.state(self.blocks))[0].shape[0]
        block_cache = self.blocks.init_cache(batch, max_length, dtype)
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_blocks, *a.shape)), block_cache)
