"""The residual-stream sharding constraint the decoder stack applies at every block boundary on a mesh, and how
many ways it splits the sequence."""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding

from qwen35_jax.parallel.rules import ACTIVATION_AXES, Rule, axes_size, spec_for
from qwen35_jax.parallel.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """``x [B, T, H] -> x`` constrained to (act_batch, act_seq, act_embed); a static ``DecoderStack`` attribute."""

    mesh: Mesh
    rules: tuple[Rule, ...]

    def __call__(self, x: jax.Array) -> jax.Array:
        spec = spec_for(ACTIVATION_AXES, x.shape, self.mesh, self.rules, "residual stream")
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


def activation_sharding_for(runtime: Runtime) -> ActivationSharding | None:
    """The constraint for ``runtime``'s mesh; None without a mesh (one device: nothing to constrain)."""
    if runtime.mesh is None:
        return None
    # A batch the data axes cannot split (e.g. one prompt decoded on 8 devices), or a sequence the sequence axes
    # cannot (a decode step's single token), is replicated instead; the training batch is checked against the mesh
    # before anything compiles, so it never takes these fallbacks.
    return ActivationSharding(runtime.mesh, (*runtime.rules, ("act_batch", ()), ("act_seq", ())))


def sequence_shards(runtime: Runtime) -> int:
    """How many devices the residual stream's sequence dimension is split over under ``runtime`` (1: unsplit):
    the size of the mesh axes the ``act_seq`` rule names (context parallelism, numerics §11)."""
    if runtime.mesh is None:
        return 1
    seq = spec_for(("act_batch", "act_seq"), (None, None), runtime.mesh, runtime.rules, "sequence")[1]
    return axes_size(runtime.mesh, seq)
