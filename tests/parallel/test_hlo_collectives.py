"""The collective-bytes reader of the AOT tool on a program whose traffic is known: a ppermute inside a 5-step scan
and an all-gather after it (8 CPU devices)."""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from tools.hlo_collectives import collective_bytes, format_table


def test_counts_loop_trips_and_buffer_sizes():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))

    def body(a):
        def step(carry, _):
            return jax.lax.ppermute(carry, "x", [(i, (i + 1) % 8) for i in range(8)]) * 2, None

        carry, _ = jax.lax.scan(step, a, None, length=5)
        return jax.lax.all_gather(carry, "x", tiled=True)

    program = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=P(), check_vma=False))
    totals = collective_bytes(program.lower(jnp.ones((64, 16))).compile().as_text())
    assert totals == {("other", "collective-permute"): 5 * 8 * 16 * 4, ("other", "all-gather"): 64 * 16 * 4}
    assert "| other | all-gather |" in format_table(totals)


def test_reduce_scatter_counts_its_input():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Auto,))
    program = jax.jit(jax.shard_map(lambda a: jax.lax.psum_scatter(a, "x", tiled=True), mesh=mesh,
                                    in_specs=P(), out_specs=P("x"), check_vma=False))
    totals = collective_bytes(program.lower(jnp.ones((64, 16))).compile().as_text())
    assert totals == {("other", "reduce-scatter"): 64 * 16 * 4}
