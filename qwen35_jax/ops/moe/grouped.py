"""The routed experts' SwiGLU on one device: batched matmuls over equal-size groups (``swiglu_experts``) and
grouped matmuls over rows sorted by expert (``grouped_swiglu``; ``local_experts`` sorts, runs and combines).

``backend`` is the target the caller was built for (``Runtime.backend``): it picks ``ragged_dot`` (grouped-matmul
kernels on TPU / GPU) or, on CPU, where XLA runs ``ragged_dot`` ~5x slower than batched matmuls of the same work,
fixed-size row tiles (``_tiled_grouped_swiglu``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def swiglu_experts(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """SwiGLU of ``x [..., E, n, H]`` with expert e's weights on slice e (batched matmuls; fp32 accumulation)."""
    dt = x.dtype
    h_gate = jnp.einsum("...enh,ehi->...eni", x, gate.astype(dt), preferred_element_type=jnp.float32)
    h_up = jnp.einsum("...enh,ehi->...eni", x, up.astype(dt), preferred_element_type=jnp.float32)
    hidden = (jax.nn.silu(h_gate) * h_up).astype(dt)
    return jnp.einsum("...eni,eih->...enh", hidden, down.astype(dt), preferred_element_type=jnp.float32).astype(dt)


def grouped_swiglu(x_sorted: jax.Array, group_sizes: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                   backend: str) -> jax.Array:
    """SwiGLU of each row with its expert's weights; rows are sorted by expert, ``group_sizes[e]`` rows each (rows
    past ``sum(group_sizes)`` give 0). ``backend`` picks the kernel (see the module docstring)."""
    if backend == "cpu":
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
                  down: jax.Array, backend: str) -> jax.Array:
    """Every expert on this device: sort the (token, expert) assignments by expert, grouped matmuls, then the
    weighted sum per token. ``tokens [N, H]``, ``weights / experts [N, k]``; returns fp32 ``[N, H]``."""
    hidden, top_k = tokens.shape[-1], experts.shape[-1]
    flat_experts = experts.reshape(-1)
    order = jnp.argsort(flat_experts, stable=True)
    token_of = order // top_k
    group_sizes = jnp.bincount(flat_experts, length=gate.shape[0]).astype(jnp.int32)
    out_sorted = grouped_swiglu(tokens[token_of], group_sizes, gate, up, down, backend)
    # Undo the sort, weight each of the k expert outputs and sum them per token.
    per_assignment = jnp.zeros_like(out_sorted).at[order].set(out_sorted).reshape(-1, top_k, hidden)
    return jnp.einsum("nkh,nk->nh", per_assignment.astype(jnp.float32), weights)
