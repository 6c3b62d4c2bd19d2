"""A workdir remembers its config: a rerun with another model stops before touching the workdir; a corrupt checkpoint
still falls back to the previous one; ``experiment_config.json`` is written once and kept on resume."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import pytest

from qwen35_jax.config import ModelConfig
from qwen35_jax.train.checkpoint import (
    Checkpoints,
    WorkdirConfigMismatchError,
    check_workdir,
    load_experiment_config,
    model_config_differences,
    save_experiment_config,
)
from qwen35_jax.train.provenance import PROVENANCE_FILE, load_provenance
from qwen35_jax.train.workdir import CONFIG_FILE

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ModelConfig(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=32, intermediate_size=128, linear_num_key_heads=2, linear_num_value_heads=4,
                   linear_key_head_dim=16, linear_value_head_dim=16, mrope_section=(2, 1, 1))


def tree_hashes(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def save_two(workdir, config=TINY):
    """Checkpoints at steps 1 and 2 of a toy state whose metadata names ``config``."""
    checkpoints = Checkpoints(workdir, keep=3)
    params, train = {"w": jnp.arange(4.0)}, {"step": jnp.int32(0)}
    for step in (1, 2):
        checkpoints.save(step, {"w": params["w"] + step}, train, {"step": step, "model_config": config.to_dict()})
    checkpoints.wait()
    return checkpoints, params, train


def truncate(directory):
    for path in directory.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_differences_name_the_fields():
    changed = TINY.replace(hidden_size=32, dtype="bfloat16")
    assert model_config_differences(TINY.to_dict(), changed) == [
        "dtype: checkpoint 'float32', this run 'bfloat16'", "hidden_size: checkpoint 64, this run 32"]
    assert model_config_differences(json.loads(json.dumps(TINY.to_dict())), TINY) == []  # JSON lists == tuples
    stored = TINY.to_dict()
    del stored["scan_unroll"]  # a field added after the checkpoint was written counts with its default
    assert model_config_differences(stored, TINY) == []


def test_mismatch_raises_and_changes_nothing(tmp_path):
    save_two(tmp_path)
    before = tree_hashes(tmp_path)
    check_workdir(tmp_path, TINY)  # same model: resumable
    with pytest.raises(WorkdirConfigMismatchError, match=r"hidden_size: checkpoint 64, this run 128.*new --workdir"):
        check_workdir(tmp_path, TINY.replace(hidden_size=128))
    assert tree_hashes(tmp_path) == before
    check_workdir(tmp_path / "nothing_here", TINY)  # no checkpoint: nothing to compare


def test_corrupt_checkpoint_still_falls_back(tmp_path):
    checkpoints, params, train = save_two(tmp_path)
    truncate(tmp_path / "checkpoints" / "2")
    check_workdir(tmp_path, TINY)  # the unreadable newest one is skipped, step 1 matches
    with pytest.raises(WorkdirConfigMismatchError, match="checkpoints/1 was trained"):
        check_workdir(tmp_path, TINY.replace(hidden_size=128))  # compared with the readable one; nothing renamed
    assert (tmp_path / "checkpoints" / "2").is_dir()
    restored_params, _, meta = checkpoints.restore_latest(params, train)
    assert meta["step"] == 1 and float(restored_params["w"][0]) == 1.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2.unreadable-0"]


def test_experiment_config_written_once_and_kept_on_resume(tmp_path):
    config = ml_collections.ConfigDict({"model": {"hidden_size": 64, "mrope_section": (2, 1, 1)},
                                        "train": {"steps": 10}, "mesh": {"fsdp": -1}})
    assert load_experiment_config(tmp_path) is None
    assert save_experiment_config(tmp_path, config)
    assert not save_experiment_config(tmp_path, config)  # identical: nothing written
    loaded = load_experiment_config(tmp_path)
    assert loaded.to_dict() == config.to_dict() and loaded.model.mrope_section == (2, 1, 1)

    longer = ml_collections.ConfigDict(config.to_dict())
    longer.train.steps = 20
    assert save_experiment_config(tmp_path, longer)  # no checkpoint yet: a fresh start replaces it
    assert load_experiment_config(tmp_path).train.steps == 20

    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    first = (tmp_path / CONFIG_FILE).read_bytes()
    assert not save_experiment_config(tmp_path, config)  # a resume with other settings keeps the first file
    assert (tmp_path / CONFIG_FILE).read_bytes() == first
    assert load_experiment_config(tmp_path / "checkpoints" / "5").train.steps == 20  # also from a step directory


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu", QWEN35_JAX_CACHE=str(tmp_path_factory.mktemp("xla_cache")))
    env.pop("XLA_FLAGS", None)  # one CPU device
    return env


def train(workdir, env, *overrides):
    command = [sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py:test", "--workdir",
               str(workdir), "--config.train.steps=4", *overrides]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_rerun_with_another_model_stops_before_touching_the_workdir(tmp_path, env):
    first = train(tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]
    saved = load_experiment_config(tmp_path)
    assert saved.model.hidden_size == 32 and saved.train.steps == 4 and "fsdp" in saved.mesh
    checkpoints, metrics = tree_hashes(tmp_path / "checkpoints"), (tmp_path / "metrics.jsonl").read_bytes()
    config_file = (tmp_path / CONFIG_FILE).read_bytes()
    [start] = load_provenance(tmp_path)  # what made the run: every field filled
    assert all(v not in ("", None) for v in start.values()) and "experiments.train --config" in start["command"]
    assert start["device_count"] == 1 and start["platform"] == "cpu"
    provenance = (tmp_path / PROVENANCE_FILE).read_bytes()
    model = next(json.loads(line) for line in metrics.splitlines() if b'"event": "model"' in line)
    assert 0 < model["non_embedding_params"] < model["params"]

    again = train(tmp_path, env, "--config.model.hidden_size=64")
    assert again.returncode != 0
    assert "hidden_size: checkpoint 32, this run 64" in again.stderr and "--workdir" in again.stderr
    assert "Traceback" not in again.stderr
    assert tree_hashes(tmp_path / "checkpoints") == checkpoints  # nothing renamed, written or deleted
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / CONFIG_FILE).read_bytes() == config_file
    assert (tmp_path / PROVENANCE_FILE).read_bytes() == provenance
