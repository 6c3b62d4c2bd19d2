"""The gated delta rule over a sequence split into contiguous shards along mesh axes (context parallelism,
numerics §11.1). Called inside ``jax.shard_map``; every function here sees one shard.

Over a shard the delta rule is affine in the state it receives, ``S_out = A · S_in + B`` (``A [dk, dk]``,
``B [dk, dv]`` per value head; numerics §2.5: every chunk maps ``S -> (e_C I − Kbᵀ W) S + Kbᵀ U``). So:

1. **Transition** (one core call): run the shard with values ``[v | 0]`` from the state ``[0 | I]``. The value
   columns are independent, so the final state is ``[B | A]``: the shard's own contribution and its map of the
   incoming state. A segment start inside the shard makes ``A`` exactly zero (the state is reset there).
2. **Exchange**: the shards compose their maps in order. ``scan``: an inclusive Hillis–Steele scan with
   ``ppermute`` (log₂ n rounds, each moving one ``(A, B)``); ``gather``: ``all_gather`` every ``(A, B)`` and compose
   locally (one round, n times the bytes). Shard 0 folds in the initial state (``A := 0, B := A S₀ + B``), so the
   composed ``B`` of shard i is the state leaving it; one more ``ppermute`` hands it to shard i + 1.
3. **Outputs** (one core call): the shard runs again from its incoming state.

A packed document that starts exactly at a shard's first token resets the state there: the shard ignores what it
receives (the segment id of the previous shard's last token travels with the state). The backward is JAX's
transpose of these steps: the cores' own VJPs, and each ``ppermute`` reversed, so state gradients flow from the
last shard to the first.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from qwen35_jax.parallel.runtime import EXCHANGES

Axes = tuple[str, ...]
Core = Callable[..., tuple[jax.Array, jax.Array]]


def shard_count(axes: Axes) -> int:
    """Number of shards along ``axes`` (inside ``shard_map``)."""
    return jax.lax.axis_size(axes) if axes else 1


def shift_from_previous(x: jax.Array, axes: Axes, count: int, distance: int = 1) -> jax.Array:
    """Shard i receives shard i − ``distance``'s ``x``; the first ``distance`` shards receive zeros."""
    return jax.lax.ppermute(x, axes, [(i, i + distance) for i in range(count - distance)])


def _compose(later: tuple[jax.Array, jax.Array], earlier: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The map ``S -> later(earlier(S))`` of two affine state maps ``(A, B)``, batched over [B, Hv]."""
    a_later, b_later = later
    a_earlier, b_earlier = earlier
    return a_later @ a_earlier, a_later @ b_earlier + b_later


def _inclusive_scan(a, b, axes: Axes, count: int, index: jax.Array) -> jax.Array:
    """``B`` of the composition of shards 0..i (log-depth: round d composes with shard i − 2^d)."""
    distance = 1
    while distance < count:
        earlier = tuple(shift_from_previous(x, axes, count, distance) for x in (a, b))
        composed = _compose((a, b), earlier)
        has_earlier = index >= distance
        a, b = (jnp.where(has_earlier, new, old) for new, old in zip(composed, (a, b), strict=True))
        distance *= 2
    return b


def _gathered_scan(a, b, axes: Axes, count: int, index: jax.Array) -> jax.Array:
    """``B`` of the composition of shards 0..i from every shard's map (one ``all_gather``, local composition)."""
    all_a, all_b = (jax.lax.all_gather(x, axes, tiled=False) for x in (a, b))
    state = jnp.zeros_like(b)
    out = state
    for shard in range(count):
        state = all_a[shard] @ state + all_b[shard]
        out = jnp.where(index == shard, state, out)
    return out


def context_parallel_core(core: Core, axes: Axes, exchange: str = "scan") -> Core:
    """``core`` (the contract of ``reference``) over the shards of ``axes``: the same contract on each shard's
    tokens, returning that shard's outputs and the state after its last token."""
    if exchange not in EXCHANGES:
        raise ValueError(f"gated_delta_rule: exchange={exchange!r} is invalid: choose one of {EXCHANGES}")

    def sharded(q, k, v, g, beta, initial_state=None, segment_ids=None):
        batch, _, h_v, d_v = v.shape
        d_k = q.shape[-1]
        count = shard_count(axes)
        index = jax.lax.axis_index(axes)

        # 1. The shard's affine map: values [v | 0] from the state [0 | I] end in [B | A].
        zeros_v = jnp.zeros((*v.shape[:3], d_k), v.dtype)
        identity = jnp.broadcast_to(jnp.eye(d_k, dtype=jnp.float32), (batch, h_v, d_k, d_k))
        start = jnp.concatenate([jnp.zeros((batch, h_v, d_k, d_v), jnp.float32), identity], axis=-1)
        _, ends = core(q, k, jnp.concatenate([v, zeros_v], axis=-1), g, beta, start, segment_ids)
        own, through = ends[..., :d_v], ends[..., d_v:]
        if initial_state is not None:  # shard 0 folds in the initial state: B := A S0 + B
            own = jnp.where(index == 0, through @ initial_state + own, own)

        # What the shard receives counts unless it is shard 0 (A := 0) or a document starts at its first token.
        continues = (index > 0)[None]
        if segment_ids is not None:
            previous_last = shift_from_previous(segment_ids[:, -1], axes, count)
            continues = continues & (segment_ids[:, 0] == previous_last)
        continues = continues[:, None, None, None]
        through = jnp.where(continues, through, 0.0)

        # 2. Compose the maps in shard order; B of the composition is the state leaving this shard.
        scan = _inclusive_scan if exchange == "scan" else _gathered_scan
        leaving = scan(through, own, axes, count, index)
        incoming = jnp.where(continues, shift_from_previous(leaving, axes, count), 0.0)
        if initial_state is not None:
            incoming = jnp.where(index == 0, initial_state, incoming)

        # 3. The shard's outputs from its incoming state.
        return core(q, k, v, g, beta, incoming, segment_ids)

    return sharded
