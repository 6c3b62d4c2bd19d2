"""The hybrid-design ablation knobs (numerics §10): layer pattern, attention output gate, rotary fraction, shared
expert, each building, training a step of the real training step, decoding, counting and validating as documented."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig
from qwen35_jax.hf.config_io import config_to_hf
from qwen35_jax.hf.convert import export_hf
from qwen35_jax.hf.keys import checkpoint_rules
from qwen35_jax.infer import Generator, greedy_without_cache
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.param_count import count_parameters
from qwen35_jax.train.checkpoint import Checkpoints, load_params
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.flops import training_flops_per_token
from qwen35_jax.train.optimizer import make_optimizer
from qwen35_jax.train.step import make_train_step
from qwen35_jax.train.trainer import TRAIN_COUNTERS

H, NQ, HD, V = 32, 4, 16, 64
BASE = dict(vocab_size=V, hidden_size=H, num_hidden_layers=2, num_attention_heads=NQ, num_key_value_heads=2,
            head_dim=HD, intermediate_size=64, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=8, linear_value_head_dim=8, full_attention_interval=2, mrope_section=None,
            mtp_num_hidden_layers=0, gdn_impl="recurrent")  # [GDN, attention]
MOE = dict(intermediate_size=0, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=0)
GDN, ATTN = LINEAR_ATTENTION, FULL_ATTENTION


def config(**changes) -> ModelConfig:
    return ModelConfig(**{**BASE, **changes})


def random_model(cfg: ModelConfig, scale: float = 0.3, seed: int = 0) -> Qwen35ForCausalLM:
    """Random parameters on the abstract model (eager initialisation compiles many small ops on CPU: slow)."""
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Qwen35ForCausalLM(cfg, rngs=nnx.Rngs(0))),
                                         nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), abstract)
    return nnx.merge(graphdef, params, rest)


# ------------------------------------------------------------------------------------------------ layer pattern


@pytest.mark.parametrize("changes, types, pattern", [
    (dict(full_attention_interval=0), (GDN,) * 4, (GDN,)),
    (dict(full_attention_interval=1), (ATTN,) * 4, (ATTN,)),
    (dict(full_attention_interval=2), (GDN, ATTN) * 2, (GDN, ATTN)),
    (dict(full_attention_interval=4), (GDN,) * 3 + (ATTN,), (GDN,) * 3 + (ATTN,)),
    (dict(layer_types=[GDN] * 4, full_attention_interval=0), (GDN,) * 4, (GDN,)),
    (dict(layer_types=[ATTN, GDN, GDN, ATTN]), (ATTN, GDN, GDN, ATTN), (ATTN, GDN, GDN, ATTN)),
])
def test_layer_pattern(changes, types, pattern):
    cfg = config(num_hidden_layers=4, **changes)
    assert cfg.layer_types == types and cfg.block_pattern == pattern
    assert cfg.num_blocks * len(pattern) == 4


def test_flops_and_counts_follow_the_pattern():
    for interval, full in ((0, 0), (1, 4), (2, 2)):
        cfg = config(num_hidden_layers=4, full_attention_interval=interval)
        counts = count_parameters(cfg)
        gdn = (4 - full) * 24.0 * 4 * 8 * 8
        attention = full * 6.0 * 128 * NQ * HD
        assert training_flops_per_token(cfg, 128) == 6.0 * counts.active_text_without_input_embedding + gdn + attention
    mtp = config(mtp_num_hidden_layers=1)
    extra = 6.0 * (count_parameters(mtp).active_mtp + H * V) + 6.0 * 128 * NQ * HD  # one MTP step
    assert training_flops_per_token(mtp, 128, mtp_depth=2) == training_flops_per_token(mtp, 128) + 2 * extra


# ------------------------------------------------------------------------------------------------ output gate


def test_gate_off_has_exactly_the_gate_weights_fewer():
    gated = config(num_hidden_layers=4, full_attention_interval=2, mtp_num_hidden_layers=1)
    ungated = gated.replace(attn_output_gate=False)
    a, b = count_parameters(gated), count_parameters(ungated)
    assert a.text - b.text == 2 * NQ * HD * H  # two attention layers
    assert a.mtp - b.mtp == NQ * HD * H  # the MTP layer is full attention too
    model = nnx.eval_shape(lambda: Qwen35ForCausalLM(ungated, rngs=nnx.Rngs(0)))
    assert model.decoder.blocks.layers[1].self_attn.q_proj.shape == (2, H, NQ, HD)  # [blocks, h, nq, hd]
    assert training_flops_per_token(gated, 64) - training_flops_per_token(ungated, 64) == 6.0 * 2 * NQ * HD * H


def test_gate_off_is_the_ungated_formula():
    """``o_proj(softmax(q kᵀ / √hd) v)``: the attention layer's output recomputed without any gate."""
    cfg = config(full_attention_interval=1, num_hidden_layers=1, attn_output_gate=False)
    model = random_model(cfg)
    graphdef, state = nnx.split(model.decoder.blocks.layers[0].self_attn)
    attn = nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))  # the one block of the stacked parameters
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, H)), jnp.float32)
    inputs = model.layer_inputs(jnp.zeros((2, 5), jnp.int32), None, None, None)
    query, gate, key, value = attn.project(x, inputs.cos, inputs.sin)
    assert gate is None and query.shape == (2, 5, NQ, HD)
    key, value = jnp.repeat(key, NQ // 2, axis=2), jnp.repeat(value, NQ // 2, axis=2)  # GQA: 2 query heads per kv
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) * HD ** -0.5
    probs = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((5, 5), bool)), scores, -jnp.inf), axis=-1)
    expected = jnp.einsum("bhqk,bkhd,hde->bqe", probs, value, attn.o_proj[...])
    y, _ = attn(x, inputs.cos, inputs.sin, inputs.segment_ids)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ rotary fraction


