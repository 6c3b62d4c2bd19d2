"""Pallas gated delta rule kernels (TPU Mosaic, GPU Triton) against the token recurrence.

A kernel runs compiled when the default backend is its own (``tools/gpu_check_gdn.sh`` runs the GPU cases on a GPU)
and in interpret mode otherwise (CI). Interpret mode spends its time compiling the interpreted kernels (~10-20 s per
shape on 2 cores), so each case below covers several features at once (ragged T, grouped heads, initial state,
segment resets, value tiles).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import mesh as mesh_lib  # AbstractDevice (AOT target description) is not public in jax 0.12
from jax.sharding import PartitionSpec as P

from qwen35_jax.ops.gated_delta_rule import chunk_math, pallas_gpu, pallas_tpu
from qwen35_jax.ops.gated_delta_rule.reference import recurrent_core

TOL = 5e-3
TOL_GATES = 2e-2  # gradients of g and beta
NAMES = ("q", "k", "v", "g", "beta", "initial_state")
BACKEND = jax.default_backend()
CORES = {
    "tpu": functools.partial(pallas_tpu.gated_delta_rule_core, interpret=BACKEND != "tpu"),
    "gpu": functools.partial(pallas_gpu.gated_delta_rule_core, interpret=BACKEND != "gpu"),
}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _l2_np(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softplus(x):
    return np.logaddexp(0.0, x)


def make_case(seed, batch, length, h_k, h_v, d_k, d_v, *, with_state=True, starts=None, dtype=jnp.float32):
    """Core-contract inputs (q, k L2-normalised, q scaled), segment ids with resets at ``starts``, cotangents.

    Drawn with numpy: jax.random would compile a sampler per shape, which costs more than the small kernels here.
    """
    rng = np.random.default_rng(seed)
    x = dict(
        q=_l2_np(rng.normal(size=(batch, length, h_k, d_k))) * d_k**-0.5,
        k=_l2_np(rng.normal(size=(batch, length, h_k, d_k))),
        v=rng.normal(size=(batch, length, h_v, d_v)),
        g=-_softplus(rng.normal(size=(batch, length, h_v)) - 1.0),
        beta=1.0 / (1.0 + np.exp(-rng.normal(size=(batch, length, h_v)))),
        initial_state=0.5 * rng.normal(size=(batch, h_v, d_k, d_v)) if with_state else None,
    )
    x = {n: None if a is None else jnp.asarray(a, dtype if n in ("q", "k", "v") else jnp.float32)
         for n, a in x.items()}
    segment_ids = None
    if starts is not None:
        ids = np.zeros((batch, length), np.int32)
        for row, row_starts in enumerate(starts):
            for s in row_starts:
                ids[row, s:] += 1
        segment_ids = jnp.asarray(ids)
    cotangents = tuple(jnp.asarray(rng.normal(size=shape), jnp.float32)
                       for shape in ((batch, length, h_v, d_v), (batch, h_v, d_k, d_v)))
    return x, segment_ids, cotangents


# Interpret mode is compile-bound; XLA's CPU backend optimisations cost more than they save at these sizes.
@functools.partial(jax.jit, static_argnums=0,
                   compiler_options={"xla_backend_optimization_level": 0} if BACKEND == "cpu" else None)
def outputs_and_grads(core, x, segment_ids, cotangents):
    def loss(x):
        o, s = core(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], segment_ids)
        return jnp.sum(o * cotangents[0]) + jnp.sum(s * cotangents[1]), (o, s)

    (_, (o, s)), grads = jax.value_and_grad(loss, has_aux=True)(x)
    return o, s, grads


def assert_matches_recurrence(core, x, segment_ids, cotangents):
    o, s, grads = outputs_and_grads(core, x, segment_ids, cotangents)
    ro, rs, rgrads = outputs_and_grads(recurrent_core, x, segment_ids, cotangents)
    errors = {"o": rel(o, ro), "final_state": rel(s, rs)}
    errors.update({f"d{n}": rel(grads[n], rgrads[n]) for n in NAMES if x[n] is not None})
    limits = {name: TOL_GATES if name in ("dg", "dbeta") else TOL for name in errors}
    assert all(errors[n] <= limits[n] for n in errors), errors
    return errors


# (B, T, Hk, Hv, dk, dv, block_dv, with_state, segment starts per batch row)
CASES = {
    # Grouped heads (Hv = 4 Hk), ragged T over 4 chunks, two value tiles, resets mid-chunk and at a chunk start
    # in batch row 0 and none in row 1.
    "t200_gqa4_state_resets_tiles": (2, 200, 1, 4, 16, 32, 16, True, [[5, 64, 130], []]),
    "t65_mha_zero_state": (1, 65, 2, 2, 16, 16, None, False, None),
    "t1_gqa4_state": (1, 1, 1, 4, 16, 16, None, True, None),
    "t63_mha_state_resets": (1, 63, 2, 2, 16, 16, None, True, [[1, 40]]),
    "t64_gqa4_state_reset_at_end": (1, 64, 1, 4, 16, 16, None, True, [[63]]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", list(CORES))
def test_kernel_matches_recurrence(backend, case):
    batch, length, h_k, h_v, d_k, d_v, block_dv, with_state, starts = CASES[case]
    x, segment_ids, cot = make_case(0, batch, length, h_k, h_v, d_k, d_v, with_state=with_state, starts=starts)
    core = functools.partial(CORES[backend], block_dv=block_dv)
    assert_matches_recurrence(core, x, segment_ids, cot)


@pytest.mark.parametrize("backend", list(CORES))
def test_compiled_kernel_at_model_head_dim(backend):
    """dk = dv = 128, T = 2000 (ragged), Hv = 4 Hk, two resets: the model's shape, compiled on the kernel's own
    backend only (interpreted it takes many minutes on 2 CPU cores; the cases above cover interpret mode in CI)."""
    if backend != BACKEND:
        pytest.skip(f"needs a {backend} backend to run compiled (default backend: {BACKEND})")
    x, segment_ids, cot = make_case(3, 1, 2000, 4, 16, 128, 128, starts=[[700, 1500]])
    print("relative errors vs recurrence:", assert_matches_recurrence(CORES[backend], x, segment_ids, cot))


def test_gpu_kernels_at_model_head_dim_interpreted():
    """dk = dv = 128 in interpret mode (CI): two 64-wide value tiles, grouped heads, an initial state, a reset inside
    the second chunk and a ragged last chunk -- the model's head shape through every phase of the GPU kernels."""
    x, segment_ids, cot = make_case(8, 1, 130, 1, 2, 128, 128, starts=[[70]])
    assert_matches_recurrence(functools.partial(pallas_gpu.gated_delta_rule_core, interpret=True), x, segment_ids,
                              cot)


