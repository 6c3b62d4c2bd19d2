"""HF → ours → HF conversion: bit-identical round trips, transformers reloads the export, errors, sharded loading."""

import json
import os
import pathlib
import shutil
import subprocess

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qwen35_jax.hf import CheckpointError, load_pretrained
from qwen35_jax.hf.convert import HFSource, export_hf, import_hf
from qwen35_jax.hf.keys import fuse_per_expert_keys
from qwen35_jax.hf.orbax_io import ParamReader
from qwen35_jax.hf.safetensors_io import iter_tensors
from tools import convert_hf

REPO = pathlib.Path(__file__).resolve().parents[2]
# moe: per-expert keys in; moe_fused: fused in; vl_moe: VL + MTP (MTP experts per expert); next: Qwen3-Next.
ROUND_TRIP = ["dense_untied", "moe", "moe_fused", "vl_moe", "next"]


def hf_tensors(directory) -> dict[str, np.ndarray]:
    return fuse_per_expert_keys(dict(iter_tensors(str(directory))))


@pytest.fixture(scope="module")
def converted(hf_fixtures, tmp_path_factory) -> dict[str, tuple[pathlib.Path, pathlib.Path]]:
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for case in ROUND_TRIP:
        ckpt, back = root / f"{case}.ckpt", root / f"{case}.hf"
        assert convert_hf.main(["import", "--hf_dir", str(hf_fixtures / case), "--out", str(ckpt)]) == 0
        assert convert_hf.main(["export", "--ckpt", str(ckpt), "--out", str(back)]) == 0
        out[case] = (ckpt, back)
    return out


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_round_trip_is_bit_identical(hf_fixtures, converted, case):
    original, exported = hf_tensors(hf_fixtures / case), dict(iter_tensors(str(converted[case][1])))
    assert sorted(exported) == sorted(original)  # export writes the fused layout: no per-expert key left
    for name, value in original.items():
        assert exported[name].dtype == value.dtype and exported[name].shape == value.shape, name
        assert np.array_equal(exported[name].view(np.uint8), value.view(np.uint8)), name
    config = json.loads((converted[case][1] / "config.json").read_text())
    assert config["architectures"] == json.loads((hf_fixtures / case / "config.json").read_text())["architectures"]
    assert (converted[case][1] / "model.safetensors.index.json").exists()


def test_checkpoint_is_a_plain_orbax_pytree(converted):
    import orbax.checkpoint.experimental.v1 as ocp

    ckpt = converted["moe_fused"][0]
    tree = ocp.load(str(ckpt))
    reader = ParamReader(ckpt)
    assert reader.config.num_experts == 8
    gate = tree["decoder"]["blocks"]["layers"]["0"]["mlp"]["experts_gate"]
    assert gate.shape == (1, 8, 64, 32)
    np.testing.assert_array_equal(gate, reader.read(("decoder", "blocks", "layers", 0, "mlp", "experts_gate")))


def test_per_expert_export_matches_save_pretrained_layout(hf_fixtures, converted, tmp_path):
    out = tmp_path / "per_expert"
    export_hf(converted["moe_fused"][0], out, per_expert=True)
    original, exported = dict(iter_tensors(str(hf_fixtures / "moe"))), dict(iter_tensors(str(out)))
    assert sorted(exported) == sorted(original)  # the `moe` fixture is save_pretrained's per-expert layout
    for name, value in original.items():
        assert np.array_equal(exported[name], value), name


def test_small_shards_and_index(converted, tmp_path):
    out = tmp_path / "sharded"
    files = export_hf(converted["dense_untied"][0], out, max_shard_bytes=200_000)
    assert len(files) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(files)
    original, exported = hf_tensors(converted["dense_untied"][1]), dict(iter_tensors(str(out)))
    assert all(np.array_equal(exported[n], v) for n, v in original.items()) and sorted(exported) == sorted(original)


def test_transformers_loads_the_export_with_the_same_logits(hf_fixtures, converted, tmp_path):
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        pytest.fail("HF_REF_PYTHON is unset: point it at the reference interpreter (.venv-ref/bin/python)")
    cases = ["vl_moe", "next", "moe"]
    outs = [tmp_path / f"{case}.npz" for case in cases]
    cmd = [ref_python, "-m", "tools.hf_reference.generation_reference", "logits",
           "--model_dir", *[str(converted[c][1]) for c in cases],
           "--inputs", *[str(hf_fixtures / c / "reference.npz") for c in cases], "--out", *map(str, outs)]
    subprocess.run(cmd, check=True, cwd=REPO, timeout=600)
    for case, out in zip(cases, outs, strict=True):
        err = np.abs(np.load(out)["logits"] - np.load(hf_fixtures / case / "reference.npz")["logits"]).max()
        print(f"{case}: transformers on the exported checkpoint, max |dlogits| = {err:.2e}")
        assert err <= 1e-5