def forward_logits(model: Qwen35ForCausalLM, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda s, i, p: nnx.merge(graphdef, s)(i, positions=p).logits)
    return np.asarray(run(state, jnp.asarray(ids), jnp.asarray(positions)))


def test_nope_ignores_positions_and_rotary_does_not():
    ids = np.random.default_rng(2).integers(0, V, (2, 10)).astype(np.int32)
    base = np.broadcast_to(np.arange(10), (2, 10))
    shifted = base + 37  # every position moved: RoPE sees only relative offsets, NoPE nothing at all
    gapped = np.concatenate([base[:, :5], base[:, 5:] + 9], axis=1)  # relative offsets change across the gap
    nope = random_model(config(full_attention_interval=1, partial_rotary_factor=0.0))
    cos, sin = nope.layer_inputs(jnp.asarray(ids), None, jnp.asarray(base), None)[:2]
    assert cos.shape == sin.shape == (2, 10, 0)
    reference = forward_logits(nope, ids, base)
    assert np.array_equal(forward_logits(nope, ids, shifted), reference)
    assert np.array_equal(forward_logits(nope, ids, gapped), reference)
    for factor in (0.25, 1.0):
        rotary = random_model(config(full_attention_interval=1, partial_rotary_factor=factor))
        reference = forward_logits(rotary, ids, base)
        np.testing.assert_allclose(forward_logits(rotary, ids, shifted), reference, atol=2e-4)
        assert np.abs(forward_logits(rotary, ids, gapped) - reference)[:, 5:].max() > 1e-2


# ------------------------------------------------------------------------------------------------ training + decoding


def train_step_metrics(cfg: ModelConfig) -> dict[str, float]:
    """One step of the jitted training step ``experiments.train`` runs (``make_train_step``: loss, AdamW, skip
    logic) on a packed random batch, from random parameters (``build_trainer``'s jitted initialisation alone
    compiles for seconds on CPU)."""
    experiment = fill_defaults(ml_collections.ConfigDict({
        "model": cfg.to_dict(), "data": {"seq_len": 8, "batch_size": 2},
        "train": {"steps": 1, "warmup_steps": 0}}))
    assert validate_config(experiment) == cfg
    graphdef, params, rest = nnx.split(random_model(cfg, scale=0.1), nnx.Param, ...)
    tx, schedule = make_optimizer(experiment.train, params)
    state = {"params": params, "opt_state": jax.jit(tx.init)(params), "rng": jax.random.key_data(jax.random.key(0)),
             **{name: jnp.zeros((), jnp.int32) for name in TRAIN_COUNTERS}}
    ids = np.random.default_rng(3).integers(0, V, (2, 9)).astype(np.int32)
    segments = np.array([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "segment_ids": segments,
             "loss_mask": (segments > 0) & (segments == np.pad(segments[:, 1:], ((0, 0), (0, 1))))}
    step = make_train_step(graphdef, rest, tx, schedule, cfg, experiment.train)
    state, out = step(state, batch, np.asarray(False))
    assert int(state["step"]) == 1
    return {k: float(v) for k, v in jax.device_get(out).items()}


@pytest.mark.parametrize("changes", [
    dict(full_attention_interval=0),  # all Gated DeltaNet
    dict(full_attention_interval=1, attn_output_gate=False, partial_rotary_factor=0.0, **MOE),  # all attention
    dict(full_attention_interval=2, partial_rotary_factor=1.0, mrope_section=(3, 3, 2), attn_output_gate=False),
], ids=["all_gdn", "all_attention_ungated_nope_moe_no_shared", "hybrid_ungated_full_rotary"])
def test_forward_shapes_and_one_training_step(changes):
    cfg = config(**changes)
    out = nnx.eval_shape(lambda: Qwen35ForCausalLM(cfg, rngs=nnx.Rngs(0))(jnp.zeros((2, 8), jnp.int32)))
    assert out.logits.shape == (2, 8, V) and out.hidden_states.shape == (2, 8, H)
    metrics = train_step_metrics(cfg)
    assert metrics["finite"] and np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert metrics["skipped"] == 0


@pytest.mark.parametrize("interval", [0, 1], ids=["all_gdn", "all_attention"])
def test_single_kind_stacks_decode_like_the_no_cache_recompute(interval):
    model = random_model(config(full_attention_interval=interval, num_hidden_layers=3), scale=0.2, seed=interval)
    prompts = [[5, 9, 2, 40, 17, 3, 33], [8, 1, 60]]  # different lengths: left padding
    tokens = Generator(model)(prompts, 5).tokens
    assert tokens == greedy_without_cache(model, prompts, 5)
    assert len(set(tokens[0])) > 1  # not a constant row


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("changes, field, hint", [
    (dict(full_attention_interval=-1), "full_attention_interval", "0 for no"),
    (dict(partial_rotary_factor=0.3), "partial_rotary_factor", "even integer"),
    (dict(partial_rotary_factor=0.0625), "partial_rotary_factor", "even integer"),  # 16 x 0.0625 = 1: odd
    (dict(partial_rotary_factor=1.5), "partial_rotary_factor", r"\[0, head_dim\]"),
    (dict(partial_rotary_factor=0.0, mrope_section=(0, 0, 0)), "mrope_section", "NoPE.*mrope_section=None"),
    (dict(partial_rotary_factor=1.0, mrope_section=(2, 1, 1)), "mrope_section", "rotary_dim / 2 = 8"),
    (dict(attn_output_gate="no"), "attn_output_gate", "True"),
])
def test_invalid_knobs_name_the_field(changes, field, hint):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}=[\s\S]*{hint}"):
        config(**changes)


