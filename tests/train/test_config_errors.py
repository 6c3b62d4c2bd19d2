"""Bad configs and overrides fail before anything is compiled, with a message naming the key and the fix."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train.config_schema import validate_config
from qwen35_jax.train.loop import setup_mesh
from qwen35_jax.train.optimizer import decay_mask, no_decay

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny(arg="test"):
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("section, field, value, match", [
    ("train", "lerning_rate", 1e-3, r"config.train has unknown field\(s\) \['lerning_rate'\]"),
    ("train", "steps", "10", r"config.train.steps='10' is invalid: must be of type int"),
    ("train", "debug_nan_steps", ("3",), r"config.train.debug_nan_steps"),
    ("data", "batch_size", 0, r"config.data.batch_size=0 is invalid"),
    ("checkpoint", "keep", 0, r"config.checkpoint.keep=0 is invalid"),
    ("train", "z_loss", -1.0, r"config.train.z_loss=-1.0 is invalid"),
])
def test_bad_field(section, field, value, match):
    values = tiny().to_dict()  # a config file may hold any type; ConfigDict itself rejects retyping a field
    values[section][field] = value
    config = ml_collections.ConfigDict(values)
    with pytest.raises(ValueError, match=match):
        validate_config(config)


def test_grad_accum_must_divide_batch():
    config = tiny()
    config.train.grad_accum_steps = 3
    with pytest.raises(ValueError, match=r"config.data.batch_size=2 .*multiple of train.grad_accum_steps=3"):
        validate_config(config)


def test_batch_not_divisible_by_data_parallel_size():
    assert jax.device_count() == 8  # tests/conftest.py
    config = tiny()  # batch 2 on the default fsdp=8 mesh
    with pytest.raises(ValueError, match=r"config.data.batch_size=2 is not divisible by the data-parallel size 8"):
        setup_mesh(config)
    config.data.batch_size = 16
    config.mesh.update(data=2, fsdp=4)
    _, mesh, sharding = setup_mesh(config)
    assert dict(mesh.shape)["data"] == 2 and sharding.spec[0] == ("data", "fsdp")


def test_unknown_override_names_the_key(tmp_path):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py:test",
                             "--workdir", str(tmp_path), "--config.train.lerning_rate=1e-3"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--config.train.lerning_rate: config key 'train.lerning_rate' does not exist" in result.stderr
    assert not os.listdir(tmp_path)


def test_weight_decay_mask_by_path():
    model_config = ModelConfig.from_dict({**tiny().model.to_dict(), "vocab_size": 64})
    params = nnx.state(nnx.eval_shape(lambda: Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(0))), nnx.Param)
    mask = {"/".join(map(str, path)): bool(v.get_value() if isinstance(v, nnx.Variable) else v)
            for path, v in nnx.to_flat_state(decay_mask(params, False))}
    assert mask["embed_tokens"] is False and mask["lm_head"] is True and mask["norm/weight"] is False
    decayed = {k for k, v in mask.items() if v}
    assert any(k.endswith("linear_attn/in_proj_q") for k in decayed)
    assert any(k.endswith("mlp/experts_up") for k in decayed)
    for key in mask:
        if key.endswith(("A_log", "dt_bias", "layernorm/weight", "q_norm/weight", "linear_attn/norm/weight")):
            assert mask[key] is False, key
    assert no_decay(["embed_tokens"], decay_embeddings=True) is False
