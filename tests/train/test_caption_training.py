"""``experiments.train`` on image captions (data.kind = "captions"): a sharded tiny VL run with gradient
accumulation trains, validates and ends with the held-out caption ranking; captions config errors name the field."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

from qwen35_jax.train.config_schema import validate_config
from qwen35_jax.train.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def vl_tiny():
    spec = importlib.util.spec_from_file_location("vl_tiny_config", ROOT / "configs" / "vl_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def digits_csv(tmp_path):
    """20 noisy 8x8 images per digit in scikit-learn's CSV format, the ink of each digit a distinct block."""
    rng = np.random.default_rng(0)
    rows = []
    for label in range(10):
        for _ in range(20):
            pixels = rng.integers(0, 4, size=64)
            pixels[label * 6:label * 6 + 6] = 16
            rows.append(np.concatenate([pixels, [label]]))
    path = tmp_path / "digits.csv"
    np.savetxt(path, np.asarray(rows), fmt="%d", delimiter=",")
    return str(path)


def small_config(digits_csv):
    config = vl_tiny()
    config.model.update(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                        head_dim=16, intermediate_size=64, linear_num_key_heads=1, linear_num_value_heads=2,
                        linear_key_head_dim=16, linear_value_head_dim=16, partial_rotary_factor=0.5)
    config.model.vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32)
    # batch 16 over the 8 virtual CPU devices (fsdp=8), 2 micro-batches of 8: every field is split by rows.
    config.data.update(sources="digits", digits_csv=digits_csv, seq_len=12, batch_size=16, heldout_fraction=0.25)
    config.train.update(steps=12, warmup_steps=2, learning_rate=1e-2, log_every=6, eval_batches=2,
                        grad_accum_steps=2)
    config.checkpoint.update(every=6)
    return config


@pytest.mark.slow  # ~1 min on 2 CPU cores, nearly all of it compiling
def test_caption_run_trains_and_ranks(tmp_path, digits_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative workdir, as `make demo` passes (orbax needs absolute paths inside)
    records = train_and_evaluate(small_config(digits_csv), "run")
    assert records[1]["event"] == "model" and records[1]["mesh"]["fsdp"] == 8
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    val = [r["val_loss/digits"] for r in records if "val_loss/digits" in r]
    assert len(val) == 2 and val[1] < val[0] - 1.0
    rank = [r for r in records if r.get("event") == "caption_rank"]
    assert len(rank) == 1 and rank[0]["rank/digits/images"] == 50
    assert 0.0 <= rank[0]["rank/digits/top1"] <= 1.0 and rank[0]["rank/digits/chance_top1"] == 0.1
    assert (tmp_path / "run" / "compact_vocab.json").exists()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["12", "6"]


@pytest.mark.parametrize("update, match", [
    ({"corpora": "shakespeare"}, r"config.data has unknown field\(s\) \['corpora'\] for data.kind='captions'"),
    ({"image_size": 50}, r"config.data.image_size=50 is invalid: must be a positive multiple of 32"),
    ({"sources": "emoji,faces"}, r"config.data.sources='emoji,faces' is invalid"),
    ({"kind": "video"}, r"config.data.kind='video' is invalid: choose one of \('text', 'captions'\)"),
])
def test_caption_config_errors(update, match):
    config = vl_tiny()
    config.data.update(update)
    with pytest.raises(ValueError, match=match):
        validate_config(config)


def test_captions_need_a_vision_model(tmp_path, digits_csv):
    config = small_config(digits_csv)
    del config.model["vision"]
    with pytest.raises(ValueError, match="config.model.vision is missing"):
        train_and_evaluate(config, str(tmp_path / "run"))
