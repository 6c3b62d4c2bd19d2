"""Schedules (cosine / wsd / constant), Muon against optax's own Muon leaf by leaf, and µP's learning-rate factors."""

import importlib.util
import math
import pathlib

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from optax.contrib import muon

from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.optimizer import _path_names, decay_mask, make_optimizer, make_schedule

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny(**model):
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = fill_defaults(module.get_config("test"))
    config.model.update(**model)
    return config


def lrs(train, steps):
    return np.asarray(make_schedule(train)(np.arange(steps + 1)), np.float64)


def test_cosine_is_the_schedule_of_before():
    train = tiny().train
    expected = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, train.warmup_steps, train.steps,
                                                  train.learning_rate * train.min_lr_ratio)
    np.testing.assert_array_equal(lrs(train, train.steps), np.asarray(expected(np.arange(train.steps + 1))))


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_warms_up_holds_then_cools_down(shape):
    train = tiny().train
    train.update(schedule="wsd", steps=20, warmup_steps=4, decay_fraction=0.25, decay_shape=shape, min_lr_ratio=0.0)
    lr, peak = lrs(train, 20), train.learning_rate
    np.testing.assert_allclose(lr[:5], peak * np.arange(5) / 4, rtol=1e-6)
    np.testing.assert_allclose(lr[4:16], peak, rtol=1e-6)  # stable until the last 25 % (5 steps)
    progress = np.arange(6) / 5
    cool = 1 - progress if shape == "linear" else 1 - np.sqrt(progress)
    np.testing.assert_allclose(lr[15:], peak * cool, rtol=1e-5, atol=1e-9)


def test_constant_and_explicit_decay_steps():
    train = tiny().train
    train.update(schedule="constant", steps=10, warmup_steps=2)
    np.testing.assert_allclose(lrs(train, 10)[2:], train.learning_rate, rtol=1e-6)
    train.update(schedule="wsd", decay_steps=3, min_lr_ratio=0.1)
    lr = lrs(train, 10)
    assert lr[7] == pytest.approx(train.learning_rate) and lr[10] == pytest.approx(0.1 * train.learning_rate)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("schedule", "linear", "choose one of"),
    ("decay_shape", "sqrt", "choose one of"),
    ("decay_steps", 8, "cooldown of 8 steps must fit after the warmup"),
    ("optimizer", "sgd", "choose one of"),
])
def test_bad_schedule_fields_are_named(field, value, words):
    config = tiny()
    config.train.update(**{"schedule": "wsd", field: value})
    with pytest.raises(ValueError, match=f"config.train.{field}=.*{words}"):
        validate_config(config)


def model_params(config):
    model = build_model(validate_config(config), Runtime.local(), seed=0)
    return nnx.split(model, nnx.Param, ...)[1], validate_config(config)


def leaves(tree):
    return {"/".join(_path_names(p)): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def random_like(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)


def two_updates(tx, params):
    state, update = tx.init(params), jax.jit(tx.update)
    for seed in (1, 2):
        updates, state = update(random_like(params, seed), state, params)
    return leaves(updates)


# Hidden matrices as optax's 2-D Muon sees them: [fan-in, fan-out] per stacked layer (and per expert).
AS_MATRIX = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "in_proj_q": 1, "in_proj_k": 1, "in_proj_v": 1, "in_proj_z": 1,
             "in_proj_a": 1, "in_proj_b": 1, "gate_proj": 1, "up_proj": 1, "down_proj": 1, "o_proj": 2, "out_proj": 2}


