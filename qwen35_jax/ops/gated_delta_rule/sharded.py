"""The gated delta rule as the Gated DeltaNet layer calls it, chosen once for a ``Runtime`` (``delta_rule_for``).

Both choices are frozen, hashable callables (static module attributes) with one signature::

    rule(q, k, v, g, beta, *, segment_ids, initial_state=None, output_final_state=False) -> (o, final_state | None)

* ``DeltaRule``: ``gated_delta_rule`` with q/k L2 norm, the resolved ``impl`` and the runtime's backend. XLA
  partitions it on a mesh like any other computation.
* ``ShardedDeltaRule``: the same inside ``jax.shard_map`` over the batch (``act_batch``), sequence (``act_seq``) and
  GDN head axes: how a Pallas kernel, an opaque custom call the SPMD partitioner cannot split, runs on a mesh, and
  how any core runs context-parallel. With a sequence axis of size > 1 every device holds a contiguous piece of the
  sequence and the shards pass the state along (``context_parallel``, numerics §11.1); otherwise the sequence stays
  whole on each device. The state ``[B, Hv, dk, dv]`` is sharded like the batch and heads.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from qwen35_jax.ops.gated_delta_rule.api import gated_delta_rule, resolve_impl
from qwen35_jax.ops.gated_delta_rule.chunked import CHUNK
from qwen35_jax.parallel.rules import Rule, as_axes, axes_size, spec_for
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.parallel.sharding import sequence_shards

Output = tuple[jax.Array, jax.Array | None]


@dataclasses.dataclass(frozen=True)
class DeltaRule:
    """``gated_delta_rule`` (q/k L2-normalised) with a resolved implementation for one backend."""

    impl: str
    backend: str
    sequence_axes: tuple[str, ...] = ()  # inside shard_map: the mesh axes the sequence is split over
    exchange: str = "scan"

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, *,
                 segment_ids: jax.Array, initial_state: jax.Array | None = None,
                 output_final_state: bool = False) -> Output:
        return gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                                output_final_state=output_final_state, use_qk_l2norm=True, impl=self.impl,
                                backend=self.backend, sequence_axes=self.sequence_axes, exchange=self.exchange)


@dataclasses.dataclass(frozen=True)
class ShardedDeltaRule:
    """``DeltaRule(impl, backend)`` per device inside ``shard_map``: batch over the ``act_batch`` mesh axes, value and
    key heads over the GDN head axes (value head j reads key head j // (Hv / Hk): splitting both head axes into equal
    contiguous parts keeps every pair on one device)."""

    mesh: Mesh
    rules: tuple[Rule, ...]
    impl: str
    backend: str
    exchange: str = "scan"

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array, *,
                 segment_ids: jax.Array, initial_state: jax.Array | None = None,
                 output_final_state: bool = False) -> Output:
        # A batch the data axes cannot split (a few prompts prefilled on many devices) is replicated, as in the
        # residual stream's constraint (parallel/sharding.py).
        rules = (*self.rules, ("act_batch", ()))
        batch, seq = spec_for(("act_batch", "act_seq"), q.shape[:2], self.mesh, rules, "gated delta rule tokens")
        heads = spec_for(("gdn_value_heads",), v.shape[2:3], self.mesh, self.rules, "gated delta rule heads")[0]
        spec_for(("gdn_key_heads",), k.shape[2:3], self.mesh, self.rules, "gated delta rule key heads")
        sequence_axes = as_axes(seq)
        check_sequence_split(q.shape[1], axes_size(self.mesh, sequence_axes))
        heads4, heads3, state = P(batch, seq, heads, None), P(batch, seq, heads), P(batch, heads, None, None)
        rule = DeltaRule(self.impl, self.backend, sequence_axes, self.exchange)
        arrays, in_specs = [q, k, v, g, beta, segment_ids], [heads4, heads4, heads4, heads3, heads3, P(batch, seq)]
        if initial_state is not None:
            arrays.append(initial_state)
            in_specs.append(state)

        def local(q, k, v, g, beta, segment_ids, initial_state=None):
            out, final = rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                              output_final_state=output_final_state)
            # Every shard's final state, stacked along the sequence axes; the last one is the sequence's.
            return (out, final[None]) if output_final_state else out

        out_specs = (heads4, P(seq, *state)) if output_final_state else heads4
        result = jax.shard_map(local, mesh=self.mesh, in_specs=tuple(in_specs), out_specs=out_specs,
                               check_vma=False)(*arrays)
        return (result[0], result[1][-1]) if output_final_state else (result, None)


def check_sequence_split(length: int, shards: int, what: str = "gated delta rule: sequence length") -> None:
    """A sequence split over ``shards`` devices must give each a whole number of 64-token chunks (``what`` names
    the length in the message: the op's argument or the config field)."""
    if shards > 1 and length % (shards * CHUNK):
        raise ValueError(f"{what} {length} is not a multiple of the sequence shards ({shards}) x the gated delta "
                         f"rule's chunk ({CHUNK}) = {shards * CHUNK}: choose data.seq_len a multiple of "
                         f"{shards * CHUNK} or a smaller mesh.sequence")


def delta_rule_for(impl: str, runtime: Runtime) -> DeltaRule | ShardedDeltaRule:
    """The rule a Gated DeltaNet layer with ``config.gdn_impl == impl`` runs under ``runtime``: ``impl`` resolved
    for ``runtime.backend`` (``auto``: Pallas on TPU/GPU, chunked on CPU), wrapped in ``shard_map`` when it is a
    Pallas kernel on a mesh or the mesh splits the sequence. A Pallas impl on a foreign backend is accepted here
    (shape-only uses such as parameter counts build any model) and refused when the rule runs."""
    resolved = resolve_impl(impl, runtime.backend, interpret=True)
    if runtime.mesh is not None and (resolved.startswith("pallas") or sequence_shards(runtime) > 1):
        return ShardedDeltaRule(runtime.mesh, tuple(runtime.rules), resolved, runtime.backend,
                                runtime.gdn_state_exchange)
    return DeltaRule(resolved, runtime.backend)