def test_tpu_lane_dense_layout_matches_recurrence():
    """dk = 128 and 128-wide value tiles: the production layout (the [B, T, H*d] view, no head transposes)."""
    x, segment_ids, cot = make_case(1, 1, 70, 1, 2, 128, 256, starts=[[33]])
    assert_matches_recurrence(functools.partial(CORES["tpu"], block_dv=128), x, segment_ids, cot)


@pytest.mark.parametrize("backend", list(CORES))
def test_bf16_inputs_forward(backend):
    """bf16 q/k/v (bf16 matmul operands, fp32 accumulation) stay close to the fp32 recurrence on the same values."""
    x, segment_ids, _ = make_case(2, 1, 130, 1, 2, 16, 16, starts=[[70]], dtype=jnp.bfloat16)
    o, s = jax.jit(CORES[backend])(x["q"], x["k"], x["v"], x["g"], x["beta"], x["initial_state"], segment_ids)
    x32 = {n: None if a is None else a.astype(jnp.float32) for n, a in x.items()}
    ro, rs = recurrent_core(x32["q"], x32["k"], x32["v"], x32["g"], x32["beta"], x32["initial_state"], segment_ids)
    assert rel(o, ro) < 2e-2 and rel(s, rs) < 2e-2, (rel(o, ro), rel(s, rs))


