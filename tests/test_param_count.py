"""Parameter counts from the abstract model equal the published checkpoint totals and numerics §5."""

import dataclasses

import pytest

from qwen35_jax.config import ModelConfig
from qwen35_jax.param_count import count_parameters, format_counts, non_embedding_parameters
from qwen35_jax.presets import PRESETS

# Spec §5 table: (text, vision, MTP, total, active text incl. embedding, active text excl. input embedding).
SPEC = {
    "qwen35_0p8b": (752_393_024, 100_592_896, 20_452_864, 873_438_784, 752_393_024, 498_113_344),
    "qwen35_2b": (1_881_825_088, 331_416_576, 60_828_160, 2_274_069_824, 1_881_825_088, 1_373_265_728),
    "qwen35_4b": (4_205_751_296, 333_514_240, 120_599_552, 4_659_865_088, 4_205_751_296, 3_570_052_096),
    "qwen35_9b": (8_953_803_264, 456_010_480, 243_290_624, 9_653_104_368, 8_953_803_264, 7_936_684_544),
    "qwen35_27b": (26_895_998_464, 460_730_096, 424_699_392, 27_781_427_952, 26_895_998_464, 25_624_600_064),
    "qwen35_35b_a3b": (34_660_610_688, 446_571_248, 844_640_768, 35_951_822_704, 3_454_988_928, 2_946_429_568),
    "qwen35_122b_a10b": (122_111_526_912, 451_290_864, 2_523_679_232, 125_086_497_008, 9_771_288_576,
                         9_008_449_536),
    "qwen35_397b_a17b": (396_346_350_336, 456_010_480, 6_595_568_128, 403_397_928_944, 17_349_040_896,
                         16_331_922_176),
    "qwen3_next_80b_a3b": (79_674_391_296, 0, 1_650_471_424, 81_324_862_720, 3_874_929_408, 3_563_764_480),
}


@pytest.mark.parametrize("name", sorted(SPEC))
def test_counts_equal_published_totals(name):
    counts = count_parameters(ModelConfig.from_dict(PRESETS[name]))
    got = (counts.text, counts.vision, counts.mtp, counts.total, counts.active_text,
           counts.active_text_without_input_embedding)
    assert got == SPEC[name]


def test_param_count_report_says_match():
    text = format_counts("qwen35_397b_a17b", ModelConfig.from_dict(PRESETS["qwen35_397b_a17b"]))
    assert "403,397,928,944  (matches)" in text


def test_non_embedding_parameters_by_hand():
    """3 linear-attention (GDN) blocks + 1 full-attention block, dense MLPs, no MTP: counted from the shapes."""
    config = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, intermediate_size=128, linear_num_key_heads=2,
                         linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                         mrope_section=(2, 1, 1), mtp_num_hidden_layers=0)
    h, keys, values, kernel = 64, 2 * 16, 4 * 16, 4
    gdn = (2 * h * keys + 2 * h * values + 2 * h * 4  # in_proj q, k; v, z; a, b
           + kernel * (2 * keys + values) + 2 * 4 + 16 + values * h)  # convs; A_log, dt_bias; norm; out_proj
    attention = h * 4 * 32 * 2 + 2 * h * 2 * 32 + 4 * 32 * h + 2 * 32  # gated q; k, v; o; q/k norms
    block = 3 * h * 128 + 2 * h  # MLP + two RMSNorms
    expected = 3 * (gdn + block) + attention + block + h  # + the final norm
    assert expected == 184_008
    assert non_embedding_parameters(config) == expected
    assert count_parameters(config).total == expected + 2 * 256 * h  # embedding + untied LM head
    tied = dataclasses.replace(config, tie_word_embeddings=True)
    assert non_embedding_parameters(tied) == expected and count_parameters(tied).total == expected + 256 * h
