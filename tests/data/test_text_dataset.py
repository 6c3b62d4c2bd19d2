"""Corpora -> split -> token ids -> compact vocabulary, end to end on small user files."""

import os

import numpy as np
import pytest

from qwen35_jax.data.corpora import load_corpus, split_documents
from qwen35_jax.data.text_dataset import TOKEN_CACHE_DIR, VOCAB_FILE, parse_corpora, prepare_text_data
from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer
from qwen35_jax.data.vocab import UNK_ID, CompactVocab


@pytest.fixture
def text_dir(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    rare = ["zyzzyva", "quokka", "axolotl", "pangolin", "narwhal", "okapi", "tardigrade", "capybara", "aardvark",
            "wombat", "ocelot"]
    for i, word in enumerate(rare):
        (folder / f"{i}.txt").write_text(f"Document number {i}: " + f"alpha beta {word} " * (i + 1), encoding="utf-8")
    return folder


def test_compact_vocab_data(tmp_path, text_dir):
    spec = f"files:{text_dir}/*.txt"
    data = prepare_text_data([spec], workdir=tmp_path / "run", validation_fraction=0.3, split_seed=0,
                             compact_vocab=True)
    assert len(data.train) == 8 and len(data.validation[spec]) == 3  # round(0.3 * 11) held out
    vocab = CompactVocab.load(tmp_path / "run" / VOCAB_FILE)
    np.testing.assert_array_equal(vocab.real_ids, data.vocab.real_ids)
    assert data.vocab_size == vocab.size
    tok = get_tokenizer()
    train_text = [vocab.decode(d, tok.decode) for d in data.train]
    assert all(t.startswith("Document number") and t.endswith("<|endoftext|>") for t in train_text)
    assert all(d.max() < data.vocab_size and d.min() >= 1 for d in data.train)  # no <unk> in training text
    assert os.listdir(tmp_path / "run" / TOKEN_CACHE_DIR)
    # Held-out ids the training text never uses become <unk>; all others keep their compact id.
    train_texts, validation_texts = split_documents(load_corpus(spec), validation_fraction=0.3, seed=0)
    train_ids = {i for text in train_texts for i in tok.encode(text)} | {tok.eos_id}
    unknown = []
    for text, doc in zip(validation_texts, data.validation[spec], strict=True):
        real = tok.encode(text) + [tok.eos_id]
        unknown += [i not in train_ids for i in real]
        assert (doc == UNK_ID).tolist() == [i not in train_ids for i in real]
        np.testing.assert_array_equal(vocab.to_real(doc)[doc != UNK_ID], [i for i in real if i in train_ids])
    assert any(unknown)  # the rare words make sure <unk> occurs


def test_real_vocab_data(tmp_path, text_dir):
    data = prepare_text_data([f"files:{text_dir}/*.txt"], workdir=tmp_path, validation_fraction=0.3, split_seed=0,
                             compact_vocab=False)
    assert data.vocab is None and data.vocab_size == MODEL_VOCAB_SIZE
    assert data.train[0][-1] == get_tokenizer().eos_id
    assert not os.path.exists(tmp_path / VOCAB_FILE)


def test_parse_corpora():
    assert parse_corpora("shakespeare, wiki_fr") == ("shakespeare", "wiki_fr")
    assert parse_corpora(["wiki_es"]) == ("wiki_es",)
    with pytest.raises(ValueError, match="names no corpus"):
        parse_corpora(" , ")
    with pytest.raises(ValueError, match="twice"):
        parse_corpora("wiki_en,wiki_en")
    with pytest.raises(ValueError, match="unknown"):
        parse_corpora("shakespeare,klingon")
