"""Multi-token-prediction head (spec §2.9): one extra full-attention decoder layer predicting token t+2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import FULL_ATTENTION, ModelConfig
from qwen35_jax.model.decoder import DecoderLayer, LayerInputs
from qwen35_jax.model.moe import RouterStats
from qwen35_jax.model.norms import RMSNorm
from qwen35_jax.model.params import dense, make_param


class MultiTokenPredictor(nnx.Module):
    """``norm(layer(fc([norm_e(E[t+1]); norm_h(h_t)])))``; shares the main embedding and LM head."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, pdt = config.hidden_size, jnp.dtype(config.param_dtype)
        self.pre_fc_norm_embedding = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.pre_fc_norm_hidden = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.fc = make_param(rngs, (2 * h, h), ("mtp_concat", "embed"), pdt)
        self.layers = nnx.List([DecoderLayer(config, FULL_ATTENTION, rngs=rngs)
                                for _ in range(config.mtp_num_hidden_layers)])
        self.norm = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, hidden: jax.Array, next_token_embeddings: jax.Array, inputs: LayerInputs,
                 layer_index: int = 0) -> tuple[jax.Array, RouterStats | None]:
        """Normalised hidden state for position t+2 from the main hidden ``h_t`` and the embedding of token t+1."""
        fused = jnp.concatenate([self.pre_fc_norm_embedding(next_token_embeddings), self.pre_fc_norm_hidden(hidden)],
                                axis=-1)  # embedding first, then hidden (spec §2.9)
        x, stats = self.layers[layer_index](dense(fused, self.fc, "btc,ce->bte"), inputs)
        return self.norm(x), stats
