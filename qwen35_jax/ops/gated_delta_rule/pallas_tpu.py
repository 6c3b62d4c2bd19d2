"""Gated delta rule as Pallas Mosaic (TPU) kernels, forward and backward (numerics §2.5; math in ``chunk_math``).

Three ``pallas_call``s, each on the grid (batch, value head, value tile, chunk) with the chunk walk last and
"arbitrary", the others "parallel" (split across the TensorCores of a megacore chip):

* forward: the fp32 state [dk, block_dv] lives in VMEM scratch across the chunk walk; emits o and the final state;
* state pass (backward only): the same walk, emitting the state entering every chunk, [B, Hv, n_chunks, dk, dv]
  fp32. Only the inputs are saved between forward and backward; the per-chunk states are recomputed and exist only
  while the backward runs (one layer at a time);
* backward: walks the chunks in reverse with dS carried in VMEM scratch; emits dq/dk partials per value head (summed
  over the Hv/Hk group outside), dv, and per-chunk dbeta / dgamma tables (reverse cumsum to dg outside).

q and k are read from their key head through the BlockSpec index map (h // r); repeats are never materialised.
Sequence arrays use the [B, T, H·d] view when the block width is a multiple of 128 lanes, otherwise they are
transposed to [B, H, T, d] (Mosaic blocks need a last dim that is a multiple of 128 or the full dim). The view is a
reshape of the contract's [B, T, H, d]; XLA folds it into the producing fusion, but a program *input* in the default
tiled layout gets a relayout copy (seen in the AOT memory analysis). Per-chunk scalars (cumulative log-decay, beta,
segment index) come as lane-dense tables, 8 chunks per block, so VMEM use does not grow with T.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from qwen35_jax.ops.gated_delta_rule.chunk_math import (
    CHUNK,
    TABLE_ROWS,
    KernelDims,
    Packed,
    Partials,
    chunk_backward,
    chunk_forward,
    chunked_core,
    out_struct,
    value_tiles,
)

# Value-tile width per TPU generation: one MXU width (128 lanes on v4/v5e/v5p, 256 on v6e). Splitting d_v into
# tiles adds grid parallelism but recomputes the per-chunk inverse per tile, so tiles are never narrower than the
# MXU. All Qwen3.5 sizes have dv = 128, i.e. one tile everywhere. Unknown chips (and CPU interpret mode) use 128.
_BLOCK_DV = {
    pltpu.ChipVersion.TPU_V4: 128,
    pltpu.ChipVersion.TPU_V5E: 128,
    pltpu.ChipVersion.TPU_V5P: 128,
    pltpu.ChipVersion.TPU_V6E: 256,
}
_DEFAULT_BLOCK_DV = 128


def default_block_dv(d_v: int) -> int:
    """Value-tile width for the current (or AOT target) TPU: the table entry if it divides d_v, else d_v."""
    try:
        chip = pltpu.get_tpu_info().chip_version
    except (ValueError, RuntimeError):  # not on a TPU (interpret mode, CPU tests)
        chip = None
    block = _BLOCK_DV.get(chip, _DEFAULT_BLOCK_DV)
    return block if d_v % block == 0 else d_v


def _lane_dense(block: int) -> bool:
    return block % 128 == 0


def _to_kernel_layout(x: jax.Array, head_dim: int, block: int) -> jax.Array:
    """[B, Tp, H*head_dim] -> [B, H, Tp, head_dim] unless blocks of ``block`` columns are lane-dense already."""
    if _lane_dense(block):
        return x
    batch, length, cols = x.shape
    return x.reshape(batch, length, cols // head_dim, head_dim).transpose(0, 2, 1, 3)


def _from_kernel_layout(x: jax.Array, block: int) -> jax.Array:
    if _lane_dense(block):
        return x
    batch, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def _kernel_shape(dims: KernelDims, heads: int, head_dim: int, block: int) -> tuple[int, ...]:
    if _lane_dense(block):
        return (dims.batch, dims.padded_length, heads * head_dim)
    return (dims.batch, heads, dims.padded_length, head_dim)


def _seq_spec(width: int, tiles_per_head: int, head_tile, chunk) -> pl.BlockSpec:
    """[CHUNK, width] block of a sequence array; head_tile(h, j) -> (head, tile), chunk(i) -> chunk index."""
    if _lane_dense(width):
        def index(b, h, j, i):
            head, tile = head_tile(h, j)
            return b, chunk(i), head * tiles_per_head + tile

        return pl.BlockSpec((None, CHUNK, width), index)

    def index_hm(b, h, j, i):
        head, tile = head_tile(h, j)
        return b, head, chunk(i), tile

    return pl.BlockSpec((None, None, CHUNK, width), index_hm)


def _table_spec(head, chunk) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, TABLE_ROWS, CHUNK), lambda b, h, j, i: (b, head(h, j), chunk(i) // TABLE_ROWS, 0))


def _seg_spec(chunk) -> pl.BlockSpec:
    return pl.BlockSpec((None, TABLE_ROWS, CHUNK), lambda b, h, j, i: (b, chunk(i) // TABLE_ROWS, 0))


def _state_spec(d_k: int, block_dv: int) -> pl.BlockSpec:
    return pl.BlockSpec((None, None, d_k, block_dv), lambda b, h, j, i: (b, h, 0, j))


def _table_row(ref, chunk_index):
    return ref[pl.ds(chunk_index % TABLE_ROWS, 1), :]


def _forward_kernel(q_ref, k_ref, v_ref, gam_ref, beta_ref, seg_ref, s0_ref, o_ref, sf_ref, s_scr):
    c = pl.program_id(3)

    @pl.when(c == 0)
    def _():
        s_scr[...] = s0_ref[...]

    o, s_next = chunk_forward(q_ref[...], k_ref[...], v_ref[...], s_scr[...],
                              _table_row(gam_ref, c), _table_row(beta_ref, c), _table_row(seg_ref, c))
    o_ref[...] = o
    s_scr[...] = s_next

    @pl.when(c == pl.num_programs(3) - 1)
    def _():
        sf_ref[...] = s_next


def _states_kernel(k_ref, v_ref, gam_ref, beta_ref, seg_ref, s0_ref, st_ref, s_scr):
    c = pl.program_id(3)

    @pl.when(c == 0)
    def _():
        s_scr[...] = s0_ref[...]

    st_ref[...] = s_scr[...]
    _, s_next = chunk_forward(None, k_ref[...], v_ref[...], s_scr[...],
                              _table_row(gam_ref, c), _table_row(beta_ref, c), _table_row(seg_ref, c))
    s_scr[...] = s_next


def _backward_kernel(q_ref, k_ref, v_ref, gam_ref, beta_ref, seg_ref, st_ref, do_ref, dsf_ref,
                     dq_ref, dk_ref, dv_ref, dbeta_ref, dgam_ref, ds0_ref, ds_scr):
    i = pl.program_id(3)
    c = pl.num_programs(3) - 1 - i

    @pl.when(i == 0)
    def _():
        ds_scr[...] = dsf_ref[...]

    grads = chunk_backward(q_ref[...], k_ref[...], v_ref[...], st_ref[...], do_ref[...], ds_scr[...],
                           _table_row(gam_ref, c), _table_row(beta_ref, c), _table_row(seg_ref, c))
    dq_ref[...] = grads.dq
    dk_ref[...] = grads.dk
    dv_ref[...] = grads.dv
    dbeta_ref[pl.ds(c % TABLE_ROWS, 1), :] = grads.dbeta
    dgam_ref[pl.ds(c % TABLE_ROWS, 1), :] = grads.dgam
    ds_scr[...] = grads.ds

    @pl.when(i == pl.num_programs(3) - 1)
    def _():
        ds0_ref[...] = grads.ds


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Sizes and BlockSpecs of one launch; ``reverse`` walks the chunks last to first (backward pass)."""

    dims: KernelDims
    block_dv: int
    reverse: bool = False

    @property
    def tiles(self) -> int:
        return value_tiles(self.dims.d_v, self.block_dv)

    def chunk(self, i):
        return self.dims.chunks - 1 - i if self.reverse else i

    def qk(self) -> pl.BlockSpec:  # value head h reads key head h // r
        return _seq_spec(self.dims.d_k, 1, lambda h, j: (h // self.dims.group, 0), self.chunk)

    def v(self) -> pl.BlockSpec:
        return _seq_spec(self.block_dv, self.tiles, lambda h, j: (h, j), self.chunk)

    def partial_qk(self) -> pl.BlockSpec:  # dq / dk partial of (value head, tile)
        return _seq_spec(self.dims.d_k, 1, lambda h, j: (h * self.tiles + j, 0), self.chunk)

    def table(self, per_tile: bool = False) -> pl.BlockSpec:
        return _table_spec(lambda h, j: h * self.tiles + j if per_tile else h, self.chunk)

    def seg(self) -> pl.BlockSpec:
        return _seg_spec(self.chunk)

    def state(self) -> pl.BlockSpec:
        return _state_spec(self.dims.d_k, self.block_dv)

    def chunk_state(self) -> pl.BlockSpec:
        return pl.BlockSpec((None, None, None, self.dims.d_k, self.block_dv),
                            lambda b, h, j, i: (b, h, self.chunk(i), 0, j))

    def qk_layout(self, x: jax.Array) -> jax.Array:
        return _to_kernel_layout(x, self.dims.d_k, self.dims.d_k)

    def v_layout(self, x: jax.Array) -> jax.Array:
        return _to_kernel_layout(x, self.dims.d_v, self.block_dv)

    def v_shape(self) -> tuple[int, ...]:
        return _kernel_shape(self.dims, self.dims.h_v, self.dims.d_v, self.block_dv)

    def partial_qk_shape(self) -> tuple[int, ...]:
        return _kernel_shape(self.dims, self.dims.h_v * self.tiles, self.dims.d_k, self.dims.d_k)


@dataclasses.dataclass(frozen=True)
class TpuKernels:
    """Mosaic launches for ``chunk_math.chunked_core``; block_dv None picks the per-generation default."""

    interpret: bool = False
    block_dv: int | None = None

    def _plan(self, x: Packed, reverse: bool = False):
        dims = KernelDims.of(x)
        plan = _Plan(dims, self.block_dv or default_block_dv(dims.d_v), reverse)
        call = functools.partial(
            pl.pallas_call,
            grid=(dims.batch, dims.h_v, plan.tiles, dims.chunks),
            compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
            scratch_shapes=[pltpu.VMEM((dims.d_k, plan.block_dv), jnp.float32)],
            interpret=pltpu.InterpretParams() if self.interpret else False,
        )
        return plan, call

    def forward(self, x: Packed) -> tuple[jax.Array, jax.Array]:
        plan, call = self._plan(x)
        o, s_final = call(
            _forward_kernel,
            in_specs=[plan.qk(), plan.qk(), plan.v(), plan.table(), plan.table(), plan.seg(), plan.state()],
            out_specs=[plan.v(), plan.state()],
            out_shape=[out_struct(plan.v_shape(), x), out_struct(x.s0.shape, x)],
        )(plan.qk_layout(x.q), plan.qk_layout(x.k), plan.v_layout(x.v), x.gam, x.beta, x.seg, x.s0)
        return _from_kernel_layout(o, plan.block_dv), s_final

    def states(self, x: Packed) -> jax.Array:
        plan, call = self._plan(x)
        dims = plan.dims
        return call(
            _states_kernel,
            in_specs=[plan.qk(), plan.v(), plan.table(), plan.table(), plan.seg(), plan.state()],
            out_specs=plan.chunk_state(),
            out_shape=out_struct((dims.batch, dims.h_v, dims.chunks, dims.d_k, dims.d_v), x),
        )(plan.qk_layout(x.k), plan.v_layout(x.v), x.gam, x.beta, x.seg, x.s0)

    def backward(self, x: Packed, do: jax.Array, ds_final: jax.Array) -> Partials:
        states = self.states(x)
        plan, call = self._plan(x, reverse=True)
        like = (*x, states, do, ds_final)
        table_shape = (plan.dims.batch, plan.dims.h_v * plan.tiles, *x.gam.shape[2:])
        dq, dk, dv, dbeta, dgam, ds0 = call(
            _backward_kernel,
            in_specs=[plan.qk(), plan.qk(), plan.v(), plan.table(), plan.table(), plan.seg(), plan.chunk_state(),
                      plan.v(), plan.state()],
            out_specs=[plan.partial_qk(), plan.partial_qk(), plan.v(), plan.table(per_tile=True),
                       plan.table(per_tile=True), plan.state()],
            out_shape=[out_struct(plan.partial_qk_shape(), like), out_struct(plan.partial_qk_shape(), like),
                       out_struct(plan.v_shape(), like), out_struct(table_shape, like),
                       out_struct(table_shape, like), out_struct(x.s0.shape, like)],
        )(plan.qk_layout(x.q), plan.qk_layout(x.k), plan.v_layout(x.v), x.gam, x.beta, x.seg, states,
          plan.v_layout(do), ds_final)
        d_k = plan.dims.d_k
        return Partials(_from_kernel_layout(dq, d_k), _from_kernel_layout(dk, d_k),
                        _from_kernel_layout(dv, plan.block_dv), dbeta, dgam, ds0)


def gated_delta_rule_core(q, k, v, g, beta, initial_state=None, segment_ids=None, *, interpret: bool = False,
                          block_dv: int | None = None):
    """Core contract of reference.py on Mosaic TPU kernels (``interpret=True`` simulates TPU semantics on CPU).

    block_dv: value-tile width (a divisor of dv); None picks the per-generation default (``default_block_dv``).
    """
    return chunked_core(TpuKernels(interpret=interpret, block_dv=block_dv), q, k, v, g, beta, initial_state,
                        segment_ids)