def test_muon_equals_optax_muon_per_matrix_and_adamw_elsewhere():
    """Our Muon (dimension numbers from the parameter roles) against optax's Muon run on each hidden matrix alone as
    a plain 2-D [fan-in, fan-out] matrix per layer / expert, and optax's AdamW on every other leaf."""
    config = tiny()
    config.train.update(optimizer="muon", warmup_steps=0, grad_clip_norm=1e9, muon_learning_rate=0.02)
    params, model_config = model_params(config)
    tx, schedule = make_optimizer(config.train, params, model_config)
    ours = two_updates(tx, params)
    grads = [leaves(random_like(params, seed)) for seed in (1, 2)]
    flat_params = leaves(params)
    mask = leaves(decay_mask(params, config.train.decay_embeddings))
    ratio = 0.02 / config.train.learning_rate
    reference = muon(lambda c: schedule(c) * ratio, beta=0.95, weight_decay=config.train.weight_decay, nesterov=True)

    @jax.jit
    @jax.vmap
    def muon_two_steps(matrix, g1, g2):
        state = reference.init(matrix)
        for g in (g1, g2):
            update, state = reference.update(g, state, matrix)
        return update

    checked = {"muon": 0, "adamw": 0}
    for name, param in flat_params.items():
        leaf = name.split("/")[-1]
        p = np.asarray(param)
        if leaf in AS_MATRIX or leaf.startswith("experts_"):
            inputs = AS_MATRIX.get(leaf, 1)
            lead = 2 if leaf.startswith("experts_") else 1  # stacked layers (+ experts)
            shape2d = (int(np.prod(p.shape[lead:lead + inputs])), int(np.prod(p.shape[lead + inputs:])))
            batch = (-1, *shape2d)
            expected = np.asarray(muon_two_steps(
                p.reshape(batch), *(np.asarray(g[name]).reshape(batch) for g in grads))).reshape(p.shape)
            checked["muon"] += 1
        else:
            ref = optax.adamw(schedule, b1=config.train.b1, b2=config.train.b2,
                              weight_decay=config.train.weight_decay, mask=bool(mask[name]))
            state = ref.init(p)
            for g in grads:
                update, state = ref.update(np.asarray(g[name]), state, p)
            expected = np.asarray(update)
            checked["adamw"] += 1
        np.testing.assert_allclose(np.asarray(ours[name]), expected, rtol=2e-4, atol=1e-7, err_msg=name)
    assert checked["muon"] >= 20 and checked["adamw"] >= 10


def test_mup_scales_hidden_updates_by_one_over_width():
    """Under µP with m = 2, AdamW's update of every hidden matrix is half of SP's, every other leaf's unchanged."""
    config = tiny()
    config.train.update(warmup_steps=0, grad_clip_norm=1e9)
    sp_params, sp_config = model_params(config)
    config.model.update(parametrization="mup", mup_base_width=16)  # hidden 32: m = 2
    mup_params, mup_config = model_params(config)
    sp = two_updates(make_optimizer(config.train, sp_params, sp_config)[0], sp_params)
    # Same parameters (the updates depend on them through the weight decay only): the SP ones.
    mup = two_updates(make_optimizer(config.train, sp_params, mup_config)[0], sp_params)
    hidden = 0
    for name, update in sp.items():
        leaf = name.split("/")[-1]
        factor = 0.5 if leaf in AS_MATRIX or leaf.startswith("experts_") or leaf == "fc" else 1.0
        hidden += factor == 0.5
        np.testing.assert_allclose(np.asarray(mup[name]), factor * np.asarray(update), rtol=1e-6, err_msg=name)
    assert hidden >= 20
    # ... and µP's initialisation: hidden matrices drawn with std 0.02 / sqrt(2), the embedding with 0.02.
    flat = leaves(mup_params)
    assert np.std(np.asarray(flat["decoder/blocks/layers/0/linear_attn/in_proj_v"])) == pytest.approx(
        0.02 / math.sqrt(2), rel=0.1)
    assert np.std(np.asarray(flat["embed_tokens"])) == pytest.approx(0.02, rel=0.05)
    np.testing.assert_array_equal(np.asarray(flat["embed_tokens"]), np.asarray(leaves(sp_params)["embed_tokens"]))


def test_mup_at_its_base_width_is_sp():
    """m = 1 (mup_base_width = hidden_size): the same parameters and logits as SP, bit for bit."""
    config = tiny()
    sp_model = build_model(validate_config(config), Runtime.local(), seed=0)
    config.model.update(parametrization="mup", mup_base_width=config.model.hidden_size)
    mup_model = build_model(validate_config(config), Runtime.local(), seed=0)
    ids = np.arange(16, dtype=np.int32).reshape(2, 8) % 200
    np.testing.assert_array_equal(np.asarray(sp_model(ids).logits), np.asarray(mup_model(ids).logits))