def _chunk_inputs(seed, starts, d_k=16, d_v=8):
    rng = np.random.default_rng(seed)
    c = chunk_math.CHUNK
    reset = np.zeros((1, c))
    reset[0, list(starts)] = 1.0
    arrays = (
        _l2_np(rng.normal(size=(c, d_k))) * d_k**-0.5,  # q
        _l2_np(rng.normal(size=(c, d_k))),  # k
        rng.normal(size=(c, d_v)),  # v
        rng.normal(size=(d_k, d_v)),  # incoming state
        np.cumsum(-_softplus(rng.normal(size=(1, c)) - 1.0), axis=1),  # gamma
        1.0 / (1.0 + np.exp(-rng.normal(size=(1, c)))),  # beta
        np.cumsum(reset, axis=1),  # in-chunk segment index
    )
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


@pytest.mark.parametrize("starts", [(), (0, 17, 63), (30,)])
def test_chunk_backward_is_the_transpose_of_chunk_forward(starts):
    """The hand-derived chunk backward equals autodiff of the chunk forward (plain jnp, no Pallas)."""
    q, k, v, s, gam, beta, seg = _chunk_inputs(3, starts)
    rng = np.random.default_rng(4)
    do = jnp.asarray(rng.normal(size=(q.shape[0], v.shape[1])), jnp.float32)
    ds_next = jnp.asarray(rng.normal(size=s.shape), jnp.float32)

    @jax.jit
    def autodiff_and_kernel_math(q, k, v, s, gam, beta, seg, do, ds_next):
        _, vjp = jax.vjp(lambda *a: chunk_math.chunk_forward(*a, seg), q, k, v, s, gam, beta)
        return vjp((do, ds_next)), chunk_math.chunk_backward(q, k, v, s, do, ds_next, gam, beta, seg)

    want, got = autodiff_and_kernel_math(q, k, v, s, gam, beta, seg, do, ds_next)
    want = dict(zip(("dq", "dk", "dv", "ds", "dgam", "dbeta"), want, strict=True))
    got = got._asdict()
    errors = {n: rel(got[n], want[n]) for n in want if float(jnp.linalg.norm(want[n])) > 0}
    assert all(e < 1e-5 for e in errors.values()), errors
    if 0 in starts:  # a reset at the chunk's first token cuts the incoming state off entirely
        assert float(jnp.abs(got["ds"]).max()) == 0.0


def _neumann_product_sizes(a):
    """Largest partial-product entry of (I - A)(I + A^2)(I + A^4)... in float64, i.e. the cancellation it needs."""
    power, partial = -a, np.eye(a.shape[0]) - a
    peak = np.abs(partial).max()
    while np.abs(power).max() > 0:
        power = power @ power
        partial = partial @ (np.eye(a.shape[0]) + power)
        peak = max(peak, np.abs(partial).max())
    return peak


@pytest.mark.parametrize("kind", ["parallel_keys", "realistic", "strong_beta"])
def test_unit_lower_inverse_is_accurate_in_fp32(kind):
    """(I + A)^-1 in fp32 matches float64 even where a truncated Neumann product would need ~1e17 cancellation."""
    c = chunk_math.CHUNK
    rng = np.random.default_rng(5)
    keys = rng.normal(size=(c, 128))
    if kind == "parallel_keys":  # beta = 1, identical keys, no decay: A = strictly lower all-ones
        keys[:] = keys[0]
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    beta = {"parallel_keys": np.ones(c), "realistic": rng.uniform(0, 1, c), "strong_beta": rng.uniform(1.5, 2, c)}[kind]
    gam = np.cumsum(-rng.uniform(0, 0.05, c)) if kind != "parallel_keys" else np.zeros(c)
    a = np.tril(beta[:, None] * (keys @ keys.T) * np.exp(gam[:, None] - gam[None, :]), -1)
    want = np.linalg.inv(np.eye(c) + a)
    got = np.asarray(jax.jit(chunk_math.unit_lower_inverse)(jnp.asarray(a, jnp.float32)), np.float64)
    assert np.isfinite(got).all()
    assert rel(got, want) < 1e-5, rel(got, want)
    if kind == "parallel_keys":
        assert _neumann_product_sizes(a) > 1e15  # the case a power-series inverse cannot survive in fp32


