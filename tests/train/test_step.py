"""Gradient accumulation and the z-loss in the training step's loss (tiny model, one compile per variant)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train.config_schema import fill_defaults
from qwen35_jax.train.step import _accumulate, make_loss_fn

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_accumulated_gradients_match_the_full_batch():
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = fill_defaults(module.get_config("test"))
    config.train.update(aux_loss_coef=0.0, z_loss=1e-2)  # the aux loss pools over all tokens: not additive
    # 2 layers (GDN + attention), dense FFN: the accumulation logic is model-agnostic, compilation time is not.
    model_config = ModelConfig.from_dict({**config.model.to_dict(), "vocab_size": 64, "num_hidden_layers": 2,
                                          "full_attention_interval": 2, "num_experts": 0, "num_experts_per_tok": 0,
                                          "moe_intermediate_size": 0, "shared_expert_intermediate_size": 0,
                                          "intermediate_size": 32})
    # Random parameters from the abstract model (eager initialisation compiles ~100 small ops on CPU: slow).
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(0))),
                                         nnx.Param, ...)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), abstract)
    ids = rng.integers(0, 64, size=(4, 9)).astype(np.int32)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": np.ones((4, 8), np.int32),
             "loss_mask": np.ones((4, 8), bool)}  # equal target counts: the mean of micro-batch means is the mean
    grad_fn = jax.value_and_grad(make_loss_fn(graphdef, rest, model_config, config.train), has_aux=True)
    full, accumulated = jax.jit(lambda p, b: (_accumulate(grad_fn, p, b, 1), _accumulate(grad_fn, p, b, 2)))(
        params, batch)  # one compilation for both
    (loss, metrics), grads = full
    (loss2, metrics2), grads2 = accumulated
    np.testing.assert_allclose(loss2, loss, rtol=1e-5)
    np.testing.assert_allclose(metrics2["z_loss"], metrics["z_loss"], rtol=1e-5)
    assert float(loss) == float(jnp.float32(metrics["ce"] + 1e-2 * metrics["z_loss"]))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2), strict=True):
        np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-6)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
