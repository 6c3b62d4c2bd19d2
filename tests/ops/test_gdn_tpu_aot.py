"""AOT-compile the Pallas TPU gated delta rule for real TPU topologies (no TPU needed: libtpu + abstract devices).

A successful compile proves the kernels pass Mosaic lowering for that chip. The realistic case runs inside
``jax.shard_map`` with the batch sharded over a 4-chip mesh (one sequence per chip) at T = 8192, Hv = 64, Hk = 16,
d = 128, bf16, forward and forward+backward. Compile times and the memory analysis are printed (``-s``) and attached
to the test report (``record_property``).
"""

import os
import time

import pytest

pytest.importorskip("libtpu")
# Compiling needs no TPU; don't fail when another local process holds libtpu's TPU lockfile.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from qwen35_jax.ops.gated_delta_rule import pallas_tpu  # noqa: E402

# topology name -> (device_kind, HBM per chip in GiB)
TOPOLOGIES = {
    "v5e:2x2": ("TPU v5 lite", 16),
    "v5p:2x2x1": ("TPU v5", 95),
    "v6e:2x2": ("TPU v6 lite", 32),
}


def _mesh(topology: str):
    topo = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    return topologies.make_mesh(topo, (len(topo.devices),), ("data",)), topo.devices[0].device_kind


def _abstract_inputs(mesh, batch, length, h_k, h_v, d_k, d_v, dtype=jnp.bfloat16):
    sharding = NamedSharding(mesh, P("data"))
    shapes = [((batch, length, h_k, d_k), dtype)] * 2 + [
        ((batch, length, h_v, d_v), dtype),
        ((batch, length, h_v), jnp.float32),  # g
        ((batch, length, h_v), dtype),  # beta
        ((batch, h_v, d_k, d_v), jnp.float32),  # initial state
        ((batch, length), jnp.int32),  # segment ids
    ]
    return [jax.ShapeDtypeStruct(s, dt, sharding=sharding) for s, dt in shapes]


def _programs(mesh, optional_inputs=True, **core_kwargs):
    """Forward, and forward+backward w.r.t. every float input, of the core sharded over the batch.

    optional_inputs=False drops the initial state and segment ids (zeros created inside shard_map).
    """

    def core(q, k, v, g, beta, initial_state, segment_ids):
        if not optional_inputs:
            initial_state = segment_ids = None
        return pallas_tpu.gated_delta_rule_core(q, k, v, g, beta, initial_state, segment_ids, **core_kwargs)

    fwd = jax.shard_map(core, mesh=mesh, in_specs=P("data"), out_specs=P("data"))

    def loss(*a):
        o, s = fwd(*a)
        return jnp.sum(o) + jnp.sum(s)

    return {"fwd": fwd, "fwd+bwd": jax.value_and_grad(loss, argnums=tuple(range(6)))}


def _compile(fn, args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_realistic_shape_compiles(topology, record_property):
    mesh, kind = _mesh(topology)
    want_kind, hbm_gib = TOPOLOGIES[topology]
    assert kind == want_kind
    args = _abstract_inputs(mesh, batch=mesh.size, length=8192, h_k=16, h_v=64, d_k=128, d_v=128)
    for name, fn in _programs(mesh).items():
        compiled, seconds = _compile(fn, args)
        mem = compiled.memory_analysis()
        peak_gib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**30
        summary = (f"{topology} ({kind}) {name}: compile {seconds:.1f} s, per chip: args "
                   f"{mem.argument_size_in_bytes / 2**20:.0f} MiB, outputs {mem.output_size_in_bytes / 2**20:.0f} MiB, "
                   f"temp {mem.temp_size_in_bytes / 2**20:.0f} MiB")
        print(summary)
        record_property(f"{topology} {name}", summary)
        assert "tpu_custom_call" in compiled.as_text()  # the kernels went through Mosaic
        assert peak_gib < hbm_gib, summary
        assert seconds < 120, summary


@pytest.mark.parametrize(
    "d_k,d_v,block_dv,optional_inputs",
    [
        (64, 64, None, False),  # sub-128 head dims: the transposed [B, H, T, d] layout; no initial state/segments
        (128, 256, 128, True),  # two 128-wide value tiles
    ],
)
def test_other_layouts_compile(d_k, d_v, block_dv, optional_inputs):
    mesh, _ = _mesh("v5e:2x2")
    args = _abstract_inputs(mesh, batch=mesh.size, length=640, h_k=2, h_v=4, d_k=d_k, d_v=d_v)
    for fn in _programs(mesh, optional_inputs, block_dv=block_dv).values():
        compiled, seconds = _compile(fn, args)
        assert "tpu_custom_call" in compiled.as_text()
        print(f"v5e:2x2 dk={d_k} dv={d_v} block_dv={block_dv}: compile {seconds:.1f} s")
