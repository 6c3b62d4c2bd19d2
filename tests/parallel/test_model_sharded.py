"""The whole tiny MoE model on 8 CPU devices (data / fsdp / tensor / expert meshes) against one device (fp32)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from parallel_helpers import assert_trees_close, mesh_runtime, random_model, tiny_config

from qwen35_jax.model import validate_model
from qwen35_jax.ops.gated_delta_rule.sharded import DeltaRule
from qwen35_jax.train.losses import masked_cross_entropy

CONFIG = tiny_config()
# Each case compiles the model's forward + backward (~20-45 s on 2 cores); the MoE layer tests cover every mesh fast,
# so the other two meshes are in the slow tier (`make check-slow`).
MESHES = [dict(expert=2, fsdp=2, tensor=2), pytest.param(dict(expert=4, data=2), marks=pytest.mark.slowtier),
          pytest.param(dict(expert=8), marks=pytest.mark.slowtier)]
NO_DROP = CONFIG.num_experts / CONFIG.num_experts_per_tok


def _batch():
    ids = jax.random.randint(jax.random.key(3), (8, 17), 0, CONFIG.vocab_size)
    return ids[:, :-1], ids[:, 1:]


def _loss(model, inputs, targets):
    out = model(inputs)
    loss = masked_cross_entropy(out.logits, targets, jnp.ones(targets.shape, bool))
    return loss + CONFIG.router_aux_loss_coef * out.aux_loss, (out.logits, out.router_stats)


_value_and_grad = nnx.jit(nnx.value_and_grad(_loss, has_aux=True))


@pytest.fixture(scope="module")
def reference():
    return _value_and_grad(random_model(CONFIG), *_batch())


@pytest.mark.parametrize("axes", MESHES, ids=["expert2-fsdp2-tensor2", "expert4-data2", "expert8"])
def test_sharded_model_matches_single_device(reference, axes):
    runtime = mesh_runtime(**axes, capacity_factor=NO_DROP)
    validate_model(CONFIG, runtime)
    model = random_model(CONFIG, runtime=runtime)
    assert model.decoder.blocks.layers[0].mlp.expert_parallel.dispatch == "capacity"
    assert model.decoder.blocks.layers[0].linear_attn.delta_rule == DeltaRule("recurrent", "cpu")  # XLA partitions it
    (loss, (logits, stats)), grads = _value_and_grad(model, *_batch())
    (ref_loss, (ref_logits, ref_stats)), ref_grads = reference
    assert float(stats.dropped) == 0.0
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert_trees_close(logits, ref_logits)
    assert_trees_close(stats, ref_stats)
    assert_trees_close(grads, ref_grads)
    expert_grads = grads["decoder"]["blocks"]["layers"][0]["mlp"]["experts_gate"][...]
    assert expert_grads.sharding.spec[1] == "expert"  # gradients stay sharded like the parameters