def test_existing_outputs_are_never_overwritten(hf_fixtures, converted, tmp_path):
    ckpt, back = converted["dense_untied"]
    stamp = (back / "config.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_hf(hf_fixtures / "dense_untied", ckpt)
    assert convert_hf.main(["export", "--ckpt", str(ckpt), "--out", str(back)]) == 1
    assert (back / "config.json").stat().st_mtime_ns == stamp
    assert convert_hf.main(["export", "--ckpt", str(ckpt), "--out", str(back), "--overwrite"]) == 0
    assert not [p for p in os.listdir(back.parent) if ".partial-" in p or ".old-" in p]


def test_mismatched_inputs_list_the_offending_keys_and_write_nothing(hf_fixtures, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(hf_fixtures / "moe", bad)
    tensors = load_file(bad / "model.safetensors")
    del tensors["model.layers.2.linear_attn.A_log"]
    tensors["model.layers.1.mlp.shared_expert_gate.weight"] = np.zeros((1, 65), np.float32)
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, bad / "model.safetensors")
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as info:
        import_hf(bad, out)
    message = str(info.value)
    for key in ("model.layers.2.linear_attn.A_log", "model.layers.1.mlp.shared_expert_gate.weight",
                "model.layers.0.extra.weight"):
        assert key in message
    assert not out.exists() and not list(tmp_path.glob("out.partial-*"))
    wrong = tmp_path / "wrong"
    shutil.copytree(hf_fixtures / "dense_untied", wrong)
    config = json.loads((wrong / "config.json").read_text())
    config["linear_num_value_heads"] = 8
    (wrong / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mis-shaped tensors \(\d+\)[\s\S]*layers.0.linear_attn.in_proj_qkv"):
        import_hf(wrong, out)
    assert not out.exists()


def test_streaming_source_reads_lazily(hf_fixtures):
    source = HFSource(hf_fixtures / "moe").dry_run()
    gate_up = source["model.layers.0.mlp.experts.gate_up_proj"]
    assert gate_up.shape == (8, 64, 64) and gate_up.strides == (0, 0, 0)  # shape only, no data read


def test_sharded_load_equals_unsharded_and_follows_the_rules(converted):
    from flax import nnx

    from qwen35_jax.parallel import DEFAULT_RULES, MeshConfig, Runtime, build_mesh
    from qwen35_jax.parallel.rules import state_shardings

    ckpt = converted["dense_untied"][0]
    mesh_config = MeshConfig.from_config({"fsdp": 4, "tensor": 2})
    mesh = build_mesh(mesh_config)
    runtime = Runtime.for_mesh(mesh, mesh_config)
    sharded = load_pretrained(ckpt, runtime=runtime)
    plain = load_pretrained(ckpt)
    state, reference = nnx.state(sharded), nnx.state(plain)
    expected = state_shardings(reference, mesh, DEFAULT_RULES)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == len(jax.tree.leaves(reference))
    for got, want, sharding in zip(leaves, jax.tree.leaves(reference), jax.tree.leaves(expected), strict=True):
        assert got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert any(len(set(s.spec) - {None}) for s in jax.tree.leaves(expected))  # something is actually sharded
    from_hf = nnx.state(load_pretrained(converted["dense_untied"][1], runtime=runtime))  # transformers directory
    for got, want, sharding in zip(jax.tree.leaves(from_hf), jax.tree.leaves(reference), jax.tree.leaves(expected),
                                   strict=True):
        assert got.sharding == sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bf16_checkpoint_round_trip_keeps_every_dtype(hf_fixtures, tmp_path):
    import ml_dtypes

    from qwen35_jax.hf.convert import SafetensorsShardWriter

    source = {n: v.astype(ml_dtypes.bfloat16) for n, v in iter_tensors(str(hf_fixtures / "moe"))}
    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    writer = SafetensorsShardWriter(str(bf16), list(source), max_shard_bytes=300_000)
    for name, value in source.items():
        writer.add(name, value)
    writer.close()
    shutil.copy(hf_fixtures / "moe" / "config.json", bf16)
    import_hf(bf16, tmp_path / "ckpt")  # dtype="auto": bf16 storage, the fp32-only parameters in fp32
    reader = ParamReader(tmp_path / "ckpt")
    assert reader.dtype(("embed_tokens",)) == np.dtype(ml_dtypes.bfloat16)
    assert reader.dtype(("decoder", "blocks", "layers", 0, "linear_attn", "A_log")) == np.float32
    export_hf(tmp_path / "ckpt", tmp_path / "back", per_expert=True)
    back = dict(iter_tensors(str(tmp_path / "back")))
    assert sorted(back) == sorted(source)
    for name, value in source.items():
        assert back[name].dtype == value.dtype and np.array_equal(back[name].view(np.uint16), value.view(np.uint16))
