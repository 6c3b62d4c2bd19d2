"""tools.aot_compile: argument parsing, default meshes and the report arithmetic (no compile here)."""

import dataclasses
import types

import pytest

from qwen35_jax.config import ModelConfig
from qwen35_jax.presets import PRESETS
from tools import aot_compile


def test_mesh_flag_parsing_and_errors():
    assert aot_compile.parse_mesh("fsdp=32,expert=8") == {"fsdp": 32, "expert": 8}
    assert aot_compile.parse_mesh("data=-1") == {"data": -1}
    with pytest.raises(ValueError, match=r"--mesh item 'pipeline=2' is invalid"):
        aot_compile.parse_mesh("pipeline=2")
    with pytest.raises(ValueError, match=r"unknown TPU generation 'v4'"):
        aot_compile.chip_for("v4:2x2x2")


def test_default_mesh_splits_experts_eight_ways_when_possible():
    moe = ModelConfig.from_dict(PRESETS["qwen35_397b_a17b"])
    assert aot_compile.default_mesh(moe, 256) == {"fsdp": -1, "expert": 8}
    assert aot_compile.default_mesh(moe, 4) == {"fsdp": -1, "expert": 4}
    assert aot_compile.default_mesh(ModelConfig.from_dict(PRESETS["qwen35_9b"]), 256) == {"fsdp": -1}


def test_report_totals_scan_correction_and_last_line():
    gib = aot_compile.GIB
    memory = types.SimpleNamespace(argument_size_in_bytes=10 * gib, output_size_in_bytes=10 * gib,
                                   alias_size_in_bytes=10 * gib, temp_size_in_bytes=51 * gib,
                                   generated_code_size_in_bytes=int(0.2 * gib))
    report = aot_compile.Report(
        name="m", topology="v5p:2x2x1", mesh={"fsdp": 4}, memory=memory, compile_seconds=1.0, compiler_flops=3e12,
        compiler_seconds=0.1, head_flops=8e12, head_pieces=8, num_blocks=4, model_flops=4 * 8e12,
        chip=aot_compile.CHIPS["v5p"], chips=4)
    assert report.scan_factor == pytest.approx((8e12 + 4 * 2e12) / 3e12)  # head once + 4 blocks of (3 - 1)e12
    assert report.mfu == pytest.approx(8e12 / (459e12 * 0.1 * report.scan_factor))
    assert report.verdict() == "per-chip total: 61.20 GiB of 88.5 GiB HBM (fits)"
    assert dataclasses.replace(report, compiler_seconds=-1.0).mfu is None


@pytest.mark.parametrize("name, matmul_params", [
    ("qwen35_0p8b", 752_393_024),  # tied: the embedding is also the LM head (spec §5 active text)
    ("qwen35_397b_a17b", 16_331_922_176),  # untied: active text excluding the input embedding
])
def test_model_flops_count_matmuls_attention_and_gdn(name, matmul_params):
    config = ModelConfig.from_dict(PRESETS[name])
    attention_layers = config.num_hidden_layers // 4
    attention = attention_layers * 6 * 4096 * config.num_attention_heads * 256
    gdn = (config.num_hidden_layers - attention_layers) * 24 * config.linear_num_value_heads * 128 * 128
    assert aot_compile.model_flops_per_token(config, 4096) == 6 * matmul_params + attention + gdn
