"""Bad checkpoints and bad inputs fail with messages that name the problem."""

import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qwen35_jax.hf import CheckpointError, load_pretrained

CASE = "dense_tied"


@pytest.fixture
def checkpoint(hf_fixtures, tmp_path):
    target = tmp_path / CASE
    shutil.copytree(hf_fixtures / CASE, target)
    return target


def _rewrite(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")


def test_missing_unexpected_and_misshaped_tensors_are_all_listed(checkpoint):
    def edit(t):
        del t["model.layers.0.linear_attn.A_log"]
        t["model.layers.0.linear_attn.bogus"] = np.zeros(3, np.float32)
        t["model.layers.3.self_attn.q_norm.weight"] = np.zeros(7, np.float32)

    _rewrite(checkpoint, edit)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(checkpoint)
    message = str(info.value)
    assert "missing tensors (1)" in message and "model.layers.0.linear_attn.A_log" in message
    assert "unexpected tensors (1)" in message and "model.layers.0.linear_attn.bogus" in message
    assert "mis-shaped tensors (1)" in message and "model.layers.3.self_attn.q_norm.weight" in message


def test_config_that_does_not_match_the_weights(checkpoint):
    config = (checkpoint / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')
    (checkpoint / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match="mis-shaped tensors"):
        load_pretrained(checkpoint)


def test_truncated_file_is_reported(checkpoint):
    path = checkpoint / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(checkpoint)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_pretrained(tmp_path)


def test_incomplete_per_expert_tensors(hf_fixtures, tmp_path):
    target = tmp_path / "moe"
    shutil.copytree(hf_fixtures / "moe", target)
    _rewrite(target, lambda t: t.pop("model.layers.1.mlp.experts.5.up_proj.weight"))
    with pytest.raises(ValueError, match=r"incomplete per-expert tensors under 'model.layers.1.mlp.experts.'"):
        load_pretrained(target)


def test_out_of_range_token_ids(hf_fixtures):
    model = load_pretrained(hf_fixtures / CASE)
    with pytest.raises(ValueError, match=r"token id\(s\) \[256\] out of range \[0, vocab_size=256\)"):
        model(jnp.array([[1, 2, 256]]))
    with pytest.raises(ValueError, match="input_ids must be"):
        model(jnp.array([1, 2, 3]))
