"""Exporting a run trained on a compact vocabulary: its rows land at their real Qwen ids, checked through the Qwen
tokenizer against the run's own logits (ours and transformers' on the export); refusals and --keep_compact_vocab."""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from qwen35_jax.data import MODEL_VOCAB_SIZE, CompactVocab, get_tokenizer
from qwen35_jax.data.text_dataset import VOCAB_FILE
from qwen35_jax.hf import CheckpointError, load_pretrained
from qwen35_jax.hf.convert import export_hf, import_hf, real_vocab_config
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train.checkpoint import Checkpoints, flatten
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.data_sources import text_source
from tools import convert_hf

REPO = pathlib.Path(__file__).resolve().parents[2]
STEP = 3


def tiny_test_config():
    spec = importlib.util.spec_from_file_location("tiny_config", REPO / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = fill_defaults(module.get_config("test"))
    config.data.compact_vocab_max_size = 0  # every id the training plays use: the 21,395 of configs/tiny.py
    return config


def save_run(workdir: pathlib.Path, model_config, vocab_file: str | None):
    """A checkpoint of random parameters saved by the training ``Checkpoints`` with the loop's metadata (eager
    initialisation or a training step would only add compile time); returns the model."""
    graphdef, abstract, rest = nnx.split(nnx.eval_shape(lambda: Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(0))),
                                         nnx.Param, ...)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), a.dtype), abstract)
    checkpoints = Checkpoints(workdir, keep=1)
    checkpoints.save(STEP, params, {"step": jnp.int32(STEP)},
                     {"step": STEP, "model_config": model_config.to_dict(), "vocab_file": vocab_file})
    checkpoints.wait()
    return nnx.merge(graphdef, params, rest)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir as ``experiments.train`` leaves it with configs/tiny.py:test (uncapped vocabulary, + an MTP head):
    the compact vocabulary from the real data pipeline and a checkpoint."""
    workdir = tmp_path_factory.mktemp("compact_run")
    config = tiny_test_config()
    source = text_source(config, validate_config(config).replace(mtp_num_hidden_layers=1), str(workdir))
    model = save_run(workdir, source.model_config, source.vocab_file)
    return workdir, source.model_config, model, CompactVocab.load(workdir / VOCAB_FILE)


def corpus_text(vocab: CompactVocab, length: int = 24) -> tuple[str, np.ndarray]:
    """A Shakespeare passage whose Qwen tokens are all in the compact vocabulary (and that re-encodes to them)."""
    from qwen35_jax.data.corpora import load_corpus

    tokenizer = get_tokenizer()
    ids = np.asarray(tokenizer.encode(next(iter(load_corpus("shakespeare").documents.values()))[:20_000]))
    known = vocab.to_compact(ids) > 0
    for start in range(len(ids) - length):
        if known[start:start + length].all():
            text = tokenizer.decode(ids[start:start + length].tolist())
            if tokenizer.encode(text) == ids[start:start + length].tolist():
                return text, ids[start:start + length]
    raise AssertionError("no passage of known tokens found")


def logits_of(model, ids: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x).logits)(state, jnp.asarray(ids)[None])[0])


def test_export_maps_rows_to_real_ids(run, tmp_path):
    workdir, model_config, model, vocab = run
    # Only embed_tokens and lm_head are vocabulary-sized (the MTP head shares them): those are the rows remapped.
    sized = [k for k, v in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
             if model_config.vocab_size in v.shape]
    assert sorted(sized) == ["embed_tokens", "lm_head"]
    out = tmp_path / "hf"
    assert convert_hf.main(["export", "--ckpt", str(workdir), "--out", str(out)]) == 0
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["vocab_size"] == MODEL_VOCAB_SIZE and not (out / VOCAB_FILE).exists()

    text, real = corpus_text(vocab)
    assert get_tokenizer().encode(text) == real.tolist()
    compact = logits_of(model, vocab.to_compact(real))  # [T, V']
    # The run's own gated-delta-rule core (configs/tiny.py:test: the recurrence), not the one the exported config would
    # get by default: recurrent vs chunked alone differ by ~1e-5 relative in the hidden states.
    exported_model = load_pretrained(out, gdn_impl=model_config.gdn_impl)
    assert exported_model.config.mtp_num_hidden_layers == 1
    exported = logits_of(exported_model, real)  # [T, 248320]
    assert exported.shape == (len(real), MODEL_VOCAB_SIZE) and compact.std() > 0.1
    scale = np.abs(compact).max()  # the LM-head matmul's width differs (V' vs 248320): fp32 rounding only
    err = np.abs(exported[:, vocab.real_ids] - compact[:, 1:]).max()
    print(f"export vs compact run: max |dlogits| = {err:.1e} (max |logit| {scale:.1f})")
    assert err <= 1e-5 * scale
    unseen = np.ones(MODEL_VOCAB_SIZE, bool)
    unseen[vocab.real_ids] = False
    assert np.all(exported[:, unseen] == 0)

    # transformers' own class on the exported directory gives the same logits.
    ref_python = os.environ.get("HF_REF_PYTHON")
    if not ref_python:
        pytest.fail("HF_REF_PYTHON is unset: point it at the reference interpreter (.venv-ref/bin/python)")
    np.savez(tmp_path / "inputs.npz", input_ids=real[None].astype(np.int64))
    subprocess.run([ref_python, "-m", "tools.hf_reference.generation_reference", "logits", "--model_dir", str(out),
                    "--inputs", str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "hf.npz")],
                   check=True, cwd=REPO, timeout=600)
    reference = np.load(tmp_path / "hf.npz")["logits"][0]
    err = np.abs(reference[:, vocab.real_ids] - compact[:, 1:]).max()
    print(f"transformers on the export vs compact run: max |dlogits| = {err:.1e}")
    # Another implementation (transformers' chunked PyTorch delta rule vs the run's recurrence) on weights of
    # 0.5 sigma: ~1.5e-5 of the logit scale here; a row mapped to the wrong id would be off by O(scale).
    assert err <= 5e-5 * scale and np.all(reference[:, unseen] == 0)


def test_tied_embeddings(run, tmp_path):
    workdir, model_config, _, vocab = run
    tied = tmp_path / "tied_run"
    tied.mkdir()
    shutil.copy(workdir / VOCAB_FILE, tied / VOCAB_FILE)
    model = save_run(tied, model_config.replace(tie_word_embeddings=True, mtp_num_hidden_layers=0), VOCAB_FILE)
    export_hf(tied, tmp_path / "hf")
    real = corpus_text(vocab)[1]
    compact = logits_of(model, vocab.to_compact(real))
    exported = logits_of(load_pretrained(tmp_path / "hf"), real)
    assert np.abs(exported[:, vocab.real_ids] - compact[:, 1:]).max() <= 1e-5 * np.abs(compact).max()
    assert np.count_nonzero(exported) == exported.shape[0] * len(vocab.real_ids)  # unseen ids: logit 0


def test_keep_compact_vocab_writes_the_mapping(run, tmp_path):
    workdir, model_config, _, vocab = run
    out = tmp_path / "compact"
    assert convert_hf.main(["export", "--ckpt", str(workdir / "checkpoints" / str(STEP)), "--out", str(out),
                            "--keep_compact_vocab"]) == 0
    assert json.loads((out / "config.json").read_text())["vocab_size"] == model_config.vocab_size == vocab.size
    np.testing.assert_array_equal(CompactVocab.load(out / VOCAB_FILE).real_ids, vocab.real_ids)


def test_refusals_write_nothing(run, hf_fixtures, tmp_path):
    workdir, model_config, _, vocab = run
    lonely = tmp_path / "lonely" / "checkpoints" / str(STEP)  # a step directory copied without its workdir
    shutil.copytree(workdir / "checkpoints" / str(STEP), lonely)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"fewer than the 248320 ids of the Qwen.*no compact_vocab.json.*"
                                              r"compact_vocab=False"):
        export_hf(lonely, out)
    assert convert_hf.main(["export", "--ckpt", str(lonely), "--out", str(out)]) == 1
    CompactVocab(vocab.real_ids[:-1]).save(tmp_path / "lonely" / VOCAB_FILE)  # another run's mapping
    with pytest.raises(CheckpointError, match=f"maps {vocab.size - 2} ids but .* {vocab.size} rows"):
        export_hf(lonely, out)
    CompactVocab(np.append(vocab.real_ids[:-1], MODEL_VOCAB_SIZE)).save(tmp_path / "lonely" / VOCAB_FILE)
    with pytest.raises(CheckpointError, match=f"real id {MODEL_VOCAB_SIZE} is outside"):
        export_hf(lonely, out)
    real_ids_run = tmp_path / "real_ids_run"  # metadata: a run on real ids; the stray mapping file is ignored
    save_run(real_ids_run, model_config.replace(vocab_size=300), None)
    CompactVocab(np.arange(299)).save(real_ids_run / VOCAB_FILE)
    with pytest.raises(CheckpointError, match="a run on real Qwen ids whose embedding has only 300 rows"):
        export_hf(real_ids_run, out)
    import_hf(hf_fixtures / "dense_untied", tmp_path / "converted")  # vocab 256, but its own: never remapped
    with pytest.raises(CheckpointError, match="not a run trained on a compact vocabulary"):
        export_hf(tmp_path / "converted", out, keep_compact_vocab=True)
    assert not out.exists() and not list(tmp_path.glob("out.partial-*"))


def test_special_token_ids_are_mapped_to_real_ids(run):
    _, model_config, _, vocab = run
    # Caption runs store compact special ids; ids past the compact size (defaults, a text run's config) are real.
    config = model_config.replace(eos_token_id=(1, 2), pad_token_id=0, image_token_id=3, video_token_id=248057)
    real = real_vocab_config(config, vocab)
    assert real.vocab_size == MODEL_VOCAB_SIZE and real.eos_token_id == tuple(int(i) for i in vocab.real_ids[:2])
    assert (real.pad_token_id, real.image_token_id, real.video_token_id) == (0, vocab.real_ids[2], 248057)
