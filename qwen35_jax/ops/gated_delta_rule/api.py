"""Public entry point of the gated delta rule: validation, fp32 pre-processing (numerics §2.4) and dispatch to a core.

Cores (same contract, see ``reference``): ``recurrent`` (token scan, the reference), ``chunked`` (WY/UT transform in
XLA with a hand-written VJP, the CPU default), ``pallas_tpu`` / ``pallas_gpu`` (kernels, imported lazily).

The target backend is an argument (``backend``; the model passes the one it was built for): ``impl="auto"`` resolves
against it and the chunked core sizes its work for it, so AOT-compiling for a TPU on a CPU host traces what the TPU
runs. ``None`` means ``jax.default_backend()``.
"""

from __future__ import annotations

import functools
import importlib

import jax
import jax.numpy as jnp

from qwen35_jax.ops.gated_delta_rule.context_parallel import context_parallel_core

__all__ = ["IMPLS", "gated_delta_rule", "resolve_impl"]

IMPLS = ("auto", "recurrent", "chunked", "pallas_tpu", "pallas_gpu")
L2NORM_EPS = 1e-6
# What ``impl="auto"`` runs per backend: the fastest core measured correct there (README "Gated delta rule"). On a GPU
# that is the XLA ``chunked`` core: the only H200 measurement of ``pallas_gpu`` is of its previous one-kernel design
# (forward 2.6x slower than ``chunked``, backward over the shared-memory limit at dk = 128); the phased kernels are
# opt-in (``impl="pallas_gpu"``) until ``tools/gpu_check_gdn.sh`` has measured them.
AUTO_IMPL = {"tpu": "pallas_tpu", "cpu": "chunked", "gpu": "chunked", "cuda": "chunked", "rocm": "chunked"}
# Backend names (jax.default_backend()) each Pallas core can run on without interpret mode.
_PALLAS_BACKENDS = {"pallas_tpu": ("tpu",), "pallas_gpu": ("gpu", "cuda", "rocm")}


