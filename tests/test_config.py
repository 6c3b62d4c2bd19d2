"""ModelConfig validation and transformers config round trips."""

import json

import pytest

from qwen35_jax.config import ModelConfig, VisionConfig
from qwen35_jax.hf.config_io import config_from_hf, config_to_hf
from qwen35_jax.presets import PRESETS

TINY = dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=128, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=16, linear_value_head_dim=16, mrope_section=(2, 1, 1), mtp_num_hidden_layers=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_hf(name):
    config = ModelConfig.from_dict(PRESETS[name])
    assert config_from_hf(json.loads(json.dumps(config_to_hf(config)))) == config


def test_layer_pattern_and_blocks():
    config = ModelConfig(**TINY)
    assert config.layer_types == ("linear_attention",) * 3 + ("full_attention",)
    assert config.block_pattern == config.layer_types and config.num_blocks == 1
    eight = ModelConfig(**{**TINY, "num_hidden_layers": 8})
    assert eight.num_blocks == 2 and len(eight.block_pattern) == 4


@pytest.mark.parametrize("changes, field", [
    (dict(linear_num_value_heads=3), "linear_num_value_heads"),
    (dict(mrope_section=(2, 2, 1)), "mrope_section"),
    (dict(layer_types=("linear_attention",) * 3), "layer_types"),
    (dict(layer_types=("linear_attention",) * 3 + ("sliding",)), "layer_types"),
    (dict(num_attention_heads=3), "num_attention_heads"),
    (dict(num_experts=8, num_experts_per_tok=9, moe_intermediate_size=32), "num_experts_per_tok"),
    (dict(num_experts=8, num_experts_per_tok=2), "moe_intermediate_size"),
    (dict(intermediate_size=0), "intermediate_size"),
    (dict(partial_rotary_factor=0.3), "partial_rotary_factor"),
    (dict(dtype="float16"), "dtype"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(scan_unroll=0), "scan_unroll"),
    (dict(vision=VisionConfig(out_hidden_size=32)), "vision"),
])
def test_inconsistent_fields_name_the_field(changes, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        ModelConfig(**{**TINY, **changes})


def test_vision_config_validation():
    with pytest.raises(ValueError, match="num_position_embeddings"):
        VisionConfig(num_position_embeddings=2000)
    with pytest.raises(ValueError, match="num_heads"):
        VisionConfig(hidden_size=100, num_heads=16)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['hiden_size'\]"):
        ModelConfig.from_dict({**TINY, "hiden_size": 3})


def test_from_hf_reads_fixture_configs(hf_fixtures, hf_manifest):
    for case in hf_manifest["cases"]:
        hf = json.loads((hf_fixtures / case / "config.json").read_text())
        text = hf.get("text_config", hf)  # VL configs nest the text model
        config = config_from_hf(hf_fixtures / case)
        assert config.hidden_size == text["hidden_size"] and config.layer_types == tuple(text["layer_types"])
        assert config.variant == ("qwen3_next" if hf["model_type"] == "qwen3_next" else "qwen3_5")
        assert (config.vision is not None) == ("vision_config" in hf)
        assert config.mrope_section == (None if config.variant == "qwen3_next" else (2, 1, 1))


def test_from_hf_rejects_other_models():
    with pytest.raises(ValueError, match="model_type='llama'"):
        config_from_hf({"model_type": "llama"})
