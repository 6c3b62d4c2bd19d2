"""The gated delta rule split over 2, 4 and 8 sequence shards (8 CPU devices) against the one-device token recurrence:
outputs, final state and every gradient, with and without an initial state, Hv = 4·Hk, documents starting before,
exactly at and across shard boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from parallel_helpers import mesh_runtime

from qwen35_jax.ops import gated_delta_rule
from qwen35_jax.ops.gated_delta_rule.sharded import ShardedDeltaRule, delta_rule_for
from qwen35_jax.parallel.sharding import sequence_shards

BATCH, LENGTH, HK, HV, DK, DV = 2, 512, 2, 8, 16, 16
# Each mesh splits the sequence `sequence` ways; the other axes split the batch and the GDN heads.
MESHES = {2: dict(sequence=2, fsdp=2, tensor=2), 4: dict(sequence=4, fsdp=2), 8: dict(sequence=8)}


def _inputs(seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 6)
    q = jax.random.normal(keys[0], (BATCH, LENGTH, HK, DK))
    k = jax.random.normal(keys[1], (BATCH, LENGTH, HK, DK))
    v = jax.random.normal(keys[2], (BATCH, LENGTH, HV, DV))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (BATCH, LENGTH, HV))) * 0.1
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (BATCH, LENGTH, HV)))
    state = jax.random.normal(keys[5], (BATCH, HV, DK, DV)) * 0.5
    return q, k, v, g, beta, state


def _segments(shards: int) -> jax.Array:
    """Row 0: documents starting 5 tokens before a boundary, exactly at one and one spanning several shards;
    row 1: documents starting mid-shard only."""
    piece = LENGTH // shards
    rows = []
    for starts in ([piece - 5, piece, piece + 3, 2 * piece + 1], [37, 3 * piece // 2 + 11]):
        ids = np.ones(LENGTH, np.int32)
        for start in starts:
            if start < LENGTH:
                ids[start:] += 1
        rows.append(ids)
    return jnp.asarray(np.stack(rows))


def _loss_fn(rule):
    weights = jax.random.normal(jax.random.key(9), (BATCH, LENGTH, HV, DV))
    state_weights = jax.random.normal(jax.random.key(10), (BATCH, HV, DK, DV))

    def loss(q, k, v, g, beta, state, segment_ids):
        o, final = rule(q, k, v, g, beta, segment_ids, state)
        return jnp.sum(o * weights) + jnp.sum(final * state_weights), (o, final)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5), has_aux=True))


def _reference(q, k, v, g, beta, segment_ids, state):
    return gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state, output_final_state=True,
                            impl="recurrent")


def _assert_close(actual, expected, rtol=1e-5):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        scale = float(jnp.max(jnp.abs(e))) + 1e-30
        assert float(jnp.max(jnp.abs(a - e))) <= rtol * scale, (float(jnp.max(jnp.abs(a - e))), scale)


@pytest.mark.parametrize("impl", ["chunked", "recurrent"])
@pytest.mark.parametrize("with_state", [True, False], ids=["initial-state", "zero-state"])
@pytest.mark.parametrize("shards", [2, 4, 8])
def test_sequence_shards_match_one_device(shards, with_state, impl):
    q, k, v, g, beta, state = _inputs()
    state = state if with_state else None
    segment_ids = _segments(shards)
    runtime = mesh_runtime(**MESHES[shards])
    assert sequence_shards(runtime) == shards
    rule = delta_rule_for(impl, runtime)
    assert isinstance(rule, ShardedDeltaRule)

    def sharded(q, k, v, g, beta, segment_ids, state):
        return rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state, output_final_state=True)

    zero = jnp.zeros((BATCH, HV, DK, DV)) if state is None else state  # the reference's gradient needs an array
    (_, (o, final)), grads = _loss_fn(sharded)(q, k, v, g, beta, state if with_state else None, segment_ids)
    (_, (ref_o, ref_final)), ref_grads = _loss_fn(_reference)(q, k, v, g, beta, zero, segment_ids)
    _assert_close((o, final), (ref_o, ref_final))
    _assert_close(grads[:5], ref_grads[:5])
    if with_state:
        _assert_close(grads[5], ref_grads[5])


@pytest.mark.parametrize("exchange", ["scan", "gather"])
def test_exchanges_agree_without_segments(exchange):
    """Both ways of composing the shards' state maps, one document over all 8 shards."""
    q, k, v, g, beta, state = _inputs(1)
    segment_ids = jnp.ones((BATCH, LENGTH), jnp.int32)
    rule = delta_rule_for("chunked", mesh_runtime(sequence=8, gdn_state_exchange=exchange))  # config.mesh field
    assert rule.exchange == exchange

    def sharded(q, k, v, g, beta, segment_ids, state):
        return rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state, output_final_state=True)

    (_, outs), grads = _loss_fn(sharded)(q, k, v, g, beta, state, segment_ids)
    (_, ref_outs), ref_grads = _loss_fn(_reference)(q, k, v, g, beta, state, segment_ids)
    _assert_close(outs, ref_outs)
    _assert_close(grads, ref_grads)


def test_sequence_not_divisible_by_shards_times_chunk_is_refused():
    q, k, v, g, beta = (x[:, :480] for x in _inputs()[:5])
    runtime = mesh_runtime(sequence=4, fsdp=2)
    rule = delta_rule_for("chunked", runtime)
    with pytest.raises(ValueError, match=r"sequence length 480 is not a multiple of .* = 256: choose data.seq_len"):
        rule(q, k, v, g, beta, segment_ids=jnp.ones((BATCH, 480), jnp.int32))


@pytest.mark.slowtier  # ~70 s in interpret mode; the kernel's own tests and the chunked form across shards stay in CI
def test_pallas_tpu_kernel_across_shards_interpret():
    """The Mosaic kernel (interpret mode) as the per-shard core: its initial state in, its shard's map out."""
    length = 256
    q, k, v, g, beta, state = (x[:, :length] if x.shape[1] == LENGTH else x for x in _inputs(2))
    segment_ids = jnp.asarray(np.repeat([[1, 2]], length // 2, axis=1).reshape(1, length).repeat(BATCH, 0))
    mesh = mesh_runtime(sequence=2, fsdp=4).mesh
    spec4, spec3, ids = P(None, "sequence"), P(None, "sequence"), P(None, "sequence")

    def local(q, k, v, g, beta, segment_ids, state):
        o, final = gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state,
                                    output_final_state=True, impl="pallas_tpu", interpret=True,
                                    sequence_axes=("sequence",))
        return o, final[None]

    def sharded(q, k, v, g, beta, segment_ids, state):
        o, finals = jax.shard_map(local, mesh=mesh, in_specs=(spec4, spec4, spec4, spec3, spec3, ids, P()),
                                  out_specs=(spec4, P("sequence")), check_vma=False)(q, k, v, g, beta, segment_ids,
                                                                                     state)
        return o, finals[-1]

    weights = jax.random.normal(jax.random.key(9), v.shape)

    def loss(rule):
        def f(v, state):
            o, final = rule(q, k, v, g, beta, segment_ids, state)
            return jnp.sum(o * weights) + jnp.sum(final)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(v, state)

    _assert_close(loss(sharded), loss(_reference))


def test_unknown_state_exchange_is_refused():
    with pytest.raises(ValueError, match=r"config.mesh.gdn_state_exchange='ring' is invalid: choose one of"):
        mesh_runtime(sequence=8, gdn_state_exchange="ring")
