"""Ablation models transformers can express (numerics §10) export to checkpoints it runs with our logits: NoPE, and
a MoE without shared expert (written as transformers' width-0 shared expert) with full rotary on 1-D positions."""

import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.hf import load_pretrained
from qwen35_jax.hf.convert import _stacked_paths, export_hf
from qwen35_jax.hf.orbax_io import ParamWriter
from qwen35_jax.hf.param_check import flat_paths
from qwen35_jax.model import Qwen35ForCausalLM

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = dict(vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, intermediate_size=64, linear_num_key_heads=2, linear_num_value_heads=4,
            linear_key_head_dim=8, linear_value_head_dim=8, full_attention_interval=2, mtp_num_hidden_layers=0)
CASES = {
    "nope": dict(partial_rotary_factor=0.0, mrope_section=None),
    "moe_no_shared_full_rotary": dict(partial_rotary_factor=1.0, mrope_section=None, intermediate_size=0,
                                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                      shared_expert_intermediate_size=0),
}


def write_checkpoint(path: pathlib.Path, cfg: ModelConfig, seed: int) -> Qwen35ForCausalLM:
    """Random parameters of ``cfg`` in our converted-checkpoint format (what ``tools.convert_hf export`` reads)."""
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Qwen35ForCausalLM(cfg, rngs=nnx.Rngs(0))),
                                         nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), abstract)
    leaves = flat_paths(nnx.to_pure_dict(params))
    specs = {p: (tuple(v.shape), "float32") for p, v in leaves.items()}
    with ParamWriter(path, cfg, specs, stacked=_stacked_paths(cfg)) as writer:
        for p, value in leaves.items():
            writer.write(p, np.asarray(value))
    return nnx.merge(graphdef, params, rest)


def test_transformers_runs_the_exported_ablations_with_our_logits(tmp_path):
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        pytest.fail("HF_REF_PYTHON is unset: point it at the reference interpreter (.venv-ref/bin/python)")
    ids = np.random.default_rng(0).integers(0, 96, (2, 11)).astype(np.int64)
    np.savez(tmp_path / "inputs.npz", input_ids=ids)
    ours, dirs = {}, {}
    for seed, (case, changes) in enumerate(CASES.items()):
        cfg = ModelConfig(**{**BASE, **changes})
        model = write_checkpoint(tmp_path / f"{case}.ckpt", cfg, seed)
        ours[case] = np.asarray(model(jnp.asarray(ids, jnp.int32)).logits)
        dirs[case] = tmp_path / f"{case}.hf"
        export_hf(tmp_path / f"{case}.ckpt", dirs[case])
        back = load_pretrained(dirs[case])  # and our loader reads the export back (shared-expert placeholders)
        assert back.config == cfg.replace(gdn_impl="auto")
    outs = [tmp_path / f"{case}.npz" for case in CASES]
    subprocess.run([ref_python, "-m", "tools.hf_reference.generation_reference", "logits",
                    "--model_dir", *map(str, dirs.values()), "--inputs", *[str(tmp_path / "inputs.npz")] * len(CASES),
                    "--out", *map(str, outs)], check=True, cwd=REPO, timeout=600)
    for case, out in zip(CASES, outs, strict=True):
        err = np.abs(np.load(out)["logits"] - ours[case]).max()
        print(f"{case}: transformers on the export, max |dlogits| = {err:.2e}")
        assert err <= 1e-5, case
