"""Expert-parallel MoE layer on 8 CPU devices against the single-device layer (fp32), plus the dispatch bookkeeping."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from parallel_helpers import assert_trees_close, mesh_runtime, placed, random_module, tiny_config

from qwen35_jax.model.moe import SparseMoE
from qwen35_jax.ops.moe import expert_parallel
from qwen35_jax.parallel import Runtime

CONFIG = tiny_config()
BATCH, LENGTH, UNUSED_EXPERT = 8, 8, 3
MESHES = [dict(expert=2, fsdp=2, tensor=2), dict(expert=4, data=2), dict(expert=8), dict(fsdp=4, tensor=2)]
NO_DROP = CONFIG.num_experts / CONFIG.num_experts_per_tok  # capacity = every local token: nothing can drop


def _layer(runtime: Runtime | None = None) -> SparseMoE:
    """Random layer built for ``runtime`` (default one CPU device) whose router never picks expert 3 for positive
    inputs; the same values on any runtime."""
    moe = random_module(lambda: SparseMoE(CONFIG, runtime=runtime or Runtime.local("cpu"), rngs=nnx.Rngs(0)))
    router = jnp.abs(moe.router[...])
    moe.router[...] = router.at[:, UNUSED_EXPERT].set(-router[:, UNUSED_EXPERT])
    return moe


def _inputs() -> jax.Array:
    return jnp.abs(jax.random.normal(jax.random.key(1), (BATCH, LENGTH, CONFIG.hidden_size)))


def _sharded(axes: dict, **mesh_fields) -> SparseMoE:
    runtime = mesh_runtime(**axes, **mesh_fields)
    return placed(_layer(runtime), runtime)


def _loss(moe, x):
    out, stats = moe(x, jnp.ones(x.shape[:2], bool))
    return jnp.sum(out * jnp.cos(out)), (out, stats)


_value_and_grad = nnx.jit(nnx.value_and_grad(_loss, argnums=(0, 1), has_aux=True))


@pytest.fixture(scope="module")
def reference():
    return _value_and_grad(_layer(), _inputs())


@pytest.mark.parametrize("axes", MESHES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_sharded_layer_matches_single_device(reference, axes):
    """Capacity dispatch with a capacity that drops nothing; without an expert axis, the per-device local one."""
    moe = _sharded(axes, expert_dispatch="capacity", capacity_factor=NO_DROP)
    assert moe.expert_parallel.dispatch == ("capacity" if "expert" in axes else "local")
    (loss, (out, stats)), grads = _value_and_grad(moe, _inputs())
    (ref_loss, (ref_out, ref_stats)), ref_grads = reference
    assert float(stats.dropped) == 0.0
    assert_trees_close(out, ref_out)
    assert_trees_close(stats, ref_stats)
    assert_trees_close(grads, ref_grads)
    layer_grads = grads[0]
    for name in ("experts_gate", "experts_up", "experts_down"):
        g = np.asarray(layer_grads[name][...])
        assert np.abs(g[UNUSED_EXPERT]).max() == 0.0  # exactly zero: it only ever multiplied zero rows
        assert np.abs(np.delete(g, UNUSED_EXPERT, axis=0)).min(axis=(1, 2)).max() > 0.0


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                               axis_name):
    """``jax.lax.ragged_all_to_all`` as documented, from all_gather + scatter (XLA:CPU lacks the primitive)."""
    del recv_sizes  # implied by the senders' send_sizes
    ep = jax.lax.axis_size(axis_name)
    per_device = input_offsets.shape[0] // ep
    me = jax.lax.axis_index(axis_name)
    operands, starts, sizes, targets = (jax.lax.all_gather(a, axis_name)
                                        for a in (operand, input_offsets, send_sizes, output_offsets))
    rows = jnp.arange(operand.shape[0])
    for source in range(ep):
        for j in range(per_device):
            i = me * per_device + j  # the source's slice addressed to this device
            start, size, target = starts[source, i], sizes[source, i], targets[source, i]
            inside = (rows >= start) & (rows < start + size)
            index = jnp.where(inside, target + rows - start, output.shape[0])
            output = output.at[index].set(operands[source], mode="drop")
    return output


def test_dropless_dispatch_matches_single_device_with_emulated_collective(reference, monkeypatch):
    monkeypatch.setattr(expert_parallel, "ragged_all_to_all", emulated_ragged_all_to_all)
    # Built for a GPU target (dispatch auto -> dropless); the CPU devices run it with the emulated collective and
    # ragged_dot grouped matmuls.
    moe = _sharded(dict(expert=4, tensor=2), backend="gpu")
    assert moe.expert_parallel.dispatch == "dropless"
    (loss, (out, stats)), grads = _value_and_grad(moe, _inputs())
    (ref_loss, (ref_out, _)), ref_grads = reference
    assert float(stats.dropped) == 0.0
    assert_trees_close(out, ref_out)
    assert_trees_close(grads, ref_grads)


def test_small_capacity_drops_the_hand_counted_assignments():
    shards, factor = 8, 0.5  # tokens split over data x expert
    moe = _sharded(dict(expert=4, data=2), expert_dispatch="capacity", capacity_factor=factor)
    x = _inputs()
    out, stats = nnx.jit(lambda m, x: m(x, jnp.ones(x.shape[:2], bool)))(moe, x)

    # Hand count: each device holds BATCH / 8 consecutive sequences and fills `capacity` slots per expert with
    # its assignments in priority order (all first choices in token order, then all second choices).
    layer = _layer()
    k, num_experts = CONFIG.num_experts_per_tok, CONFIG.num_experts
    tokens = np.asarray(x).reshape(shards, -1, CONFIG.hidden_size)  # [device, local token, H]
    local = tokens.shape[1]
    capacity = int(np.ceil(factor * local * k / num_experts))
    logits = tokens @ np.asarray(layer.router[...])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    choice = np.argsort(-probs, axis=-1, kind="stable")[..., :k]  # [device, token, k]
    weight = np.take_along_axis(probs, choice, -1)
    weight /= weight.sum(-1, keepdims=True)
    gate, up, down = (np.asarray(getattr(layer, name)[...]) for name in ("experts_gate", "experts_up", "experts_down"))
    removed = np.zeros_like(tokens)
    dropped = 0
    for device in range(shards):
        used = np.zeros(num_experts, int)
        for j in range(k):
            for t in range(local):
                e = choice[device, t, j]
                used[e] += 1
                if used[e] > capacity:
                    dropped += 1
                    h = tokens[device, t] @ gate[e]
                    removed[device, t] += weight[device, t, j] * ((h / (1 + np.exp(-h))) * (tokens[device, t] @ up[e])
                                                                  ) @ down[e]
    assert dropped > 0
    assert float(stats.dropped) == dropped
    full, _ = layer(x, jnp.ones(x.shape[:2], bool))  # single device, nothing dropped
    np.testing.assert_allclose(np.asarray(out), np.asarray(full) - removed.reshape(x.shape), atol=1e-5)


@pytest.mark.parametrize("buffer", [None, 10], ids=["worst-case", "clipped"])
def test_ragged_plan_groups_rows_by_local_expert_and_returns_them(buffer):
    """Apply the plans with the documented ragged_all_to_all semantics (numpy) to rows tagged (source, expert, i)."""
    ep, e_loc = 4, 3
    counts = np.random.default_rng(0).integers(0, 4, (ep, ep * e_loc))
    counts[1, 3:6] = 0  # device 1 receives nothing from source 1
    sent = {s: np.array([(s, e, i) for e in range(ep * e_loc) for i in range(counts[s, e])], int).reshape(-1, 3)
            for s in range(ep)}
    rows = ep * counts.sum(1).max() if buffer is None else buffer
    plans = [expert_parallel.ragged_plan(jnp.asarray(counts.reshape(ep, ep, e_loc)), s, rows) for s in range(ep)]

    def exchange(buffers, which, out_rows):
        result = {d: np.full((out_rows[d], 3), -1) for d in range(ep)}
        for s in range(ep):
            plan = plans[s][which]
            for i in range(ep * e_loc):
                d, j = divmod(i, e_loc)
                size, start, at = int(plan.send_sizes[i]), int(plan.input_offsets[i]), int(plan.output_offsets[i])
                assert int(plans[d][which].recv_sizes[s * e_loc + j]) == size  # the receiver expects what is sent
                assert at + size <= out_rows[d]
                result[d][at:at + size] = buffers[s][start:start + size]
        return result

    received = exchange(sent, 0, {d: rows for d in range(ep)})
    kept = set()
    for d in range(ep):
        expected = sorted((e, s, i) for s, e, i in np.concatenate(list(sent.values())) if e // e_loc == d)[:rows]
        kept.update(expected)
        group_sizes = np.asarray(plans[d][2])
        assert group_sizes.tolist() == [sum(e == d * e_loc + j for e, _, _ in expected) for j in range(e_loc)]
        assert [(e, s, i) for s, e, i in received[d][:len(expected)]] == expected  # by expert, then source
        assert (received[d][len(expected):] == -1).all()
    returned = exchange(received, 1, {s: len(sent[s]) for s in range(ep)})
    for s in range(ep):
        accepted = np.array([(e, s_, i) in kept for s_, e, i in sent[s]], bool)
        np.testing.assert_array_equal(returned[s][accepted], sent[s][accepted])
        assert (returned[s][~accepted] == -1).all()
        assert int(plans[s][3]) == (~accepted).sum()
    assert (len(kept) < counts.sum()) == (buffer is not None)


@pytest.fixture
def v5p_topology():
    pytest.importorskip("libtpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling needs no TPU lockfile
    from jax.experimental import topologies

    return topologies.get_topology_desc(topology_name="v5p:2x2x1", platform="tpu")


def test_dropless_dispatch_compiles_for_tpu(v5p_topology):
    """ragged_all_to_all has no XLA:CPU implementation: AOT-compile forward + backward for 4 v5p chips."""
    from jax.sharding import NamedSharding

    from qwen35_jax.parallel.mesh import MeshConfig, build_mesh
    from qwen35_jax.parallel.rules import state_shardings

    config = tiny_config(hidden_size=128, moe_intermediate_size=64, dtype="bfloat16", param_dtype="bfloat16")
    mesh_config = MeshConfig.from_config(dict(expert=4))
    runtime = Runtime.for_mesh(build_mesh(mesh_config, v5p_topology.devices), mesh_config)
    mesh = runtime.mesh
    moe = nnx.eval_shape(lambda: SparseMoE(config, runtime=runtime, rngs=nnx.Rngs(0)))
    assert moe.expert_parallel.dispatch == "dropless"
    graphdef, state = nnx.split(moe)
    shardings = state_shardings(state, mesh, runtime.rules)
    state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings)
    x = jax.ShapeDtypeStruct((8, 256, 128), jnp.bfloat16, sharding=NamedSharding(mesh, jax.P("expert")))

    def loss(state, x):
        out, _ = nnx.merge(graphdef, state)(x, jnp.ones(x.shape[:2], bool))
        return jnp.sum(out.astype(jnp.float32) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, x).compile()
    assert compiled.as_text().count("ragged-all-to-all") >= 2  # dispatch and return (and their transposes)
