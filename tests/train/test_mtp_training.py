"""The MTP loss in the training step (``train.mtp_loss_weight`` / ``train.mtp_depth``, numerics §2.9, §10): off by
default and then exactly today's loss; on, ``ce + w · mean_k CE_k`` (+ the aux coefficient x the MTP MoE layer's
aux loss) with the batch's loss mask aligned to each step's targets; and training lowers the MTP cross-entropy."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.model.mtp import mtp_loss, mtp_steps
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.optimizer import make_optimizer
from qwen35_jax.train.step import make_loss_fn, make_train_step
from qwen35_jax.train.trainer import TRAIN_COUNTERS

V = 64
MODEL = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, full_attention_interval=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, intermediate_size=64, linear_num_key_heads=2,
             linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, mrope_section=None,
             mtp_num_hidden_layers=1, gdn_impl="recurrent")
MOE = dict(intermediate_size=0, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=16)


def experiment(model: ModelConfig, **train) -> ml_collections.ConfigDict:
    config = fill_defaults(ml_collections.ConfigDict({"model": model.to_dict(), "train": {"warmup_steps": 0, **train},
                                                      "data": {"seq_len": 12, "batch_size": 2}}))
    validate_config(config)
    return config


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.3):
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Qwen35ForCausalLM(cfg, rngs=nnx.Rngs(0))),
                                         nnx.Param, ...)
    rng = np.random.default_rng(seed)
    return graphdef, jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), abstract), rest


def packed_batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Two documents in row 0, one then padding in row 1, and one masked target (a prompt token) in row 1."""
    ids = np.random.default_rng(seed).integers(1, V, (2, 13)).astype(np.int32)
    segments = np.array([[1] * 7 + [2] * 5, [1] * 9 + [0] * 3], np.int32)
    loss_mask = (segments > 0) & (segments == np.pad(segments[:, 1:], ((0, 0), (0, 1))))
    loss_mask[1, 3] = False
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segments, "loss_mask": loss_mask}


def test_weight_zero_is_the_plain_loss():
    cfg = ModelConfig(**MODEL)
    graphdef, params, rest = random_params(cfg)
    filled = experiment(cfg).train  # mtp_loss_weight = 0.0 by default
    older = ml_collections.ConfigDict({k: v for k, v in filled.items() if not k.startswith("mtp_")})
    batch = packed_batch()
    run = jax.jit(lambda p, b: (make_loss_fn(graphdef, rest, cfg, filled)(p, b),
                                make_loss_fn(graphdef, rest, cfg, older)(p, b)))
    (loss, metrics), (old_loss, old_metrics) = run(params, batch)
    assert float(loss) == float(old_loss) == float(metrics["ce"] + 0.001 * metrics["aux_loss"])
    assert metrics.keys() == old_metrics.keys() and not any(k.startswith("mtp") for k in metrics)


def test_weighted_loss_adds_the_mtp_cross_entropy_and_aux():
    cfg = ModelConfig(**{**MODEL, **MOE})
    graphdef, params, rest = random_params(cfg, seed=1)
    weight, depth, aux_coef = 0.5, 2, 0.01
    train = experiment(cfg, mtp_loss_weight=weight, mtp_depth=depth, aux_loss_coef=aux_coef).train
    batch = packed_batch(1)
    ids, segments = batch["input_ids"], batch["segment_ids"]

    @jax.jit
    def run(p, b):
        model = nnx.merge(graphdef, p, rest)
        out = model(b["input_ids"], segment_ids=b["segment_ids"])
        steps = mtp_steps(model, out.hidden_states, b["input_ids"], depth=depth, segment_ids=b["segment_ids"])
        # mtp_loss called directly: its mask is per input position, the batch's per (input, target) pair.
        direct = mtp_loss(model, out.hidden_states, b["input_ids"], depth=depth, weight=weight,
                          segment_ids=b["segment_ids"], loss_mask=jnp.pad(b["loss_mask"][:, :-1], ((0, 0), (1, 0))))
        return make_loss_fn(graphdef, rest, cfg, train)(p, b), out.aux_loss, steps.logits, direct

    (loss, metrics), aux, logits, direct = run(params, batch)
    # Step k (1-based) at position t predicts ids[t+k+1]; it counts where the batch trains the pair (t+k, t+k+1)
    # (loss_mask[t+k]) and t, t+k+1 are one document: built here from the batch fields, not from mtp.py's shifts.
    expected = []
    for k, step_logits in enumerate(logits, start=1):
        lp = jax.nn.log_softmax(np.asarray(step_logits, np.float64), axis=-1)
        total, count = 0.0, 0
        for row in range(2):
            for t in range(12 - k - 1):
                if batch["loss_mask"][row, t + k] and segments[row, t] == segments[row, t + k + 1] != 0:
                    total -= float(lp[row, t, ids[row, t + k + 1]])
                    count += 1
        expected.append(total / count)
    np.testing.assert_allclose(metrics["mtp_ce"], np.mean(expected), rtol=1e-5)
    np.testing.assert_allclose([metrics["mtp_ce_1"], metrics["mtp_ce_2"]], expected, rtol=1e-5)
    # ... and the same as mtp_loss called directly on the same parameters and hidden states.
    np.testing.assert_allclose(direct.step_losses, expected, rtol=1e-5)
    np.testing.assert_allclose(direct.loss, weight * np.mean(expected), rtol=1e-5)
    assert float(metrics["mtp_aux_loss"]) > 0
    np.testing.assert_allclose(metrics["mtp_aux_loss"], direct.aux_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["aux_loss"], aux, rtol=1e-6)
    np.testing.assert_allclose(loss, metrics["ce"] + aux_coef * aux + weight * np.mean(expected)
                               + aux_coef * direct.aux_loss, rtol=1e-5)


def test_training_lowers_the_mtp_cross_entropy_with_a_chunked_head():
    cfg = ModelConfig(**MODEL)
    config = experiment(cfg, mtp_loss_weight=1.0, loss_chunk=4, learning_rate=1e-2, steps=8)
    graphdef, params, rest = random_params(cfg, seed=2, scale=0.1)
    tx, schedule = make_optimizer(config.train, params)
    state = {"params": params, "opt_state": jax.jit(tx.init)(params), "rng": jax.random.key_data(jax.random.key(0)),
             **{name: jnp.zeros((), jnp.int32) for name in TRAIN_COUNTERS}}
    step = make_train_step(graphdef, rest, tx, schedule, cfg, config.train)  # the step experiments.train runs
    batch, history = packed_batch(2), []
    for _ in range(8):
        state, out = step(state, batch, np.asarray(False))
        history.append({k: float(v) for k, v in jax.device_get(out).items()})
    assert all(h["finite"] for h in history)
    first, last = history[0], history[-1]
    np.testing.assert_allclose(first["loss"], first["ce"] + first["mtp_ce"], rtol=1e-5)  # dense: no aux terms
    assert last["mtp_ce"] < first["mtp_ce"] - 0.1, [h["mtp_ce"] for h in history]
