"""Parameter creation and the compute-dtype matmul every layer uses.

Every parameter carries its logical axis names (``out_sharding`` metadata, DESIGN §3); the mesh rules that map them
to devices live in ``qwen35_jax.parallel``. Sharding is applied later, so parameters are created unsharded here
(``eager_sharding=False``).
"""

from __future__ import annotations

import functools
import math
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


def dense(x: jax.Array, kernel: nnx.Param | jax.Array, equation: str, backend: str) -> jax.Array:
    """``einsum(equation, x, kernel)`` in the activation dtype (weights cast from master dtype, fp32 accumulate).

    ``backend`` is the target the calling module was built for (``Runtime.backend``). On ``"cpu"`` a projection
    ``rows + contracted -> rows + new`` runs as one [rows, K] x [K, N] matmul: XLA:CPU's backward of the multi-axis
    einsum writes the output cotangent transposed ([N, rows]) before the weight-gradient dot, which made a SwiGLU
    MLP's forward+backward ~1.5x slower (batch 4 x 512, hidden 256 -> 768). Elsewhere the einsum stays as written,
    so sharded axes keep their own dimensions.
    """
    w = kernel[...] if isinstance(kernel, nnx.Variable) else kernel
    w = w.astype(x.dtype)
    contracted = _flat_contraction(equation) if backend == "cpu" else None
    if contracted is None:
        return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32).astype(x.dtype)
    rows, new = x.shape[: x.ndim - contracted], w.shape[contracted:]
    size = math.prod(w.shape[:contracted])
    y = jnp.dot(x.reshape(-1, size), w.reshape(size, -1), preferred_element_type=jnp.float32)
    return y.reshape(*rows, *new).astype(x.dtype)


@functools.cache
def _flat_contraction(equation: str) -> int | None:
    """Number of contracted axes when ``equation`` is ``rows + C, C + new -> rows + new`` (C the contracted axes,
    trailing in x and leading in the kernel, same order); None for any other einsum."""
    inputs, _, out = equation.replace(" ", "").partition("->")
    lhs, _, rhs = inputs.partition(",")
    lhs, out = lhs.replace("...", "."), out.replace("...", ".")
    contracted = "".join(c for c in rhs if c not in out)
    new = rhs[len(contracted):]
    if not contracted or not lhs.endswith(contracted) or not out.endswith(new) or rhs != contracted + new:
        return None
    rows = lhs[: len(lhs) - len(contracted)]
    return len(contracted) if out == rows + new and not set(rows) & set(rhs) else None


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)
