"""ContextParallelAttention on the 8 CPU devices: outputs and q/k/v gradients equal the single-device dense
attention for sequence, batch and head sharding mixes, GQA with kv heads split or replicated, and segment resets
around the shard boundaries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen35_jax.model.attention import attention_mask, multihead_attention
from qwen35_jax.ops.attention import ContextParallelAttention
from qwen35_jax.parallel import MeshConfig, build_mesh
from qwen35_jax.parallel.rules import DEFAULT_RULES, check_rules

TOL = 1e-5
LENGTH = 64


def mesh_of(**axes):
    """A mesh of ``axes`` (others 1) on the first prod(axes) CPU devices."""
    fields = dict({"fsdp": 1}, **axes)
    count = int(np.prod(list(fields.values())))
    return build_mesh(MeshConfig.from_config(fields), jax.devices()[:count])


def segments_around_boundaries():
    """Row 0 resets before (13, 31), exactly at (16, 32) and between (45) the shard boundaries of 2, 4 and 8 shards
    (multiples of 32, 16, 8) so that documents also cross boundaries; row 1 has two long documents crossing many
    boundaries and trailing padding (id 0)."""
    row0 = np.searchsorted([13, 16, 31, 32, 45], np.arange(LENGTH), side="right") + 1
    row1 = np.searchsorted([8, 40], np.arange(LENGTH), side="right") + 1
    row1[58:] = 0
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err, scale = np.abs(actual - expected).max(), np.abs(expected).max()
    assert err <= TOL * scale, f"{what}: max |Δ| {err:.3g} > {TOL} × {scale:.3g}"


def check_against_dense(attention, nq, nkv, hd=8, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (2, LENGTH, nq, hd))
    k = jax.random.normal(ks[1], (2, LENGTH, nkv, hd))
    v = jax.random.normal(ks[2], (2, LENGTH, nkv, hd))
    ct = jax.random.normal(ks[3], q.shape)
    segments = segments_around_boundaries()

    def loss(attend, q, k, v):
        out = attend(q, k, v, segments)
        return jnp.sum(out * ct), out

    dense = lambda q, k, v, s: multihead_attention(q, k, v, attention_mask(s))
    grads, out = jax.jit(jax.grad(lambda *a: loss(attention, *a), (0, 1, 2), has_aux=True))(q, k, v)
    want_grads, want = jax.grad(lambda *a: loss(dense, *a), (0, 1, 2), has_aux=True)(q, k, v)
    assert_close(out, want, "output")
    for name, got, exp in zip("qkv", grads, want_grads, strict=True):
        assert_close(got, exp, f"d{name}")


@pytest.mark.parametrize("axes, nq, nkv, block_q, block_k", [
    (dict(sequence=2), 4, 2, 16, 8),
    (dict(sequence=4), 2, 2, 8, 16),
    (dict(sequence=8), 4, 1, 16, 16),
    (dict(sequence=2, fsdp=2, tensor=2), 4, 2, 8, 8),  # kv heads split like the query heads
    (dict(sequence=2, data=2, tensor=2), 4, 1, 16, 8),  # nkv < tensor: replicated, one kv head per device
    (dict(sequence=2, tensor=2), 6, 3, 8, 8),  # 3 query heads per device straddle kv groups of 2
    (dict(fsdp=2, tensor=2), 4, 2, 16, 16),  # no sequence sharding: nothing gathered
], ids=lambda x: "-".join(f"{k}{v}" for k, v in x.items()) if isinstance(x, dict) else None)
def test_matches_single_device(axes, nq, nkv, block_q, block_k):
    attention = ContextParallelAttention(mesh_of(**axes), DEFAULT_RULES, block_q=block_q, block_k=block_k)
    check_against_dense(attention, nq, nkv)


def test_custom_rules_two_sequence_axes():
    """act_seq over (fsdp, sequence) and kv heads always replicated: the gather order matches the shard index, and
    each device slices the two kv heads of its four query heads."""
    rules = check_rules([("act_batch", "data"), ("act_seq", ("fsdp", "sequence")), ("q_heads", "tensor"),
                         ("kv_heads", None)])
    attention = ContextParallelAttention(mesh_of(fsdp=2, sequence=2, tensor=2), rules, block_q=8, block_k=8)
    layout = attention.layout((2, LENGTH, 8, 8), (2, LENGTH, 4, 8), (2, LENGTH, 4, 8), (2, LENGTH))
    assert layout.seq == ("fsdp", "sequence") and not layout.kv_split
    check_against_dense(attention, 8, 4)


def test_rejects_indivisible_sequence():
    attention = ContextParallelAttention(mesh_of(sequence=8), DEFAULT_RULES)
    q, k = jnp.zeros((2, 100, 4, 8)), jnp.zeros((2, 100, 2, 8))
    with pytest.raises(ValueError, match=r"sequence length 100 is not divisible by mesh.sequence=8: choose "
                                         r"data.seq_len a multiple of 8"):
        attention(q, k, k, jnp.ones((2, 100), jnp.int32))
    rules = check_rules([("act_seq", ("fsdp", "sequence"))])
    attention = ContextParallelAttention(mesh_of(fsdp=2, sequence=4), rules)
    with pytest.raises(ValueError, match=r"mesh.fsdp=2 x mesh.sequence=4: choose data.seq_len a multiple of 8"):
        attention(q, k, k, jnp.ones((2, 100), jnp.int32))
    with pytest.raises(ValueError, match="segment_ids"):
        attention(q[:, :64], k[:, :64], k[:, :64], jnp.ones((2, 100), jnp.int32))