def l2norm(x: jax.Array) -> jax.Array:
    """x / sqrt(sum(x²) + 1e-6) over the last axis (eps inside the rsqrt, as HF / FLA)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2NORM_EPS)


def prepare_qk(q: jax.Array, k: jax.Array, scale: float | None, use_qk_l2norm: bool) -> tuple[jax.Array, jax.Array]:
    """fp32 cast, optional L2 norm, then ``q *= scale`` (default ``dk ** -0.5``). Shared with the decode step."""
    q = q.astype(jnp.float32)
    k = k.astype(jnp.float32)
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return q * scale, k


def check_float(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"gated_delta_rule: {name} must be a floating dtype, got {x.dtype}")


def check_heads(h_k: int, h_v: int) -> None:
    if h_k < 1 or h_v % h_k != 0:
        raise ValueError(
            f"gated_delta_rule: value heads ({h_v}) must be a multiple of key heads ({h_k}); "
            "value head j reads key head j // (Hv // Hk)"
        )


def check_shape(name: str, x, expected: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"gated_delta_rule: {name} must have shape {layout} = {tuple(expected)}, got {tuple(x.shape)}")


def _validate(q, k, v, g, beta, initial_state, segment_ids, impl) -> None:
    if impl not in IMPLS:
        raise ValueError(f"gated_delta_rule: unknown impl {impl!r}; expected one of {IMPLS}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"gated_delta_rule: {name} must be rank 4 [B, T, H, D], got shape {tuple(x.shape)}")
    batch, length, h_k, d_k = q.shape
    check_shape("k", k, q.shape, "[B, T, Hk, dk] (same as q)")
    if v.shape[:2] != (batch, length):
        raise ValueError(f"gated_delta_rule: v must be [B, T, Hv, dv] with B, T = {(batch, length)}, got {v.shape}")
    h_v, d_v = v.shape[2], v.shape[3]
    check_heads(h_k, h_v)
    check_shape("g", g, (batch, length, h_v), "[B, T, Hv]")
    check_shape("beta", beta, (batch, length, h_v), "[B, T, Hv]")
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        check_float(name, x)
    if initial_state is not None:
        check_shape("initial_state", initial_state, (batch, h_v, d_k, d_v), "[B, Hv, dk, dv]")
        check_float("initial_state", initial_state)
    if segment_ids is not None:
        check_shape("segment_ids", segment_ids, (batch, length), "[B, T]")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise ValueError(f"gated_delta_rule: segment_ids must be an integer array, got {segment_ids.dtype}")


def resolve_impl(impl: str, backend: str | None, interpret: bool = False) -> str:
    """Map ``auto`` to ``backend``'s implementation (None: the default backend) and refuse a Pallas core on a foreign
    backend unless ``interpret``."""
    backend = backend or jax.default_backend()
    if impl == "auto":
        return AUTO_IMPL.get(backend, "chunked")
    if impl in _PALLAS_BACKENDS and backend not in _PALLAS_BACKENDS[impl] and not interpret:
        raise ValueError(
            f"gated_delta_rule: impl={impl!r} needs a {'/'.join(_PALLAS_BACKENDS[impl])} backend but the target "
            f"backend is {backend!r}; pass interpret=True to emulate the kernel, or use impl='chunked'"
        )
    return impl


def _core(impl: str, backend: str, interpret: bool):
    if impl == "recurrent":
        from qwen35_jax.ops.gated_delta_rule.reference import recurrent_core

        return recurrent_core
    if impl == "chunked":
        from qwen35_jax.ops.gated_delta_rule.chunked import chunked_core

        return functools.partial(chunked_core, backend=backend)
    module_name = f"qwen35_jax.ops.gated_delta_rule.{impl}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"gated_delta_rule: impl={impl!r} is not available ({module_name} is missing)") from err

    def core(q, k, v, g, beta, initial_state, segment_ids):
        return module.gated_delta_rule_core(q, k, v, g, beta, initial_state, segment_ids, interpret=interpret)

    return core


def gated_delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    g: jax.Array,
    beta: jax.Array,
    *,
    scale: float | None = None,
    initial_state: jax.Array | None = None,
    output_final_state: bool = False,
    segment_ids: jax.Array | None = None,
    use_qk_l2norm: bool = True,
    impl: str = "auto",
    backend: str | None = None,
    interpret: bool = False,
    sequence_axes: tuple[str, ...] = (),
    exchange: str = "scan",
) -> tuple[jax.Array, jax.Array | None]:
    """Gated delta rule over a sequence (numerics §2.4).

    Args:
      q, k: ``[B, T, Hk, dk]``.  v: ``[B, T, Hv, dv]`` with ``Hv`` a multiple of ``Hk`` (value head ``j`` uses key
        head ``j // (Hv // Hk)``; q/k are never repeated).  g: ``[B, T, Hv]`` log-decay (<= 0).  beta: ``[B, T, Hv]``.
      scale: query scale, default ``dk ** -0.5``.
      initial_state: ``[B, Hv, dk, dv]`` (fp32 recommended) or None for zeros.
      output_final_state: also return the fp32 state after the last token (else None).
      segment_ids: ``[B, T]`` int; the state resets wherever the id changes (packed documents).
      use_qk_l2norm: L2-normalise q and k (eps 1e-6 inside the rsqrt) before scaling.
      impl: "auto" (``AUTO_IMPL``: Pallas on TPU, chunked on CPU and GPU), "recurrent", "chunked", "pallas_tpu" or
        "pallas_gpu".
      backend: the target backend ("cpu", "gpu", "tpu"; None: ``jax.default_backend()``) that ``impl="auto"`` and
        the chunked core's work size are chosen for.
      interpret: run a Pallas core in interpret mode (allows it on any backend).
      sequence_axes: mesh axes the sequence is split over, in order (context parallelism, numerics §11.1; call
        inside ``jax.shard_map``): the arrays are this shard's contiguous tokens, ``initial_state`` enters the first
        shard and ``final_state`` is the state after this shard's last token.
      exchange: how the shards compose their state maps: "scan" (log-depth ``ppermute``) or "gather".

    Returns:
      ``(o, final_state)``: o ``[B, T, Hv, dv]`` in v's dtype; final_state fp32 ``[B, Hv, dk, dv]`` or None.
    """
    _validate(q, k, v, g, beta, initial_state, segment_ids, impl)
    backend = backend or jax.default_backend()
    core = _core(resolve_impl(impl, backend, interpret), backend, interpret)
    if sequence_axes:
        core = context_parallel_core(core, tuple(sequence_axes), exchange)
    out_dtype = v.dtype
    q, k = prepare_qk(q, k, scale, use_qk_l2norm)
    v, g, beta = (x.astype(jnp.float32) for x in (v, g, beta))
    if initial_state is not None:
        initial_state = initial_state.astype(jnp.float32)
    o, final_state = core(q, k, v, g, beta, initial_state, segment_ids)
    return o.astype(out_dtype), (final_state if output_final_state else None)
