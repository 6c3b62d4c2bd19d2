"""Gated delta rule as Pallas GPU kernels (Triton lowering), forward and backward (numerics §2.5; math: ``chunk_math``).

GPU thread blocks have no sequential grid axis, so each program owns one (batch, value head, value tile) and walks
the chunks itself in a ``fori_loop`` with the fp32 state [dk, block_dv] as the loop carry (registers / shared
memory). Three ``pallas_call``s, as on TPU: forward (o, final state), a state pass emitting the state entering every
chunk (recomputed for the backward pass; only the inputs are saved between forward and backward) and a backward
pass walking the chunks in reverse with dS as the carry.

q and k are addressed at their key head (h // r) by the BlockSpec index map; repeats are never materialised.
Sequence arrays use the free [B, T, H·d] view. Triton needs power-of-two tensor sizes and dot operands of at least
16 per side, hence the dk / dv / block_dv checks below.

fp32 matmuls run as 3-pass TF32 on the tensor cores (``DotAlgorithmPreset.TF32_TF32_F32_X3``, about fp32 accuracy)
when compiled. ``Precision.HIGHEST`` lowers to Triton's ``ieee`` dots, which Triton writes out as scalar FMAs
(22k-49k per kernel): on an H200 host the forward took 31 s to compile at dk = dv = 16 and the forward+backward
kernels did not compile within a minute at dk = dv = 128. Offline Triton 3.6 builds for sm_90 of these kernels
(2 shared cores, ~4x slower than that host): dk = dv = 16 forward / backward 129 s / 345 s with HIGHEST against 9 s /
18 s with 3-pass TF32; dk = dv = 128 forward 375 s against 26 s. Plain TF32 compiles faster still, but its dk = 128
backward needs 304 KiB of shared memory (the H100/H200 block limit is 227 KiB; 3-pass TF32 needs 224 KiB). Every
variant still uses 255 registers and spills: the tile sizes below are untuned. Interpret mode keeps HIGHEST (XLA:CPU
has no TF32 algorithms).

Jax 0.12 marks the Pallas Triton backend deprecated in favour of Mosaic GPU; Triton is used because its lowering
accepts the same generic array code as the TPU kernels (``chunk_math``). ``tests/ops/test_gdn_pallas.py`` runs the
kernels in interpret mode in CI (and compiled on a GPU) and lowers them to Triton IR for an abstract H100;
``tools/gpu_check_gdn.sh`` is the check to run on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from qwen35_jax.ops.gated_delta_rule.chunk_math import (
    CHUNK,
    KernelDims,
    Packed,
    Partials,
    chunk_backward,
    chunk_forward,
    chunked_core,
    fp32_dot_precision,
    out_struct,
    value_tiles,
)

# Value tile per program: a [dk, 64] fp32 state plus [64, 64] chunk intermediates keep register pressure moderate
# with 4 warps (fla's chunked kernels use value blocks of 32-64 for the same reason). Untuned: no GPU here.
DEFAULT_BLOCK_DV = 64
NUM_WARPS = 4
COMPILED_FP32_PRECISION = lax.DotAlgorithmPreset.TF32_TF32_F32_X3


def _check_power_of_two(name: str, value: int) -> None:
    if value < 16 or value & (value - 1):
        raise ValueError(f"pallas_gpu needs {name} to be a power of two >= 16 (Triton tensor/dot limits), got "
                         f"{name}={value}; use impl='chunked' for this shape")


def _seq_spec(length: int, width: int, tiles_per_head: int, head_tile) -> pl.BlockSpec:
    """The whole padded sequence of one head (tile) as a [Tp, width] block; the kernel slices chunks from it."""

    def index(b, h, j):
        head, tile = head_tile(h, j)
        return b, 0, head * tiles_per_head + tile

    return pl.BlockSpec((None, length, width), index)


def _table_spec(rows: int, head) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, rows, CHUNK), lambda b, h, j: (b, head(h, j), 0, 0))


def _seg_spec(rows: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, rows, CHUNK), lambda b, h, j: (b, 0, 0))


def _state_spec(d_k: int, block_dv: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, d_k, block_dv), lambda b, h, j: (b, h, 0, j))


def _chunk(ref, c):
    return ref[pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK), :]


def _row(ref, c):
    return ref[pl.ds(c, 1), :]


def _forward_kernel(q_ref, k_ref, v_ref, gam_ref, beta_ref, seg_ref, s0_ref, o_ref, sf_ref, *, chunks):
    def body(c, s):
        o, s_next = chunk_forward(_chunk(q_ref, c), _chunk(k_ref, c), _chunk(v_ref, c), s,
                                  _row(gam_ref, c), _row(beta_ref, c), _row(seg_ref, c))
        o_ref[pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK), :] = o
        return s_next

    sf_ref[...] = lax.fori_loop(0, chunks, body, s0_ref[...])


def _states_kernel(k_ref, v_ref, gam_ref, beta_ref, seg_ref, s0_ref, st_ref, *, chunks):
    def body(c, s):
        st_ref[c] = s
        return chunk_forward(None, _chunk(k_ref, c), _chunk(v_ref, c), s,
                             _row(gam_ref, c), _row(beta_ref, c), _row(seg_ref, c))[1]

    lax.fori_loop(0, chunks, body, s0_ref[...])


def _backward_kernel(q_ref, k_ref, v_ref, gam_ref, beta_ref, seg_ref, st_ref, do_ref, dsf_ref,
                     dq_ref, dk_ref, dv_ref, dbeta_ref, dgam_ref, ds0_ref, *, chunks):
    def body(i, ds):
        c = chunks - 1 - i
        grads = chunk_backward(_chunk(q_ref, c), _chunk(k_ref, c), _chunk(v_ref, c), st_ref[c], _chunk(do_ref, c),
                               ds, _row(gam_ref, c), _row(beta_ref, c), _row(seg_ref, c))
        rows = pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK)
        dq_ref[rows, :] = grads.dq
        dk_ref[rows, :] = grads.dk
        dv_ref[rows, :] = grads.dv
        dbeta_ref[pl.ds(c, 1), :] = grads.dbeta
        dgam_ref[pl.ds(c, 1), :] = grads.dgam
        return grads.ds

    ds0_ref[...] = lax.fori_loop(0, chunks, body, dsf_ref[...])


@dataclasses.dataclass(frozen=True)
class GpuKernels:
    """Triton launches for ``chunk_math.chunked_core``; block_dv None means min(dv, DEFAULT_BLOCK_DV)."""

    interpret: bool = False
    block_dv: int | None = None

    def _setup(self, x: Packed):
        dims = KernelDims.of(x)
        block_dv = self.block_dv or min(dims.d_v, DEFAULT_BLOCK_DV)
        tiles = value_tiles(dims.d_v, block_dv)
        for name, value in (("dk", dims.d_k), ("dv", dims.d_v), ("block_dv", block_dv)):
            _check_power_of_two(name, value)
        launch = functools.partial(
            pl.pallas_call, grid=(dims.batch, dims.h_v, tiles), interpret=self.interpret,
            compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        )
        precision = lax.Precision.HIGHEST if self.interpret else COMPILED_FP32_PRECISION

        def call(kernel, **kwargs):
            def traced(*refs):
                with fp32_dot_precision(precision):
                    kernel(*refs, chunks=dims.chunks)

            return launch(traced, **kwargs)

        return dims, block_dv, tiles, call

    def _input_specs(self, x: Packed, dims: KernelDims, block_dv: int, tiles: int) -> dict[str, pl.BlockSpec]:
        rows = x.gam.shape[2]
        return dict(
            qk=_seq_spec(dims.padded_length, dims.d_k, 1, lambda h, j: (h // dims.group, 0)),
            v=_seq_spec(dims.padded_length, block_dv, tiles, lambda h, j: (h, j)),
            table=_table_spec(rows, lambda h, j: h),
            seg=_seg_spec(rows),
            state=_state_spec(dims.d_k, block_dv),
        )

    def forward(self, x: Packed) -> tuple[jax.Array, jax.Array]:
        dims, block_dv, tiles, call = self._setup(x)
        sp = self._input_specs(x, dims, block_dv, tiles)
        return call(
            _forward_kernel,
            in_specs=[sp["qk"], sp["qk"], sp["v"], sp["table"], sp["table"], sp["seg"], sp["state"]],
            out_specs=[sp["v"], sp["state"]],
            out_shape=[out_struct(x.v.shape, x), out_struct(x.s0.shape, x)],
        )(x.q, x.k, x.v, x.gam, x.beta, x.seg, x.s0)

    def states(self, x: Packed) -> jax.Array:
        dims, block_dv, tiles, call = self._setup(x)
        sp = self._input_specs(x, dims, block_dv, tiles)
        return call(
            _states_kernel,
            in_specs=[sp["qk"], sp["v"], sp["table"], sp["table"], sp["seg"], sp["state"]],
            out_specs=pl.BlockSpec((None, None, dims.chunks, dims.d_k, block_dv), lambda b, h, j: (b, h, 0, 0, j)),
            out_shape=out_struct((dims.batch, dims.h_v, dims.chunks, dims.d_k, dims.d_v), x),
        )(x.k, x.v, x.gam, x.beta, x.seg, x.s0)

    def backward(self, x: Packed, states: jax.Array, do: jax.Array, ds_final: jax.Array) -> Partials:
        dims, block_dv, tiles, call = self._setup(x)
        sp = self._input_specs(x, dims, block_dv, tiles)
        part = _seq_spec(dims.padded_length, dims.d_k, 1, lambda h, j: (h * tiles + j, 0))
        table_out = _table_spec(x.gam.shape[2], lambda h, j: h * tiles + j)
        state_in = pl.BlockSpec((None, None, dims.chunks, dims.d_k, block_dv), lambda b, h, j: (b, h, 0, 0, j))
        like = (*x, states, do, ds_final)
        part_shape = (dims.batch, dims.padded_length, dims.h_v * tiles * dims.d_k)
        table_shape = (dims.batch, dims.h_v * tiles, *x.gam.shape[2:])
        return Partials(*call(
            _backward_kernel,
            in_specs=[sp["qk"], sp["qk"], sp["v"], sp["table"], sp["table"], sp["seg"], state_in, sp["v"],
                      sp["state"]],
            out_specs=[part, part, sp["v"], table_out, table_out, sp["state"]],
            out_shape=[out_struct(part_shape, like), out_struct(part_shape, like), out_struct(x.v.shape, like),
                       out_struct(table_shape, like), out_struct(table_shape, like), out_struct(x.s0.shape, like)],
        )(x.q, x.k, x.v, x.gam, x.beta, x.seg, states, do, ds_final))


def gated_delta_rule_core(q, k, v, g, beta, initial_state=None, segment_ids=None, *, interpret: bool = False,
                          block_dv: int | None = None):
    """Core contract of reference.py on Pallas Triton kernels (``interpret=True`` runs them on CPU).

    block_dv: value-tile width (a power-of-two divisor of dv, >= 16); None means min(dv, DEFAULT_BLOCK_DV).
    """
    return chunked_core(GpuKernels(interpret=interpret, block_dv=block_dv), q, k, v, g, beta, initial_state,
                        segment_ids)