@pytest.mark.parametrize(
    "core,kwargs,message",
    [
        (pallas_tpu.gated_delta_rule_core, dict(block_dv=12), "block_dv=12"),
        (pallas_gpu.gated_delta_rule_core, dict(block_dv=12), "block_dv=12"),
        (pallas_gpu.gated_delta_rule_core, dict(block_dv=8), "block_dv"),
    ],
)
def test_bad_tile_is_rejected(core, kwargs, message):
    x, segment_ids, _ = make_case(6, 1, 8, 1, 1, 16, 16)
    with pytest.raises(ValueError, match=message):  # raised while tracing, before any kernel runs
        jax.eval_shape(functools.partial(core, interpret=True, **kwargs), *(x[n] for n in NAMES), segment_ids)


def test_gpu_rejects_dims_triton_cannot_tile():
    x, segment_ids, _ = make_case(6, 1, 8, 1, 1, 24, 16)
    with pytest.raises(ValueError, match="dk=24"):
        jax.eval_shape(CORES["gpu"], *(x[n] for n in NAMES), segment_ids)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_gpu_kernels_lower_to_triton():
    """Forward and backward lower to Triton IR for an abstract H100 at a realistic shape (no GPU needed)."""
    h100 = mesh_lib.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    b, t, h_k, h_v, d = 1, 4096, 4, 16, 128
    bf16, f32 = jnp.bfloat16, jnp.float32
    shapes = [((b, t, h_k, d), bf16)] * 2 + [((b, t, h_v, d), bf16), ((b, t, h_v), f32), ((b, t, h_v), f32),
                                             ((b, h_v, d, d), f32), ((b, t), jnp.int32)]
    args = [jax.ShapeDtypeStruct(s, dt) for s, dt in shapes]

    def loss(*a):
        o, s = pallas_gpu.gated_delta_rule_core(*a)
        return jnp.sum(o) + jnp.sum(s)

    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=h100)):
        lowered = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)))).trace(*args)
        text = lowered.lower(lowering_platforms=("cuda",)).as_text()
    # forward: prepare, state walk, output; backward: prepare, state walk, local dVn, reverse walk, local gradients
    assert text.count("__gpu$xla.gpu.triton") == 8


def test_tpu_kernel_inside_shard_map():
    """Batch sharded over 2 CPU devices (check_vma on), zero initial state created inside the shard: the kernel
    outputs declare their varying axes and the gradients match the unsharded recurrence. (GPU interpret mode is left
    out: jax 0.12's HLO interpreter itself fails the varying-axes check of its internal loop inside shard_map.)"""
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
    x, segment_ids, cot = make_case(7, 2, 70, 1, 2, 16, 16, starts=[[30], []])

    def sharded(q, k, v, g, beta, segment_ids):
        return CORES["tpu"](q, k, v, g, beta, None, segment_ids)

    core = jax.shard_map(sharded, mesh=mesh, in_specs=P("data"), out_specs=P("data"))
    x["initial_state"] = None
    o, s, grads = outputs_and_grads(lambda q, k, v, g, beta, _, seg: core(q, k, v, g, beta, seg), x, segment_ids, cot)
    ro, rs, rgrads = outputs_and_grads(recurrent_core, x, segment_ids, cot)
    errors = {"o": rel(o, ro), "final_state": rel(s, rs), **{n: rel(grads[n], rgrads[n]) for n in NAMES[:5]}}
    assert all(e < TOL for e in errors.values()), errors


@pytest.mark.parametrize(
    "device_kind,d_v,want", [("TPU v6 lite", 256, 256), ("TPU v6 lite", 128, 128), ("TPU v5 lite", 256, 128),
                             ("TPU v5", 384, 128), ("TPU v5 lite", 96, 96)],
)
def test_tpu_value_tile_follows_the_target_generation(device_kind, d_v, want):
    target = mesh_lib.AbstractDevice(device_kind=device_kind, num_cores=1, platform="tpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=target)):
        assert pallas_tpu.default_block_dv(d_v) == want
    assert pallas_tpu.default_block_dv(d_v) == (128 if d_v % 128 == 0 else d_v)  # CPU: the default
