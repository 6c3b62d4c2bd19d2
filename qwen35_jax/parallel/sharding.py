"""The residual-stream sharding constraint the decoder stack applies at every block boundary on a mesh."""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh, NamedSharding

from qwen35_jax.parallel.rules import ACTIVATION_AXES, Rule, spec_for
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
    # A batch the data axes cannot split (e.g. one prompt decoded on 8 devices) is replicated instead; the training
    # batch is checked against the data-parallel size before anything compiles, so it never takes this fallback.
    return ActivationSharding(runtime.mesh, (*runtime.rules, ("act_batch", ())))