def test_valid_knob_values():
    assert not config(attn_output_gate=False).attn_output_gate
    assert config(partial_rotary_factor=0.0).rotary_dim == 0
    assert config(partial_rotary_factor=1.0, mrope_section=(3, 3, 2)).rotary_dim == HD
    assert config(num_hidden_layers=3, layer_types=[ATTN] * 3, full_attention_interval=0).layer_types == (ATTN,) * 3


def test_mtp_loss_weight_needs_an_mtp_head():
    experiment = ml_collections.ConfigDict({"model": config().to_dict(), "train": {"mtp_loss_weight": 0.3}})
    with pytest.raises(ValueError, match=r"config\.train\.mtp_loss_weight=0\.3[\s\S]*mtp_num_hidden_layers=1"):
        validate_config(experiment)
    experiment.model.mtp_num_hidden_layers = 1
    validate_config(experiment)
    for field, value, hint in (("mtp_loss_weight", -0.1, ">= 0"), ("mtp_depth", 0, ">= 1")):
        bad = ml_collections.ConfigDict(experiment.to_dict())
        bad.train[field] = value
        with pytest.raises(ValueError, match=rf"config\.train\.{field}=[\s\S]*{hint}"):
            validate_config(bad)


# ------------------------------------------------------------------------------------------------ checkpoints / HF


def test_ungated_model_saves_in_our_checkpoints_and_refuses_hf_export(tmp_path):
    cfg = config(attn_output_gate=False, full_attention_interval=2)
    for refuse in (lambda: config_to_hf(cfg), lambda: checkpoint_rules(cfg)):
        with pytest.raises(ValueError, match="attn_output_gate=False.*always has the sigmoid output gate"):
            refuse()
    model = random_model(cfg)
    params = nnx.state(model, nnx.Param)
    checkpoints = Checkpoints(tmp_path / "run", keep=1)
    checkpoints.save(1, params, {"step": jnp.int32(1)}, {"step": 1, "model_config": cfg.to_dict(),
                                                         "vocab_file": None})
    checkpoints.wait()
    loaded_config, loaded = load_params(tmp_path / "run")
    assert loaded_config == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cannot express this model as a transformers checkpoint"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not list(tmp_path.glob("hf*"))


def test_all_gdn_refuses_hf_export():
    with pytest.raises(ValueError, match="no full-attention layer"):
        config_to_hf(config(full_attention_interval=0))


def test_rotary_knobs_round_trip_through_the_hf_config():
    from qwen35_jax.hf.config_io import config_from_hf

    for cfg in (config(partial_rotary_factor=0.0), config(partial_rotary_factor=1.0),
                config(partial_rotary_factor=1.0, mrope_section=(3, 3, 2))):
        hf = config_to_hf(cfg)
        expected = [0, 0, 0] if cfg.rotary_dim == 0 else list(cfg.mrope_section or (cfg.rotary_dim // 2, 0, 0))
        assert hf["rope_parameters"]["mrope_section"] == expected
        assert config_from_hf(hf, gdn_impl=cfg.gdn_impl) == cfg  # gdn_impl: ours, not in config.json


def test_no_shared_expert_has_transformers_placeholders():
    cfg = config(**MOE)
    rules = [r.rule for r in checkpoint_rules(cfg) if not r.rule.ours]
    assert len(rules) == cfg.num_hidden_layers  # one per MoE layer: width-0 shared expert + its gate
    names = rules[0].hf
    assert names[-1].endswith("mlp.shared_expert_gate.weight")
    arrays = rules[0].to_hf([])
    assert [a.shape for a in arrays] == [(0, H), (0, H), (H, 0), (1, H)] and not arrays[-1].any()
    assert rules[0].to_ours(arrays) == []
    with pytest.raises(ValueError, match="not empty"):
        rules[0].to_ours([np.ones((4, H))] + arrays[1:])
