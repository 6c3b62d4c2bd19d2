"""Dense SwiGLU feed-forward (numerics §2.6); also the MoE shared expert."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen35_jax.model.params import dense, make_param


class MLP(nnx.Module):
    """``down(silu(gate(x)) * up(x))``, no biases; ``backend`` is the target it is built for (``Runtime.backend``)."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, param_dtype: jnp.dtype, backend: str,
                 rngs: nnx.Rngs):
        self.backend = backend
        self.gate_proj = make_param(rngs, (hidden_size, intermediate_size), ("embed", "mlp"), param_dtype)
        self.up_proj = make_param(rngs, (hidden_size, intermediate_size), ("embed", "mlp"), param_dtype)
        self.down_proj = make_param(rngs, (intermediate_size, hidden_size), ("mlp", "embed"), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = dense(x, self.gate_proj, "...e,em->...m", self.backend)
        hidden = jax.nn.silu(gate) * dense(x, self.up_proj, "...e,em->...m", self.backend)
        return dense(hidden, self.down_proj, "...m,me->...e", self.backend)
