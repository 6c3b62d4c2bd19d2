"""Gated delta rule as Pallas GPU kernels (Triton lowering), forward and backward (numerics §2.5, "GPU phases").

A GPU has no sequential grid axis and a thread block's shared memory is small (227 KiB on Hopper, 163 KiB on the
A100, 99 KiB on Ada), so the chunk algebra of ``chunk_math`` is split into phases (numerics §2.5): everything that
does not depend on the carried state runs chunk-parallel, on the grid (batch, value head [· value tile], chunk), and
only the state recurrence walks the chunks, on the grid (batch, value head, value tile) with the fp32 state
[dk, block_dv] as the loop carry. The walks do two (forward) or three (backward) small matmuls per chunk.

Forward:  prepare (Tm, W, U, diag(f) K per chunk) -> state walk (S entering every chunk, Vn, final state)
          -> output (O = diag(e) Q S + (Q K^T * D) Vn).
Backward: prepare and state walk again (only the inputs are saved) -> local dVn ((Q K^T * D)^T dO) -> reverse state
          walk (dS leaving every chunk, dVn, dS0) -> local gradients (dq, dk, dv, dbeta, dgamma per chunk).

q and k are addressed at their key head (h // r) by the BlockSpec index maps; repeats are never materialised.
Sequence arrays use the free [B, T, H·d] view. Triton needs power-of-two tensor sizes and dot operands of at least
16 per side, hence the dk / dv / block_dv checks below. Intermediates that only feed matmuls (W, diag(f) K, Tm) are
stored in the input dtype, which is what the matmuls would cast them to; U, Vn, the states and all gradients are
fp32. The phases meet in HBM: the backward of one layer holds two per-chunk state arrays ([B, Hv, T/64, dk, dv]
fp32, each twice the size of v in fp32 at dk = 128) and a few v-sized arrays at once, freed when it returns.

fp32 matmuls run as 3-pass TF32 on the tensor cores (``DotAlgorithmPreset.TF32_TF32_F32_X3``, about fp32 accuracy)
when compiled: ``Precision.HIGHEST`` lowers to Triton's ``ieee`` dots, which Triton writes out as scalar FMAs and
which compiled for minutes. Interpret mode keeps HIGHEST (XLA:CPU has no TF32 algorithms). Shared memory per kernel
is measured by compiling the lowered Triton IR for each supported GPU generation (``tools/triton_smem.py``; the
limits and the margin are in ``SHARED_MEMORY_LIMITS``).

Jax 0.12 marks the Pallas Triton backend deprecated in favour of Mosaic GPU; Triton is used because its lowering
accepts the same generic array code as the TPU kernels (``chunk_math``), runs in interpret mode in CI and compiles
for the Ampere and Ada GPUs Colab offers as well as Hopper. ``tests/ops/test_gdn_pallas.py`` runs the kernels in
interpret mode in CI (compiled on a GPU); ``tools/gpu_check_gdn.sh`` is the check to run on a GPU machine.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from qwen35_jax.ops.gated_delta_rule.chunk_math import (
    CHUNK,
    KernelDims,
    Packed,
    Partials,
    Prepared,
    chunk_dvn_local,
    chunk_lam,
    chunk_local_grads,
    chunk_output,
    chunk_prepare,
    chunked_core,
    decay,
    dstate_step,
    entry_decay,
    eye_mask,
    fp32_dot_precision,
    out_struct,
    state_step,
    value_tiles,
)

# Value tile of the state walks and of the value-dependent parallel kernels: the carried state is [dk, 64] fp32.
DEFAULT_BLOCK_DV = 64
NUM_WARPS = 4
COMPILED_FP32_PRECISION = lax.DotAlgorithmPreset.TF32_TF32_F32_X3
# Shared memory a thread block may use, by CUDA compute capability (major, minor) -> bytes (the opt-in maximum per
# block): A100 (8.0), A10/A40/RTX 30 (8.6), L4/RTX 40 (8.9), H100/H200 (9.0). ``tools/triton_smem.py`` measures each
# kernel with the triton package; XLA's bundled Triton asks for more: the previous one-kernel backward (dk = 128,
# 3-pass TF32) measured 224 KiB offline and failed on an H200 asking 288 KiB (x1.29). A kernel must therefore fit with
# SHARED_MEMORY_MARGIN times its offline measurement; the margin rests on that one pair and the GPU check compiles
# every kernel under XLA (tools/gpu_check_gdn.sh).
SHARED_MEMORY_LIMITS = {(8, 0): 166_912, (8, 6): 101_376, (8, 9): 101_376, (9, 0): 232_448}
SHARED_MEMORY_MARGIN = 1.3


def _check_power_of_two(name: str, value: int) -> None:
    if value < 16 or value & (value - 1):
        raise ValueError(f"pallas_gpu needs {name} to be a power of two >= 16 (Triton tensor/dot limits), got "
                         f"{name}={value}; use impl='chunked' for this shape")


class _Specs(NamedTuple):
    """BlockSpecs of one launch family: ``chunked`` for grids (b, head·tile, chunk), ``walk`` for (b, head, tile)."""

    qk: pl.BlockSpec  # key-head q / k
    per_head_k: pl.BlockSpec  # [.., dk] arrays per value head (W, diag(f) K)
    v: pl.BlockSpec  # value tile
    table: pl.BlockSpec  # per-value-head rows of cumulative log-decay / beta
    seg: pl.BlockSpec
    state: pl.BlockSpec  # [dk, block_dv] state tile (per chunk in chunked)


@dataclasses.dataclass(frozen=True)
class _Plan:
    dims: KernelDims
    block_dv: int
    rows: int  # rows of the per-chunk tables

    @property
    def tiles(self) -> int:
        return value_tiles(self.dims.d_v, self.block_dv)

    def chunked(self) -> _Specs:
        """Specs for the chunk-parallel grid (batch, value head · tile, chunk)."""
        dims, tiles = self.dims, self.tiles

        def seq(width, column):
            return pl.BlockSpec((None, CHUNK, width), lambda b, ht, c: (b, c, column(ht // tiles, ht % tiles)))

        return _Specs(
            qk=seq(dims.d_k, lambda h, j: h // dims.group),
            per_head_k=seq(dims.d_k, lambda h, j: h),
            v=seq(self.block_dv, lambda h, j: h * tiles + j),
            table=pl.BlockSpec((None, None, 1, CHUNK), lambda b, ht, c: (b, ht // tiles, c, 0)),
            seg=pl.BlockSpec((None, 1, CHUNK), lambda b, ht, c: (b, c, 0)),
            state=pl.BlockSpec((None, None, None, dims.d_k, self.block_dv),
                               lambda b, ht, c: (b, ht // tiles, c, 0, ht % tiles)),
        )

    def walk(self) -> _Specs:
        """Specs for the state walks: whole sequences of one (value head, tile); the kernel slices chunks."""
        dims, tiles, length = self.dims, self.tiles, self.dims.padded_length

        def seq(width, column):
            return pl.BlockSpec((None, length, width), lambda b, h, j: (b, 0, column(h, j)))

        return _Specs(
            qk=seq(dims.d_k, lambda h, j: h // dims.group),
            per_head_k=seq(dims.d_k, lambda h, j: h),
            v=seq(self.block_dv, lambda h, j: h * tiles + j),
            table=pl.BlockSpec((None, None, self.rows, CHUNK), lambda b, h, j: (b, h, 0, 0)),
            seg=pl.BlockSpec((None, self.rows, CHUNK), lambda b, h, j: (b, 0, 0)),
            state=pl.BlockSpec((None, None, dims.d_k, self.block_dv), lambda b, h, j: (b, h, 0, j)),
        )

    def all_states(self) -> pl.BlockSpec:
        """The state of every chunk of one (value head, tile), written by a walk."""
        return pl.BlockSpec((None, None, self.dims.chunks, self.dims.d_k, self.block_dv),
                            lambda b, h, j: (b, h, 0, 0, j))

    def states_shape(self) -> tuple[int, ...]:
        d = self.dims
        return d.batch, d.h_v, d.chunks, d.d_k, d.d_v

    def seq_shape(self, heads: int, width: int) -> tuple[int, ...]:
        return self.dims.batch, self.dims.padded_length, heads * width


# ------------------------------------------------------------------------------------------------------------------
# Kernels. Chunk-parallel kernels see one chunk per block; walks slice chunk c out of whole-sequence blocks.
# ------------------------------------------------------------------------------------------------------------------


def _chunk(ref, c):
    return ref[pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK), :]


def _store_chunk(ref, c, value):
    ref[pl.ds(pl.multiple_of(c * CHUNK, CHUNK), CHUNK), :] = value.astype(ref.dtype)


def _row(ref, c):
    return ref[pl.ds(c, 1), :]


def _prepare_kernel(k_ref, v_ref, gam_ref, beta_ref, seg_ref, w_ref, u_ref, kf_ref, *tm_ref):
    prep = chunk_prepare(k_ref[...], v_ref[...], beta_ref[...], decay(gam_ref[...], seg_ref[...]))
    w_ref[...] = prep.w.astype(w_ref.dtype)
    u_ref[...] = prep.u
    kf_ref[...] = prep.kf.astype(kf_ref.dtype)
    if tm_ref:
        tm_ref[0][...] = prep.tm.astype(tm_ref[0].dtype)


def _state_walk_kernel(kf_ref, w_ref, u_ref, gam_ref, seg_ref, s0_ref, vn_ref, st_ref, sf_ref, *, chunks):
    def body(c, s):
        st_ref[c] = s
        vn, s_next = state_step(_chunk(kf_ref, c), _chunk(w_ref, c), _chunk(u_ref, c), s,
                                chunk_lam(_row(gam_ref, c), _row(seg_ref, c)), kf_ref.dtype)
        _store_chunk(vn_ref, c, vn)
        return s_next

    sf_ref[...] = lax.fori_loop(0, chunks, body, s0_ref[...])


def _output_kernel(q_ref, k_ref, vn_ref, st_ref, gam_ref, seg_ref, o_ref):
    o_ref[...] = chunk_output(q_ref[...], k_ref[...], vn_ref[...], st_ref[...], decay(gam_ref[...], seg_ref[...]),
                              k_ref.dtype)


def _dvn_local_kernel(q_ref, k_ref, do_ref, gam_ref, seg_ref, out_ref):
    out_ref[...] = chunk_dvn_local(q_ref[...], k_ref[...], do_ref[...], decay(gam_ref[...], seg_ref[...]),
                                   k_ref.dtype)


def _dstate_walk_kernel(q_ref, kf_ref, w_ref, do_ref, dvl_ref, gam_ref, seg_ref, dsf_ref,
                        dvn_ref, dsn_ref, ds0_ref, *, chunks):
    eye = eye_mask(CHUNK)

    def body(i, ds):
        c = chunks - 1 - i
        dsn_ref[c] = ds  # the gradient of the state leaving chunk c
        gam, seg = _row(gam_ref, c), _row(seg_ref, c)
        qe = entry_decay(gam, seg, eye) * _chunk(q_ref, c).astype(ds.dtype)
        d_vn, ds_prev = dstate_step(qe, _chunk(kf_ref, c), _chunk(w_ref, c), _chunk(do_ref, c), _chunk(dvl_ref, c),
                                    ds, chunk_lam(gam, seg), kf_ref.dtype)
        _store_chunk(dvn_ref, c, d_vn)
        return ds_prev

    ds0_ref[...] = lax.fori_loop(0, chunks, body, dsf_ref[...])


def _grads_kernel(q_ref, k_ref, v_ref, st_ref, dsn_ref, do_ref, vn_ref, dvn_ref, tm_ref, u_ref, w_ref,
                  gam_ref, beta_ref, seg_ref, dq_ref, dk_ref, dv_ref, dbeta_ref, dgam_ref):
    prep = Prepared(tm=tm_ref[...], w=w_ref[...], u=u_ref[...], kf=None)
    grads = chunk_local_grads(q_ref[...], k_ref[...], v_ref[...], st_ref[...], dsn_ref[...], do_ref[...],
                              vn_ref[...], dvn_ref[...], prep, beta_ref[...], decay(gam_ref[...], seg_ref[...]))
    dq_ref[...] = grads.dq
    dk_ref[...] = grads.dk
    dv_ref[...] = grads.dv
    dbeta_ref[...] = grads.dbeta
    dgam_ref[...] = grads.dgam


# ------------------------------------------------------------------------------------------------------------------
# Launches.
# ------------------------------------------------------------------------------------------------------------------


class _Walked(NamedTuple):
    prep: Prepared  # in the kernel layout (tm None unless the backward asked for it)
    vn: jax.Array
    states: jax.Array
    s_final: jax.Array


@dataclasses.dataclass(frozen=True)
class GpuKernels:
    """Triton launches for ``chunk_math.chunked_core``; block_dv None means min(dv, DEFAULT_BLOCK_DV)."""

    interpret: bool = False
    block_dv: int | None = None

    def plan(self, x: Packed) -> _Plan:
        dims = KernelDims.of(x)
        plan = _Plan(dims, self.block_dv or min(dims.d_v, DEFAULT_BLOCK_DV), x.gam.shape[2])
        for name, value in (("dk", dims.d_k), ("dv", dims.d_v), ("block_dv", plan.block_dv)):
            _check_power_of_two(name, value)
        value_tiles(dims.d_v, plan.block_dv)
        return plan

    def _call(self, kernel, grid, name: str | None = None, **kwargs):
        precision = lax.Precision.HIGHEST if self.interpret else COMPILED_FP32_PRECISION

        def traced(*refs):
            with fp32_dot_precision(precision):
                kernel(*refs)

        name = name or getattr(kernel, "func", kernel).__name__.strip("_").removesuffix("_kernel")
        return pl.pallas_call(
            traced, grid=grid, interpret=self.interpret, name=f"gdn_{name}",
            compiler_params=pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1), **kwargs)

    def _chunked_call(self, plan: _Plan, kernel, per_tile: bool, **kwargs):
        heads = plan.dims.h_v * (plan.tiles if per_tile else 1)
        return self._call(kernel, (plan.dims.batch, heads, plan.dims.chunks), **kwargs)

    def _walk_call(self, plan: _Plan, kernel, **kwargs):
        kernel = functools.partial(kernel, chunks=plan.dims.chunks)
        return self._call(kernel, (plan.dims.batch, plan.dims.h_v, plan.tiles), **kwargs)

    def _prepare(self, x: Packed, plan: _Plan, with_tm: bool) -> Prepared:
        """Per-chunk Tm (only ``with_tm``; else None), W, U, diag(f) K in the kernel layout, one program per
        (batch, value head, chunk) covering all value columns."""
        dims = plan.dims
        sp = dataclasses.replace(plan, block_dv=dims.d_v).chunked()  # one "tile": all value columns
        tm_out = pl.BlockSpec((None, CHUNK, CHUNK), lambda b, h, c: (b, c, h))
        dtype = x.k.dtype
        out_specs = [sp.per_head_k, sp.v, sp.per_head_k] + ([tm_out] if with_tm else [])
        out_shape = [out_struct(plan.seq_shape(dims.h_v, dims.d_k), x, dtype),
                     out_struct(plan.seq_shape(dims.h_v, dims.d_v), x),
                     out_struct(plan.seq_shape(dims.h_v, dims.d_k), x, dtype)]
        if with_tm:
            out_shape.append(out_struct(plan.seq_shape(dims.h_v, CHUNK), x, dtype))
        w, u, kf, *tm = self._chunked_call(
            plan, _prepare_kernel, per_tile=False, name="prepare_with_tm" if with_tm else "prepare",
            in_specs=[sp.qk, sp.v, sp.table, sp.table, sp.seg], out_specs=out_specs, out_shape=out_shape,
        )(x.k, x.v, x.gam, x.beta, x.seg)
        return Prepared(tm=tm[0] if tm else None, w=w, u=u, kf=kf)

    def _state_walk(self, x: Packed, plan: _Plan, with_tm: bool) -> _Walked:
        prep = self._prepare(x, plan, with_tm)
        sp = plan.walk()
        vn, states, s_final = self._walk_call(
            plan, _state_walk_kernel,
            in_specs=[sp.per_head_k, sp.per_head_k, sp.v, sp.table, sp.seg, sp.state],
            out_specs=[sp.v, plan.all_states(), sp.state],
            out_shape=[out_struct(prep.u.shape, x), out_struct(plan.states_shape(), x), out_struct(x.s0.shape, x)],
        )(prep.kf, prep.w, prep.u, x.gam, x.seg, x.s0)
        return _Walked(prep, vn, states, s_final)

    def forward(self, x: Packed) -> tuple[jax.Array, jax.Array]:
        plan = self.plan(x)
        walked = self._state_walk(x, plan, with_tm=False)
        sp = plan.chunked()
        o = self._chunked_call(
            plan, _output_kernel, per_tile=True,
            in_specs=[sp.qk, sp.qk, sp.v, sp.state, sp.table, sp.seg], out_specs=sp.v,
            out_shape=out_struct(x.v.shape, x),
        )(x.q, x.k, walked.vn, walked.states, x.gam, x.seg)
        return o, walked.s_final

    def backward(self, x: Packed, do: jax.Array, ds_final: jax.Array) -> Partials:
        plan = self.plan(x)
        dims, tiles = plan.dims, plan.tiles
        walked = self._state_walk(x, plan, with_tm=True)
        prep = walked.prep
        like = (*x, do, ds_final)
        sp, wk = plan.chunked(), plan.walk()
        dvn_local = self._chunked_call(
            plan, _dvn_local_kernel, per_tile=True,
            in_specs=[sp.qk, sp.qk, sp.v, sp.table, sp.seg], out_specs=sp.v, out_shape=out_struct(do.shape, like),
        )(x.q, x.k, do, x.gam, x.seg)
        d_vn, ds_next, ds0 = self._walk_call(
            plan, _dstate_walk_kernel,
            in_specs=[wk.qk, wk.per_head_k, wk.per_head_k, wk.v, wk.v, wk.table, wk.seg, wk.state],
            out_specs=[wk.v, plan.all_states(), wk.state],
            out_shape=[out_struct(do.shape, like), out_struct(plan.states_shape(), like),
                       out_struct(x.s0.shape, like)],
        )(x.q, prep.kf, prep.w, do, dvn_local, x.gam, x.seg, ds_final)

        partial_k = pl.BlockSpec((None, CHUNK, dims.d_k), lambda b, ht, c: (b, c, ht))
        tm_in = pl.BlockSpec((None, CHUNK, CHUNK), lambda b, ht, c: (b, c, ht // tiles))
        table_out = pl.BlockSpec((None, None, 1, CHUNK), lambda b, ht, c: (b, ht, c, 0))
        partial_k_shape = plan.seq_shape(dims.h_v * tiles, dims.d_k)
        table_shape = (dims.batch, dims.h_v * tiles, *x.gam.shape[2:])
        return Partials(*self._chunked_call(
            plan, _grads_kernel, per_tile=True,
            in_specs=[sp.qk, sp.qk, sp.v, sp.state, sp.state, sp.v, sp.v, sp.v, tm_in, sp.v, sp.per_head_k,
                      sp.table, sp.table, sp.seg],
            out_specs=[partial_k, partial_k, sp.v, table_out, table_out],
            out_shape=[out_struct(partial_k_shape, like), out_struct(partial_k_shape, like),
                       out_struct(x.v.shape, like), out_struct(table_shape, like), out_struct(table_shape, like)],
        )(x.q, x.k, x.v, walked.states, ds_next, do, walked.vn, d_vn, prep.tm, prep.u, prep.w, x.gam, x.beta,
          x.seg), ds0)


def gated_delta_rule_core(q, k, v, g, beta, initial_state=None, segment_ids=None, *, interpret: bool = False,
                          block_dv: int | None = None):
    """Core contract of reference.py on Pallas Triton kernels (``interpret=True`` runs them on CPU).

    block_dv: value-tile width (a power-of-two divisor of dv, >= 16); None means min(dv, DEFAULT_BLOCK_DV).
    """
    return chunked_core(GpuKernels(interpret=interpret, block_dv=block_dv), q, k, v, g, beta, initial_state,
                        segment_ids)
