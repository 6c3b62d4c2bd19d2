"""Sparse MoE block with a gated shared expert (numerics §2.7); routing and its load-balancing statistics (numerics §3)
live in ``qwen35_jax.ops.moe.routing`` and are re-exported here.

The routed experts run as chosen when the layer is built for its ``Runtime``: on one device (or a mesh that shards
neither tokens nor experts) the (token, expert) assignments are sorted by expert and run through grouped matmuls
(``ops.moe.grouped``), so no token is dropped and no capacity is padded; otherwise ``ExpertParallel``
(``ops.moe.expert_parallel``) runs them in its shard_map (same routing; the capacity dispatch may drop assignments
and counts them in ``RouterStats.dropped``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.mlp import MLP
from qwen35_jax.model.parametrization import output_multiplier
from qwen35_jax.model.params import dense, make_param
from qwen35_jax.ops.moe.expert_parallel import expert_parallel_for
from qwen35_jax.ops.moe.grouped import local_experts
from qwen35_jax.ops.moe.routing import RouterStats, load_balancing_loss, route, router_stats
from qwen35_jax.parallel.runtime import Runtime

__all__ = ["RouterStats", "SparseMoE", "load_balancing_loss", "route", "router_stats"]


class SparseMoE(nnx.Module):
    """Routed experts (softmax → top-k → renormalise) plus a sigmoid-gated shared expert."""

    def __init__(self, config: ModelConfig, *, runtime: Runtime, rngs: nnx.Rngs):
        h, e, i = config.hidden_size, config.num_experts, config.moe_intermediate_size
        pdt = jnp.dtype(config.param_dtype)
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        self.backend = runtime.backend
        # Static: the expert-parallel dispatch on the runtime's mesh, or None (single-device grouped matmuls).
        self.expert_parallel = expert_parallel_for(config, runtime)
        self.router = make_param(rngs, (h, e), ("embed", None), pdt)
        self.experts_gate = make_param(rngs, (e, h, i), ("expert", "embed", "expert_mlp"), pdt)
        self.experts_up = make_param(rngs, (e, h, i), ("expert", "embed", "expert_mlp"), pdt)
        self.experts_down = make_param(rngs, (e, i, h), ("expert", "expert_mlp", "embed"), pdt)
        shared = config.shared_expert_intermediate_size
        self.shared_expert = nnx.data(MLP(h, shared, param_dtype=pdt, backend=runtime.backend, rngs=rngs)
                                      if shared else None)
        self.shared_expert_gate = nnx.data(make_param(rngs, (h, 1), ("embed", None), pdt) if shared else None)
        self.logit_multiplier = output_multiplier(config)  # µP's 1 / m on router and gate logits (numerics §12)

    def __call__(self, x: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, RouterStats]:
        batch, length, hidden = x.shape
        tokens = x.reshape(-1, hidden)
        logits = dense(tokens, self.router, "ne,ex->nx", self.backend)  # model dtype, as the reference (numerics §7.7)
        if self.logit_multiplier is not None:
            logits = logits * self.logit_multiplier
        probs, weights, experts = route(logits, self.top_k, self.normalize)
        if self.expert_parallel is not None:
            routed, dropped = self.expert_parallel(
                x, weights.reshape(batch, length, -1), experts.reshape(batch, length, -1), self.experts_gate[...],
                self.experts_up[...], self.experts_down[...])
            routed = routed.reshape(-1, hidden)
        else:
            routed = local_experts(tokens, weights, experts, self.experts_gate[...], self.experts_up[...],
                                   self.experts_down[...], self.backend).astype(x.dtype)
            dropped = None

        if self.shared_expert is not None:
            gate_logits = dense(tokens, self.shared_expert_gate, "ne,eo->no", self.backend)
            if self.logit_multiplier is not None:
                gate_logits = gate_logits * self.logit_multiplier
            shared_gate = jax.nn.sigmoid(gate_logits)
            routed = routed + shared_gate * self.shared_expert(tokens)

        stats = router_stats(probs, experts, token_mask.reshape(-1), dropped)
        return routed.reshape(batch, length, hidden), stats
