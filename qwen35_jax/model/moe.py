"""Sparse MoE block with a gated shared expert (spec §2.7) and its load-balancing statistics (spec §3).

Single-device dropless path: the (token, expert) assignments are sorted by expert and run through grouped matmuls
(``jax.lax.ragged_dot``), so no token is dropped and no capacity is padded. On a mesh that shards tokens or experts,
``qwen35_jax.parallel.moe_ep`` sets ``SparseMoE.expert_parallel`` and the routed part runs in its shard_map instead
(same routing; the capacity dispatch may drop assignments and counts them in ``RouterStats.dropped``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.mlp import MLP
from qwen35_jax.model.params import dense, make_param


class RouterStats(NamedTuple):
    """Per-layer sums for the pooled aux loss: Σ_n m_n·1[e ∈ topk_n], Σ_n m_n·p_{n,e}, Σ_n m_n; plus the number of
    (token, expert) assignments a capacity-limited expert-parallel dispatch dropped (0 on the dropless paths)."""

    assignments: jax.Array  # [E] fp32
    probabilities: jax.Array  # [E] fp32
    tokens: jax.Array  # [] fp32
    dropped: jax.Array  # [] fp32

    @staticmethod
    def zeros(num_experts: int) -> RouterStats:
        return RouterStats(jnp.zeros((num_experts,), jnp.float32), jnp.zeros((num_experts,), jnp.float32),
                           jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))


def load_balancing_loss(stats: RouterStats) -> jax.Array:
    """``E · Σ_e f_e · P_e`` with f and P pooled over layers and tokens (equals top_k at perfect balance)."""
    denom = jnp.maximum(stats.tokens, 1.0)
    num_experts = stats.assignments.shape[-1]
    return num_experts * jnp.sum((stats.assignments / denom) * (stats.probabilities / denom))


def router_stats(probs: jax.Array, experts: jax.Array, token_mask: jax.Array,
                 dropped: jax.Array | None = None) -> RouterStats:
    """One layer's aux-loss sums from router probabilities ``[N, E]`` and chosen experts ``[N, k]``."""
    mask = token_mask.astype(jnp.float32)
    hits = jnp.zeros(probs.shape, jnp.float32).at[jnp.arange(probs.shape[0])[:, None], experts].add(1.0)
    dropped = jnp.zeros((), jnp.float32) if dropped is None else dropped.astype(jnp.float32)
    return RouterStats(assignments=mask @ hits, probabilities=mask @ probs, tokens=jnp.sum(mask), dropped=dropped)


