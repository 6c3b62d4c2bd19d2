"""Vision tower parameters (spec §2.10): patch embedding, learned position table, pre-LN blocks, 2×2 merger.

The parameter structure is complete (it is what ``tools.param_count`` counts and what checkpoints load into);
the forward pass, image processor and multimodal fusion are the vision-language issue's work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import VisionConfig
from qwen35_jax.model.params import constant_init, make_param


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.weight = make_param(rngs, (dim,), ("norm",), param_dtype, constant_init(1.0))
        self.bias = make_param(rngs, (dim,), ("norm",), param_dtype, constant_init(0.0))


class Linear(nnx.Module):
    def __init__(self, fan_in: int, fan_out: int, axes: tuple[str, str], *, param_dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.kernel = make_param(rngs, (fan_in, fan_out), axes, param_dtype)
        self.bias = make_param(rngs, (fan_out,), (axes[1],), param_dtype, constant_init(0.0))


class VisionBlock(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d, i = config.hidden_size, config.intermediate_size
        self.norm1 = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.qkv = Linear(d, 3 * d, ("vision_embed", "vision_qkv"), param_dtype=param_dtype, rngs=rngs)
        self.proj = Linear(d, d, ("vision_heads", "vision_embed"), param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(d, i, ("vision_embed", "vision_mlp"), param_dtype=param_dtype, rngs=rngs)
        self.fc2 = Linear(i, d, ("vision_mlp", "vision_embed"), param_dtype=param_dtype, rngs=rngs)


class VisionTower(nnx.Module):
    def __init__(self, config: VisionConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d, merged = config.hidden_size, config.hidden_size * config.spatial_merge_size**2
        self.patch_embed = Linear(config.patch_dim, d, ("vision_patch", "vision_embed"), param_dtype=param_dtype,
                                  rngs=rngs)
        self.pos_embed = make_param(rngs, (config.num_position_embeddings, d), ("vision_positions", "vision_embed"),
                                    param_dtype)
        self.blocks = nnx.List([VisionBlock(config, param_dtype=param_dtype, rngs=rngs) for _ in range(config.depth)])
        self.merger_norm = LayerNorm(d, param_dtype=param_dtype, rngs=rngs)
        self.merger_fc1 = Linear(merged, merged, ("vision_merged", "vision_merged_out"), param_dtype=param_dtype,
                                 rngs=rngs)
        self.merger_fc2 = Linear(merged, config.out_hidden_size, ("vision_merged", "embed"), param_dtype=param_dtype,
                                 rngs=rngs)

    def __call__(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        raise NotImplementedError(
            "The vision tower forward pass (spec §2.10) is not implemented yet: only its parameters exist so that "
            "checkpoints load and parameters are counted. It lands with the vision-language issue.")
