"""Model behaviour that the reference fixtures do not cover: packing, remat, jit, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM

TINY_MOE = dict(vocab_size=128, hidden_size=32, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                linear_value_head_dim=8, mrope_section=(1, 1, 0), num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=16, shared_expert_intermediate_size=16, mtp_num_hidden_layers=0)


def _model(**changes) -> Qwen35ForCausalLM:
    return Qwen35ForCausalLM(ModelConfig(**{**TINY_MOE, **changes}), rngs=nnx.Rngs(0))


def test_packed_documents_do_not_interact():
    """Two documents packed in one row give the same logits as each run alone (GDN, conv and attention reset)."""
    model = _model()
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 128, 37), rng.integers(0, 128, 70)
    packed = jnp.asarray(np.concatenate([a, b])[None])
    segments = jnp.asarray(np.repeat([1, 2], [len(a), len(b)])[None])
    positions = jnp.asarray(np.concatenate([np.arange(len(a)), np.arange(len(b))])[None])
    together = model(packed, segment_ids=segments, positions=positions).logits[0]
    alone_a = model(jnp.asarray(a[None])).logits[0]
    alone_b = model(jnp.asarray(b[None])).logits[0]
    np.testing.assert_allclose(together[: len(a)], alone_a, atol=2e-5)
    np.testing.assert_allclose(together[len(a):], alone_b, atol=2e-5)


# Each policy compiles a forward + backward (~30 s on 2 cores): "dots" is in the slow tier (`make check-slow`).
@pytest.mark.parametrize("policy", ["full", pytest.param("dots", marks=pytest.mark.slowtier)])
def test_remat_policies_give_identical_gradients(policy):
    ids = jnp.asarray(np.random.default_rng(1).integers(0, 128, (2, 24)))

    def loss(model):
        out = model(ids)
        return jnp.mean(jax.nn.logsumexp(out.logits, -1)) + 0.01 * out.aux_loss

    plain = nnx.grad(loss)(_model())
    remat = nnx.grad(loss)(_model(remat_policy=policy))
    for g1, g2 in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unroll", [2, pytest.param(3, marks=pytest.mark.slowtier)])  # 3: past num_blocks (slow tier)
def test_unrolled_layer_scan_gives_identical_logits_and_gradients(unroll):
    """scan_unroll only changes how the 2 hybrid blocks are looped (fully unrolled at 2, and past num_blocks)."""
    ids = jnp.asarray(np.random.default_rng(4).integers(0, 128, (2, 24)))

    @nnx.jit
    def logits_and_grads(model):
        return nnx.value_and_grad(lambda m: jnp.mean(jax.nn.logsumexp(m(ids).logits, -1)))(model)

    (loss, grads), (loss_unrolled, grads_unrolled) = (logits_and_grads(_model()),
                                                      logits_and_grads(_model(scan_unroll=unroll)))
    np.testing.assert_allclose(loss, loss_unrolled, rtol=1e-6)
    for g1, g2 in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_unrolled), strict=True):
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def test_jit_matches_eager_and_multimodal_positions_reduce_to_text():
    model = _model(num_experts=0, intermediate_size=48)
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 128, (1, 20)))
    eager = model(ids).logits
    jitted = nnx.jit(lambda m, x: m(x).logits)(model, ids)
    np.testing.assert_allclose(eager, jitted, atol=1e-5)
    text_positions = jnp.arange(20)[None]
    three_rows = jnp.broadcast_to(text_positions, (3, 1, 20))
    np.testing.assert_allclose(model(ids, positions=three_rows).logits, eager, atol=1e-6)


def test_expert_with_no_tokens_gets_zero_gradient():
    from qwen35_jax.model.moe import SparseMoE
    from qwen35_jax.parallel import Runtime

    moe = SparseMoE(ModelConfig(**TINY_MOE), runtime=Runtime.local(), rngs=nnx.Rngs(0))
    x = jnp.abs(jax.random.normal(jax.random.key(1), (2, 8, 32)))  # positive inputs ...
    router = jnp.abs(moe.router[...])
    moe.router[...] = router.at[:, 3].set(-router[:, 3])  # ... so expert 3 always scores lowest

    def loss(module):
        out, stats = module(x, jnp.ones((2, 8), bool))
        return jnp.mean(out**2), stats

    grads, stats = nnx.grad(loss, has_aux=True)(moe)
    assert float(stats.assignments[3]) == 0.0 and float(stats.assignments.sum()) == 2 * 8 * 2
    for name in ("experts_gate", "experts_up", "experts_down"):
        g = grads[name][...]
        assert float(jnp.abs(g[3]).max()) == 0.0
        assert float(jnp.abs(g[:3]).max()) > 0.0
