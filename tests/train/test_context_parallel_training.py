"""Context parallelism end to end: ``experiments.train`` with the sequence split over 4 devices, and over 2 devices
times fsdp 4, gives the per-step losses of the unsplit run (8 CPU devices, packed documents, chunked GDN core)."""

import importlib.util
import pathlib

import ml_collections
import numpy as np
import pytest

from experiments.train import train_and_evaluate, validate_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Short documents: every 256-token row packs several, so segments start before, at and across shard boundaries.
SENTENCES = ["The king is dead.", "Long live the queen!", "Where is the ghost?", "Give me some light."]


def _config(corpus: str, **mesh):
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.model.gdn_impl = "auto"  # the chunked core on CPU
    config.data.update(corpora=corpus, seq_len=256, batch_size=8, validation_fraction=0.1)
    config.train.update(steps=5, warmup_steps=1, log_every=1, eval_batches=1)
    config.checkpoint.every = 5
    config.mesh.update(**{"fsdp": -1, **mesh})
    return config


def _losses(tmp_path, name, corpus, **mesh):
    records = train_and_evaluate(_config(corpus, **mesh), str(tmp_path / name))
    model = next(r for r in records if r.get("event") == "model")
    assert all(model["mesh"][axis] == size for axis, size in mesh.items())
    return np.array([r["loss"] for r in records if "loss" in r])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    rng = np.random.default_rng(0)
    for i in range(40):
        words = rng.integers(4, 30)
        (folder / f"{i}.txt").write_text(" ".join(rng.choice(SENTENCES, size=words)), encoding="utf-8")
    return f"files:{folder}/*.txt"


@pytest.fixture(scope="module")
def unsplit(tmp_path_factory, corpus):
    return _losses(tmp_path_factory.mktemp("run"), "unsplit", corpus, sequence=1)


# Each run compiles the model's train and eval steps (~1.5 min on 2 cores): the mix is in the slow tier.
@pytest.mark.parametrize("mesh", [dict(sequence=4), pytest.param(dict(sequence=2, fsdp=4), marks=pytest.mark.slowtier)],
                         ids=["sequence4", "sequence2-fsdp4"])
def test_split_sequence_gives_the_unsplit_losses(tmp_path, corpus, unsplit, mesh):
    losses = _losses(tmp_path, "split", corpus, **mesh)
    assert len(losses) == 5 and np.all(np.isfinite(losses))
    np.testing.assert_allclose(losses, unsplit, rtol=1e-5)
    assert not np.allclose(losses[0], losses[-1])  # it trained


def test_seq_len_not_a_multiple_of_shards_times_chunk_fails_before_compiling(tmp_path, corpus):
    config = _config(corpus, sequence=8)
    config.data.seq_len = 320
    with pytest.raises(ValueError, match=r"config.data.seq_len 320 is not a multiple of the sequence shards \(8\)"):
        train_and_evaluate(config, str(tmp_path / "bad"))
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_image_caption_data_with_a_split_sequence_is_refused():
    spec = importlib.util.spec_from_file_location("vl_tiny_config", ROOT / "configs" / "vl_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mesh = ml_collections.ConfigDict({"sequence": 2, "fsdp": -1})
    with pytest.raises(ValueError, match=r"config.mesh.sequence=2 is invalid: must be 1 for image-caption data"):
        validate_config(config)