def route(logits: jax.Array, top_k: int, normalize: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Softmax (fp32) → top-k → optional renormalisation. Returns (probs [N,E], weights [N,k], experts [N,k])."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts


def swiglu_experts(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """SwiGLU of ``x [..., E, n, H]`` with expert e's weights on slice e (batched matmuls; fp32 accumulation)."""
    dt = x.dtype
    h_gate = jnp.einsum("...enh,ehi->...eni", x, gate.astype(dt), preferred_element_type=jnp.float32)
    h_up = jnp.einsum("...enh,ehi->...eni", x, up.astype(dt), preferred_element_type=jnp.float32)
    hidden = (jax.nn.silu(h_gate) * h_up).astype(dt)
    return jnp.einsum("...eni,eih->...enh", hidden, down.astype(dt), preferred_element_type=jnp.float32).astype(dt)


def grouped_swiglu(x_sorted: jax.Array, group_sizes: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                   platform: str | None = None) -> jax.Array:
    """SwiGLU of each row with its expert's weights; rows are sorted by expert, ``group_sizes[e]`` rows each (rows
    past ``sum(group_sizes)`` give 0). ``platform`` (default: the default backend) picks the kernel: ``ragged_dot``
    (grouped-matmul kernels on TPU / GPU) or, on CPU, where XLA runs ``ragged_dot`` ~5x slower than batched matmuls
    of the same work, ``_tiled_grouped_swiglu``."""
    if (platform or jax.default_backend()) == "cpu":
        return _tiled_grouped_swiglu(x_sorted, group_sizes, gate, up, down)
    dt = x_sorted.dtype
    h_gate = jax.lax.ragged_dot(x_sorted, gate.astype(dt), group_sizes, preferred_element_type=jnp.float32)
    h_up = jax.lax.ragged_dot(x_sorted, up.astype(dt), group_sizes, preferred_element_type=jnp.float32)
    hidden = (jax.nn.silu(h_gate) * h_up).astype(dt)
    return jax.lax.ragged_dot(hidden, down.astype(dt), group_sizes, preferred_element_type=jnp.float32).astype(dt)


def _tiled_grouped_swiglu(x_sorted: jax.Array, group_sizes: jax.Array, gate: jax.Array, up: jax.Array,
                          down: jax.Array) -> jax.Array:
    """``grouped_swiglu`` as batched matmuls over fixed-size row tiles: each expert's rows start a new tile, so a
    tile holds one expert's rows (zero-padded) and is multiplied by that expert's gathered weights. Static shapes:
    ``rows // tile + E`` tiles always suffice (each expert wastes less than one tile)."""
    rows, hidden = x_sorted.shape
    num_experts = gate.shape[0]
    tile = min(128, max(8, -(-rows // num_experts // 8) * 8))  # about one tile per expert for small inputs
    num_tiles = rows // tile + num_experts
    padded = (group_sizes + tile - 1) // tile * tile
    start = jnp.cumsum(group_sizes) - group_sizes
    padded_start = jnp.cumsum(padded) - padded
    row_expert = jnp.searchsorted(jnp.cumsum(group_sizes), jnp.arange(rows), side="right")  # E past the groups
    valid = row_expert < num_experts
    row_expert = jnp.minimum(row_expert, num_experts - 1)
    slot = jnp.where(valid, padded_start[row_expert] + jnp.arange(rows) - start[row_expert], num_tiles * tile)
    tiles = jnp.zeros((num_tiles * tile, hidden), x_sorted.dtype).at[slot].set(x_sorted, mode="drop")
    tile_expert = jnp.searchsorted(jnp.cumsum(padded), jnp.arange(num_tiles) * tile, side="right")
    tile_expert = jnp.minimum(tile_expert, num_experts - 1)  # unused tiles hold zeros: any expert will do
    tiles = tiles.reshape(num_tiles, tile, hidden)
    dt = x_sorted.dtype
    h_gate = jnp.einsum("tmh,thi->tmi", tiles, gate.astype(dt)[tile_expert], preferred_element_type=jnp.float32)
    h_up = jnp.einsum("tmh,thi->tmi", tiles, up.astype(dt)[tile_expert], preferred_element_type=jnp.float32)
    out = jnp.einsum("tmi,tih->tmh", (jax.nn.silu(h_gate) * h_up).astype(dt), down.astype(dt)[tile_expert],
                     preferred_element_type=jnp.float32).astype(dt)
    return out.reshape(-1, hidden).at[slot].get(mode="fill", fill_value=0)


def local_experts(tokens: jax.Array, weights: jax.Array, experts: jax.Array, gate: jax.Array, up: jax.Array,
                  down: jax.Array, platform: str | None = None) -> jax.Array:
    """Every expert on this device: sort the (token, expert) assignments by expert, grouped matmuls, then the
    weighted sum per token. ``tokens [N, H]``, ``weights / experts [N, k]``; returns fp32 ``[N, H]``."""
    hidden, top_k = tokens.shape[-1], experts.shape[-1]
    flat_experts = experts.reshape(-1)
    order = jnp.argsort(flat_experts, stable=True)
    token_of = order // top_k
    group_sizes = jnp.bincount(flat_experts, length=gate.shape[0]).astype(jnp.int32)
    out_sorted = grouped_swiglu(tokens[token_of], group_sizes, gate, up, down, platform)
    # Undo the sort, weight each of the k expert outputs and sum them per token.
    per_assignment = jnp.zeros_like(out_sorted).at[order].set(out_sorted).reshape(-1, top_k, hidden)
    return jnp.einsum("nkh,nk->nh", per_assignment.astype(jnp.float32), weights)


class SparseMoE(nnx.Module):
    """Routed experts (softmax → top-k → renormalise) plus a sigmoid-gated shared expert."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, e, i = config.hidden_size, config.num_experts, config.moe_intermediate_size
        pdt = jnp.dtype(config.param_dtype)
        self.top_k = config.num_experts_per_tok
        self.normalize = config.norm_topk_prob
        self.router = make_param(rngs, (h, e), ("embed", None), pdt)
        self.experts_gate = make_param(rngs, (e, h, i), ("expert", "embed", "expert_mlp"), pdt)
        self.experts_up = make_param(rngs, (e, h, i), ("expert", "embed", "expert_mlp"), pdt)
        self.experts_down = make_param(rngs, (e, i, h), ("expert", "expert_mlp", "embed"), pdt)
        shared = config.shared_expert_intermediate_size
        self.shared_expert = nnx.data(MLP(h, shared, param_dtype=pdt, rngs=rngs) if shared else None)
        self.shared_expert_gate = nnx.data(make_param(rngs, (h, 1), ("embed", None), pdt) if shared else None)
        # Static hook: an ``qwen35_jax.parallel.moe_ep.ExpertParallel`` runs the routed experts across the mesh.
        self.expert_parallel = None

    def __call__(self, x: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, RouterStats]:
        batch, length, hidden = x.shape
        tokens = x.reshape(-1, hidden)
        logits = dense(tokens, self.router, "ne,ex->nx")  # model dtype, like the reference (spec §7.7)
        probs, weights, experts = route(logits, self.top_k, self.normalize)
        if self.expert_parallel is not None:
            routed, dropped = self.expert_parallel(
                x, weights.reshape(batch, length, -1), experts.reshape(batch, length, -1), self.experts_gate[...],
                self.experts_up[...], self.experts_down[...])
            routed = routed.reshape(-1, hidden)
        else:
            routed = local_experts(tokens, weights, experts, self.experts_gate[...], self.experts_up[...],
                                   self.experts_down[...]).astype(x.dtype)
            dropped = None

        if self.shared_expert is not None:
            shared_gate = jax.nn.sigmoid(dense(tokens, self.shared_expert_gate, "ne,eo->no"))
            routed = routed + shared_gate * self.shared_expert(tokens)

        stats = router_stats(probs, experts, token_mask.reshape(-1), dropped)
        return routed.reshape(batch, length, hidden), stats
