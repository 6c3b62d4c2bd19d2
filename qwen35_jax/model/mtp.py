"""Multi-token-prediction head (numerics §2.9): one extra full-attention decoder layer predicting token t+2, and the
chained multi-step MTP logits / loss.

Step k (1-based) predicts token ``t+k+1`` from ``h^{k-1}_t`` and the embedding of token ``t+k``; ``h^0`` is the main
model's returned hidden state (after the final norm, what vLLM feeds its MTP module) and ``h^k`` is the MTP output
after ``mtp.norm`` (vLLM chains its speculative steps on that same output). Step k uses MTP layer
``(k−1) mod mtp_num_hidden_layers`` — released checkpoints have one layer, reused for every step. The training recipe
(loss weight, number of steps) is unpublished (numerics §8), so both are arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import FULL_ATTENTION, ModelConfig
from qwen35_jax.model.decoder import DecoderLayer, LayerInputs
from qwen35_jax.model.moe import RouterStats, load_balancing_loss
from qwen35_jax.model.norms import RMSNorm
from qwen35_jax.model.params import dense, make_param
from qwen35_jax.parallel.runtime import Runtime

if TYPE_CHECKING:
    from qwen35_jax.model.qwen35 import Qwen35ForCausalLM


class MultiTokenPredictor(nnx.Module):
    """``norm(layer(fc([norm_e(E[t+1]); norm_h(h_t)])))``; shares the main embedding and LM head."""

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        h, pdt = config.hidden_size, jnp.dtype(config.param_dtype)
        self.backend = runtime.backend
        self.pre_fc_norm_embedding = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.pre_fc_norm_hidden = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)
        self.fc = make_param(rngs, (2 * h, h), ("mtp_concat", "embed"), pdt)
        self.layers = nnx.List([DecoderLayer(config, FULL_ATTENTION, runtime=runtime, rngs=rngs)
                                for _ in range(config.mtp_num_hidden_layers)])
        self.norm = RMSNorm(h, config.rms_norm_eps, param_dtype=pdt, rngs=rngs)

    def __call__(self, hidden: jax.Array, next_token_embeddings: jax.Array, inputs: LayerInputs,
                 layer_index: int = 0) -> tuple[jax.Array, RouterStats | None]:
        """Normalised hidden state for position t+2 from the main hidden ``h_t`` and the embedding of token t+1."""
        fused = jnp.concatenate([self.pre_fc_norm_embedding(next_token_embeddings), self.pre_fc_norm_hidden(hidden)],
                                axis=-1)  # embedding first, then hidden (numerics §2.9)
        x, stats, _ = self.layers[layer_index](dense(fused, self.fc, "btc,ce->bte", self.backend), inputs)
        return self.norm(x), stats


def shift_left(x: jax.Array, k: int, fill: float | int = 0) -> jax.Array:
    """``y[:, t] = x[:, t + k]`` along axis 1, the last ``k`` entries filled."""
    if k == 0:
        return x
    pad = jnp.full((x.shape[0], k, *x.shape[2:]), fill, x.dtype)
    return jnp.concatenate([x[:, k:], pad], axis=1)


class MTPSteps(NamedTuple):
    logits: tuple[jax.Array, ...]  # per step k: [B, T, V], position t predicts token t+k+1
    valid: tuple[jax.Array, ...]  # per step k: [B, T] bool, t+k+1 exists in the same segment
    router_stats: RouterStats | None  # summed over steps (MoE MTP layers)


def mtp_steps(model: Qwen35ForCausalLM, hidden_states: jax.Array, input_ids: jax.Array, *, depth: int = 1,
              segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
              attention_mask: jax.Array | None = None, input_embeddings: jax.Array | None = None) -> MTPSteps:
    """Chained MTP logits for ``depth`` steps (see module docstring).

    ``hidden_states``: the main model's output ``[B, T, H]``; ``input_embeddings``: the embeddings the main model
    consumed (pass the vision-fused ones for VL prompts; default the token embeddings of ``input_ids``).
    ``segment_ids`` / ``positions`` / ``attention_mask`` as for the main call; the MTP layer attends causally within
    a segment at the same positions. Positions whose target crosses a segment or the sequence end are not ``valid``.
    """
    if model.mtp is None:
        raise ValueError("this model has no MTP head (config.mtp_num_hidden_layers == 0, or the checkpoint carried no "
                         "mtp.* tensors)")
    if depth < 1:
        raise ValueError(f"MTP depth must be >= 1; got {depth}")
    inputs = model.layer_inputs(input_ids, segment_ids, positions, attention_mask)
    embeds = model.embed(input_ids) if input_embeddings is None else input_embeddings
    segments = inputs.segment_ids
    hidden, logits, valid, stats = hidden_states, [], [], None
    for k in range(1, depth + 1):
        hidden, step_stats = model.mtp(hidden, shift_left(embeds, k), inputs,
                                       (k - 1) % len(model.mtp.layers))
        ok = (shift_left(segments, k + 1, -1) == segments) & (segments != 0)
        logits.append(model.unembed(hidden))
        valid.append(ok)
        if step_stats is not None:
            stats = step_stats if stats is None else jax.tree.map(jnp.add, stats, step_stats)
    return MTPSteps(tuple(logits), tuple(valid), stats)


class MTPLoss(NamedTuple):
    loss: jax.Array  # [] fp32: weight · mean_k(step_losses)
    step_losses: jax.Array  # [depth] fp32 mean cross-entropy of each step over its valid targets
    aux_loss: jax.Array  # [] fp32 load-balancing loss of the MTP MoE layer (0 for dense)


def mtp_loss(model: Qwen35ForCausalLM, hidden_states: jax.Array, input_ids: jax.Array, *, depth: int = 1,
             weight: float = 0.3, loss_mask: jax.Array | None = None, segment_ids: jax.Array | None = None,
             positions: jax.Array | None = None, attention_mask: jax.Array | None = None,
             input_embeddings: jax.Array | None = None) -> MTPLoss:
    """``weight / depth · Σ_k CE_k`` (DeepSeek-V3-style MTP objective); CE_k is the mean over positions t whose
    target ``input_ids[t+k+1]`` is in the same segment and has ``loss_mask[t+k+1]`` set (default all)."""
    steps = mtp_steps(model, hidden_states, input_ids, depth=depth, segment_ids=segment_ids, positions=positions,
                      attention_mask=attention_mask, input_embeddings=input_embeddings)
    losses = []
    for k, (logits, valid) in enumerate(zip(steps.logits, steps.valid, strict=True), start=1):
        targets = shift_left(input_ids, k + 1)
        mask = valid if loss_mask is None else valid & shift_left(loss_mask.astype(bool), k + 1, False)
        logits = logits.astype(jnp.float32)
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
        m = mask.astype(jnp.float32)
        losses.append(jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0))
    step_losses = jnp.stack(losses)
    aux = jnp.zeros((), jnp.float32) if steps.router_stats is None else load_balancing_loss(steps.router_stats)
    return MTPLoss(loss=weight * jnp.mean(step_losses), step_losses=step_losses, aux_loss=aux)
