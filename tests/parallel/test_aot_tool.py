"""tools.aot_compile: release config variants, the report arithmetic, and one training step shared with the trainer."""

import dataclasses
import glob
import importlib.util
import pathlib
import types

import pytest

from qwen35_jax.config import ModelConfig
from qwen35_jax.parallel.mesh import MeshConfig
from qwen35_jax.presets import PRESETS
from qwen35_jax.train import trainer as trainer_module
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.flops import GIB, accelerator_for_topology, training_flops_per_token
from qwen35_jax.train.recipes import load_config_file
from tools import aot_compile

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE_CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "qwen3*.py")))


def _variants(path: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("release_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(module.VARIANTS)


@pytest.mark.parametrize("spec", [f"{p}:{v}" for p in RELEASE_CONFIGS for v in _variants(p)],
                         ids=lambda s: pathlib.Path(s).name)
def test_release_variants_are_complete_experiment_configs(spec):
    config = load_config_file(spec)
    model = validate_config(config)  # every section known and valid, the model config valid
    config = fill_defaults(config)
    assert model.vocab_size == PRESETS[pathlib.Path(spec.split(":")[0]).stem]["vocab_size"]
    assert not config.data.compact_vocab  # the real vocabulary
    topology = config.hardware.topology
    if topology:  # a pod variant: the mesh uses every chip and each chip holds 4,096 tokens of the batch
        chips = 1
        for size in topology.split(":")[1].split("x"):
            chips *= int(size)
        accelerator_for_topology(topology)
        sizes = MeshConfig.from_config(config.mesh).axis_sizes(chips)
        assert config.data.batch_size * config.data.seq_len == chips * 4096 and len(sizes) == 5
        assert config.data.seq_len == 4096 * sizes["sequence"]  # a longer sequence is split over chips
        assert config.data.seq_len % config.train.loss_chunk == 0
        assert config.train.loss_chunk // sizes["sequence"] == 256  # 256 LM-head positions per chip per chunk
    elif spec.endswith(":gpu"):  # the local GPU(s): bf16, 4,096-token sequences, the core auto picks
        assert (config.model.dtype, config.data.seq_len, config.model.gdn_impl) == ("bfloat16", 4096, "auto")
    elif ":gpu-" in spec:  # several GPU nodes (gpu-<nodes>x<gpus>): one process per node, one sequence per GPU
        nodes, gpus = map(int, spec.rsplit(":gpu-", 1)[1].split("x"))
        assert config.multihost.enabled and config.data.batch_size == nodes * gpus
        assert MeshConfig.from_config(config.mesh).axis_sizes(nodes * gpus)["fsdp"] == nodes * gpus
        assert config.data.corpora.startswith("prepared:")
    else:
        assert spec.endswith(":cpu")


def test_unknown_variant_and_generation_are_named():
    with pytest.raises(ValueError,
                       match=r"configs/qwen35_0p8b.py:tpu is unknown; choose one of \['cpu', 'gpu', 'v5p-4'\]"):
        load_config_file(str(ROOT / "configs" / "qwen35_0p8b.py") + ":tpu")
    with pytest.raises(ValueError, match=r"unknown TPU generation 'v3'"):
        accelerator_for_topology("v3:2x2")


def _report(**changes):
    memory = types.SimpleNamespace(argument_size_in_bytes=10 * GIB, output_size_in_bytes=10 * GIB,
                                   alias_size_in_bytes=10 * GIB, temp_size_in_bytes=51 * GIB,
                                   generated_code_size_in_bytes=int(0.2 * GIB))
    report = aot_compile.Report(
        name="m", topology="v5p:2x2x1", mesh={"fsdp": 4}, recipe="dense", memory=memory, compile_seconds=1.0,
        compiler_flops=3e12, compiler_seconds=0.1, head_flops=8e12, head_pieces=8, scan_iterations=4,
        model_flops=4 * 8e12, chip=accelerator_for_topology("v5p:2x2x1"), chips=4)
    return dataclasses.replace(report, **changes)


def test_report_totals_scan_correction_and_last_line():
    report = _report()
    assert report.scan_factor == pytest.approx((8e12 + 4 * 2e12) / 3e12)  # head once + 4 blocks of (3 - 1)e12
    assert report.mfu == pytest.approx(8e12 / (459e12 * 0.1 * report.scan_factor))
    assert report.verdict() == "per-chip total: 61.20 GiB of 88.5 GiB HBM (fits)"
    assert _report(compiler_seconds=-1.0).mfu is None
    assert "**61.20 GiB** of 88.5 (fits)" in aot_compile.table_row(report)


def test_report_states_the_batch_in_text_and_table():
    """The 262K-token variant's shape: 4 sequences of 262,144 tokens on 256 chips (4,096 tokens per chip)."""
    report = _report(sequences=4, seq_len=262_144, chips=256)
    assert report.tokens_per_step == 1_048_576 and report.batch_text() == "4 × 262,144 tokens"
    rate = report.tokens_per_step / 256 / report.step_seconds
    assert report.tokens_per_chip_second == pytest.approx(rate)
    row = aot_compile.table_row(report)
    assert "| 4 × 262,144 tokens | 4,096 |" in row and row.endswith(f"| {rate:,.0f} |")
    assert row.count("|") == aot_compile.TABLE_HEADER.splitlines()[0].count("|")
    assert _report(sequences=4, seq_len=262_144, sequence_shards=64).tokens_per_chip_second is None
    text = aot_compile.describe(report)
    assert "batch                   4 × 262,144 tokens = 1,048,576 tokens per step, 4,096 per chip" in text
    assert f"{rate:10,.0f} per second at the step-time estimate" in text


@pytest.mark.parametrize("name, matmul_params", [
    ("qwen35_0p8b", 752_393_024),  # tied: the embedding is also the LM head (numerics §5 active text)
    ("qwen35_397b_a17b", 16_331_922_176),  # untied: active text excluding the input embedding
])
def test_model_flops_count_matmuls_attention_and_gdn(name, matmul_params):
    config = ModelConfig.from_dict(PRESETS[name])
    attention_layers = config.num_hidden_layers // 4
    attention = attention_layers * 6 * 4096 * config.num_attention_heads * 256
    gdn = (config.num_hidden_layers - attention_layers) * 24 * config.linear_num_value_heads * 128 * 128
    assert training_flops_per_token(config, 4096) == 6 * matmul_params + attention + gdn


def test_aot_compiles_the_trainers_own_step(monkeypatch, tmp_path):
    """tools.aot_compile and experiments.train both build their step with train.trainer -> train.step.make_train_step
    (spied on here), and the AOT compile of a tiny config for a 4-chip v5p succeeds with that step."""
    from qwen35_jax.train.loop import train_and_evaluate

    calls = []
    real = trainer_module.make_train_step

    def spy(*args, **kwargs):
        calls.append(kwargs["state_shardings"]["params"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_train_step", spy)
    config = load_config_file(str(ROOT / "configs" / "tiny.py") + ":test")
    config.hardware = {"topology": "v5p:2x2x1"}
    config.data.batch_size = 4
    config.model.update(gdn_impl="auto", dtype="bfloat16", param_dtype="bfloat16")  # auto -> the Mosaic kernel
    config.train.update(loss_chunk=16, moment_dtype="bfloat16")
    report = aot_compile.compile_config(config)
    assert len(calls) == 1 and report.chips == 4 and report.mesh["fsdp"] == 4
    assert 0 < report.total_bytes < GIB and report.fits

    local = load_config_file(str(ROOT / "configs" / "tiny.py") + ":test")
    local.train.update(steps=1, warmup_steps=0, loss_chunk=16)
    local.data.batch_size = 8  # the 8 virtual CPU devices of conftest.py form the default fsdp mesh
    train_and_evaluate(local, str(tmp_path / "run"))
    assert len(calls) == 2
