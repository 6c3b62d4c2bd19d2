"""A few real training steps of a tiny hybrid MoE model: the loss is finite and falls; bad configs fail early."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.train import METRICS_FILE, train_and_evaluate, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SENTENCES = ["The king is dead.", "Long live the queen!", "Where is the ghost?", "My lord, the night is cold.",
             "Give me some light.", "What news from the court?"]


def tiny_config(arg=None):
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture
def corpus_glob(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(30):
        (folder / f"{i}.txt").write_text(" ".join(rng.choice(SENTENCES, size=40)), encoding="utf-8")
    return f"files:{folder}/*.txt"


def shrink(config, corpus_glob):
    config.model.update(hidden_size=32, num_hidden_layers=4, num_experts=4, moe_intermediate_size=16,
                        shared_expert_intermediate_size=16, linear_key_head_dim=16, linear_value_head_dim=16,
                        head_dim=16, mrope_section=(1, 1, 0))
    # batch 8: the 8 virtual CPU devices of conftest.py form the default fsdp=8 mesh (a sharded run)
    config.data.update(corpora=corpus_glob, seq_len=32, batch_size=8, validation_fraction=0.1)
    config.train.update(steps=30, warmup_steps=3, learning_rate=1e-2, log_every=10, eval_batches=2)
    return config


@pytest.mark.slow  # ~1-2 min on 2 CPU cores, nearly all of it compiling the model
def test_loss_falls(tmp_path, corpus_glob):
    config = shrink(tiny_config(), corpus_glob)
    records = train_and_evaluate(config, str(tmp_path / "run"))
    losses = [r["loss"] for r in records if "loss" in r]
    assert records[1]["event"] == "model" and records[1]["mesh"]["fsdp"] == 8
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    val = [r[f"val_loss/{corpus_glob}"] for r in records if f"val_loss/{corpus_glob}" in r]
    assert len(val) == 2 and val[1] < val[0] - 1.0
    assert all(r["aux_loss"] > 0 for r in records if "aux_loss" in r)  # MoE load-balancing loss is reported
    with open(tmp_path / "run" / METRICS_FILE) as f:
        assert [json.loads(line) for line in f] == records
    assert os.path.exists(tmp_path / "run" / "curves.png")
    assert os.path.exists(tmp_path / "run" / "compact_vocab.json")
    with open(tmp_path / "run" / "provenance.json") as f:
        [start] = json.load(f)["starts"]
    assert start["device_count"] == 8 and start["jax"] and start["commit"]
    assert 0 < records[1]["non_embedding_params"] < records[1]["params"]


def test_bad_config_fails_before_work(tmp_path):
    config = tiny_config()
    config.data.corpora = "shakespeare,klingon"
    with pytest.raises(ValueError, match="'klingon' is unknown"):
        validate_config(config)
    config = tiny_config()
    config.train.warmup_steps = config.train.steps + 1
    with pytest.raises(ValueError, match="train.warmup_steps"):
        validate_config(config)
    with pytest.raises(ValueError, match="configs/tiny.py:huge is unknown"):
        tiny_config("huge")
    assert validate_config(tiny_config("dense")).is_moe is False
    assert validate_config(tiny_config()).is_moe is True


def test_command_line_reports_bad_corpus(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.data.corpora=nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "corpus spec 'nope' is unknown" in result.stderr
    assert not os.path.exists(tmp_path / METRICS_FILE)
