"""Parameter creation and the compute-dtype matmul every layer uses.

Every parameter carries its logical axis names (``out_sharding`` metadata, DESIGN §3); the mesh rules that map them
to devices live in ``qwen35_jax.parallel``. Sharding is applied later, so parameters are created unsharded here
(``eager_sharding=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

DEFAULT_STDDEV = 0.02  # HF ``initializer_range``


def normal_init(stddev: float = DEFAULT_STDDEV) -> Initializer:
    return jax.nn.initializers.normal(stddev)


def constant_init(value: float) -> Initializer:
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


def make_param(rngs: nnx.Rngs, shape: Sequence[int], axes: Sequence[str | None], dtype: jnp.dtype,
               init: Initializer | None = None) -> nnx.Param:
    """A parameter of ``shape`` annotated with logical ``axes`` (one name per dimension)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match parameter shape {tuple(shape)}")
    init = init or normal_init()
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


def dense(x: jax.Array, kernel: nnx.Param | jax.Array, equation: str) -> jax.Array:
    """``einsum(equation, x, kernel)`` in the activation dtype (weights cast from master dtype, fp32 accumulate)."""
    w = kernel[...] if isinstance(kernel, nnx.Variable) else kernel
    return jnp.einsum(equation, x, w.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)
