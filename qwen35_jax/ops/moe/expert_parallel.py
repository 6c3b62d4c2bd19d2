"""Expert parallelism: the routed experts of ``SparseMoE`` sharded over the mesh's expert axes, inside ``shard_map``.

Routing (router, softmax, top-k) stays in ``SparseMoE`` under GSPMD; this module moves each (token, expert)
assignment to the device owning the expert and the result back. Tokens enter sharded as the activation rules say
(``act_batch``, ``act_seq``; they must include the expert axes), expert weights enter sharded over ``expert`` and
``expert_mlp`` only (any fsdp sharding of their embed dim is gathered on the way in, and the gradient reduce-scattered
on the way out). ``expert_mlp`` sharding (tensor parallelism inside each expert) leaves partial sums that are added
with one ``psum`` after the combine.

Dispatches:

* ``local`` (mesh without an expert axis, tokens sharded): every device runs all experts on its own tokens with the
  single-device grouped matmuls (``grouped.local_experts``); no token crosses devices.
* ``dropless``: every device sorts its assignments by expert, ``ragged_all_to_all`` sends each expert's rows to its
  owner, which receives them already grouped by local expert (``ragged_plan``), runs grouped matmuls
  (``ragged_dot``) and sends the rows back the same way. The receive buffer is the worst case (every assignment of
  every peer: expert-axis size x local assignments), so nothing is ever dropped. XLA:CPU has no ragged_all_to_all:
  TPU/GPU only.
* ``ragged``: the same with a receive buffer of ``capacity_factor`` x local assignments rows (balanced routing needs
  1x); rows that would land past its end are not sent and count as dropped. Bounded memory, rare drops.
* ``capacity``: each device fills ``capacity`` slots per expert (assignment priority: all first choices, then all
  second choices, ... in token order), ``all_to_all`` exchanges the fixed-size buffers, grouped matmuls over the
  slots, ``all_to_all`` back. Assignments beyond the capacity are dropped (their expert output is 0) and counted.

An expert that receives no assignment only ever multiplies zero rows, so its weight gradients are exactly zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from qwen35_jax.config import ModelConfig
from qwen35_jax.ops.moe.grouped import grouped_swiglu, local_experts, swiglu_experts
from qwen35_jax.parallel.rules import Rule, as_axes, axes_size, spec_for
from qwen35_jax.parallel.runtime import Runtime

ragged_all_to_all = jax.lax.ragged_all_to_all  # module attribute so tests can substitute a CPU emulation


class RaggedPlan(NamedTuple):
    """Offsets and sizes of one ``ragged_all_to_all``, one slice per global expert (see its documentation)."""

    input_offsets: jax.Array
    send_sizes: jax.Array
    output_offsets: jax.Array
    recv_sizes: jax.Array


def _exclusive_cumsum(x: jax.Array, axis: int) -> jax.Array:
    return jnp.cumsum(x, axis=axis) - x


def ragged_plan(counts: jax.Array, me: jax.Array, buffer: int) -> tuple[RaggedPlan, RaggedPlan, jax.Array, jax.Array]:
    """Dispatch and return plans from ``counts [ep, ep, e_loc]``: rows source s sends to local expert j of device d.

    Senders hold their rows sorted by global expert ``d * e_loc + j``; a receiver lays rows out grouped by local
    expert, then by source, so its buffer feeds ``ragged_dot`` directly. Rows past the receiver's ``buffer`` rows are
    not sent (their expert output stays 0). Returns (dispatch, return, receiver group sizes, rows this device drops).
    """
    ep, _, e_loc = counts.shape
    per_expert = counts.sum(axis=0)  # [d, j] rows device d is sent for its local expert j
    start = _exclusive_cumsum(per_expert, 1)  # [d, j] where group j begins in d's buffer
    placed = start[None] + _exclusive_cumsum(counts, 0)  # [s, d, j] where s's rows land in d's buffer
    accepted = jnp.clip(buffer - placed, 0, counts)  # only the buffer's tail can overflow: groups stay contiguous
    placed = jnp.minimum(placed, buffer)  # empty slices past the end start at the end
    sent_from = _exclusive_cumsum(counts.reshape(ep, ep * e_loc), 1).reshape(counts.shape)  # [s, d, j] at s
    mine, to_me = accepted[me].reshape(-1), accepted[:, me].reshape(-1)
    dispatch = RaggedPlan(sent_from[me].reshape(-1), mine, placed[me].reshape(-1), to_me)
    back = RaggedPlan(placed[:, me].reshape(-1), to_me, sent_from[:, me].reshape(-1), mine)
    group_sizes = jnp.clip(buffer - start[me], 0, per_expert[me])
    return dispatch, back, group_sizes, jnp.sum(counts[me] - accepted[me])


def _ragged(tokens: jax.Array, experts: jax.Array, params: Sequence[jax.Array], axes: tuple[str, ...], ep: int,
            buffer: int, backend: str) -> tuple[jax.Array, jax.Array]:
    """Per-device body of the ragged dispatch; returns per-assignment outputs ``[n, k, H]`` and the dropped count."""
    n, hidden = tokens.shape
    k = experts.shape[1]
    e_loc = params[0].shape[0]
    flat = experts.reshape(-1)  # token-major: assignment a is (token a // k, choice a % k)
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=ep * e_loc).astype(jnp.int32)
    everyone = jax.lax.all_gather(counts, axes).reshape(ep, ep, e_loc)
    dispatch, back, group_sizes, dropped = ragged_plan(everyone, jax.lax.axis_index(axes), buffer)
    received = ragged_all_to_all(tokens[order // k], jnp.zeros((buffer, hidden), tokens.dtype), *dispatch,
                                 axis_name=axes)
    out = grouped_swiglu(received, group_sizes, *params, backend)
    returned = ragged_all_to_all(out, jnp.zeros((n * k, hidden), out.dtype), *back, axis_name=axes)
    per_assignment = jnp.zeros_like(returned).at[order].set(returned).reshape(n, k, hidden)
    return per_assignment, dropped


def _capacity(tokens: jax.Array, experts: jax.Array, params: Sequence[jax.Array], axes: tuple[str, ...], ep: int,
              capacity: int) -> tuple[jax.Array, jax.Array]:
    """Per-device body of the capacity dispatch; returns per-assignment outputs ``[n, k, H]`` and the dropped count."""
    n, hidden = tokens.shape
    k = experts.shape[1]
    e_loc = params[0].shape[0]
    num_experts = ep * e_loc
    flat = experts.T.reshape(-1)  # choice-major priority: assignment a is (choice a // n, token a % n)
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=num_experts)
    rank_sorted = jnp.arange(flat.size) - _exclusive_cumsum(counts, 0)[flat[order]]
    rank = jnp.zeros_like(flat).at[order].set(rank_sorted)  # position of each assignment in its expert's queue
    keep = rank < capacity
    slot = jnp.where(keep, flat * capacity + rank, num_experts * capacity)  # out of range = dropped
    send = jnp.zeros((num_experts * capacity, hidden), tokens.dtype).at[slot].set(tokens[jnp.arange(flat.size) % n],
                                                                                  mode="drop")
    received = jax.lax.all_to_all(send, axes, 0, 0, tiled=True)  # [(source, local expert, slot), H]
    # Every local expert has ep x capacity slots: plain batched matmuls, no grouping needed.
    out = swiglu_experts(received.reshape(ep, e_loc, capacity, hidden), *params).reshape(-1, hidden)
    returned = jax.lax.all_to_all(out, axes, 0, 0, tiled=True)  # [(global expert, slot), H]
    per_assignment = returned.at[slot].get(mode="fill", fill_value=0)
    return per_assignment.reshape(k, n, hidden).swapaxes(0, 1), jnp.sum(~keep).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class ExpertParallel:
    """``SparseMoE.expert_parallel``, chosen when the layer is built: ``(x, weights, experts, gate, up, down) ->
    (routed, dropped)``. Frozen and hashable: a static attribute of the module (part of its graphdef)."""

    mesh: Mesh
    rules: tuple[Rule, ...]
    dispatch: str  # "local" | "dropless" | "ragged" | "capacity"
    capacity_factor: float
    backend: str  # the target backend: picks the grouped-matmul kernel

    def specs(self, x_shape: Sequence[int | None], gate_shape: Sequence[int], down_shape: Sequence[int]
              ) -> tuple[P, P, P]:
        """Token, gate/up and down specs inside the shard_map; ValueError if the axes cannot express EP."""
        tokens = spec_for(("act_batch", "act_seq", None), x_shape, self.mesh, self.rules, "MoE tokens")
        gate = spec_for(("expert", None, "expert_mlp"), gate_shape, self.mesh, self.rules, "SparseMoE.experts_gate")
        down = spec_for(("expert", "expert_mlp", None), down_shape, self.mesh, self.rules, "SparseMoE.experts_down")
        token_axes = as_axes(tokens[0]) + as_axes(tokens[1])
        expert_axes, mlp_axes = as_axes(gate[0]), as_axes(gate[2])
        if not set(expert_axes) <= set(token_axes):
            raise ValueError(f"expert parallelism needs tokens sharded over the expert mesh axes {expert_axes}, but "
                             f"the rules shard them over {token_axes}: add {expert_axes} to the 'act_batch' rule")
        if set(mlp_axes) & set(token_axes):
            raise ValueError(f"the 'expert_mlp' rule shards expert weights over {mlp_axes}, which also split the "
                             f"tokens {token_axes}: use a mesh axis that does not shard tokens (e.g. 'tensor')")
        return tokens, gate, down

    def __call__(self, x: jax.Array, weights: jax.Array, experts: jax.Array, gate: jax.Array, up: jax.Array,
                 down: jax.Array) -> tuple[jax.Array, jax.Array]:
        token_spec, gate_spec, down_spec = self.specs(x.shape, gate.shape, down.shape)
        expert_axes, mlp_axes = as_axes(gate_spec[0]), as_axes(gate_spec[2])
        token_axes = as_axes(token_spec[0]) + as_axes(token_spec[1])
        ep = axes_size(self.mesh, expert_axes)
        num_experts, top_k = gate.shape[0], experts.shape[-1]
        local_tokens = x.shape[0] * x.shape[1] // axes_size(self.mesh, token_axes)
        assignments = local_tokens * top_k
        capacity = min(local_tokens, max(1, math.ceil(self.capacity_factor * assignments / num_experts)))
        buffer = ep * assignments if self.dispatch == "dropless" else min(
            ep * assignments, math.ceil(self.capacity_factor * assignments))

        def body(x, weights, experts, gate, up, down):
            batch, length, hidden = x.shape
            tokens, experts, weights = x.reshape(-1, hidden), experts.reshape(-1, top_k), weights.reshape(-1, top_k)
            if self.dispatch == "local":
                routed = local_experts(tokens, weights, experts, gate, up, down, self.backend)
                dropped = jnp.zeros((), jnp.int32)
            else:
                dispatch = functools.partial(_capacity, capacity=capacity) if self.dispatch == "capacity" else \
                    functools.partial(_ragged, buffer=buffer, backend=self.backend)
                per_assignment, dropped = dispatch(tokens, experts, (gate, up, down), expert_axes, ep)
                routed = jnp.einsum("nkh,nk->nh", per_assignment.astype(jnp.float32), weights)
            if mlp_axes:
                routed = jax.lax.psum(routed, mlp_axes)
            return routed.astype(x.dtype).reshape(batch, length, hidden), jax.lax.psum(dropped, token_axes)

        return jax.shard_map(body, mesh=self.mesh, in_specs=(token_spec,) * 3 + (gate_spec, gate_spec, down_spec),
                             out_specs=(token_spec, P()))(x, weights, experts, gate, up, down)


def expert_parallel_for(config: ModelConfig, runtime: Runtime) -> ExpertParallel | None:
    """The dispatch of ``config``'s MoE layers on ``runtime.mesh``; None without a mesh, for a dense model, or when
    neither tokens nor experts are sharded.

    Without expert axes the dispatch is ``local``; otherwise ``runtime.expert_dispatch="auto"`` picks dropless on a
    TPU/GPU backend and capacity on CPU (XLA:CPU lacks the ragged_all_to_all that dropless and ragged use). Raises
    ValueError (before anything compiles) when the experts do not divide over the expert axes or the token / expert
    axes disagree.
    """
    mesh, rules, dispatch = runtime.mesh, tuple(runtime.rules), runtime.expert_dispatch
    if mesh is None or not config.is_moe:
        return None
    gate_shape = (config.num_experts, config.hidden_size, config.moe_intermediate_size)
    expert_axes = as_axes(spec_for(("expert",), gate_shape[:1], mesh, rules, "SparseMoE.experts_gate")[0])
    token_spec = spec_for(("act_batch", "act_seq"), (None, None), mesh, rules, "MoE tokens")
    if not expert_axes:
        if not as_axes(token_spec[0]) + as_axes(token_spec[1]):
            return None
        dispatch = "local"
    elif dispatch == "auto":
        dispatch = "dropless" if runtime.is_accelerator else "capacity"
    elif dispatch in ("dropless", "ragged") and not runtime.is_accelerator:
        raise ValueError(f"config.mesh.expert_dispatch={dispatch!r} needs ragged_all_to_all, which the "
                         f"{runtime.backend!r} backend lacks: use 'capacity' (or 'auto') there")
    hook = ExpertParallel(mesh=mesh, rules=rules, dispatch=dispatch, capacity_factor=runtime.capacity_factor,
                          backend=runtime.backend)
    down_shape = (config.num_experts, config.moe_intermediate_size, config.hidden_size)
    hook.specs((None, None, config.hidden_size), gate_shape, down_shape)
    return hook
