"""Tokenising documents appends <|endoftext|> and caches ids on disk keyed by the exact texts."""

import os

import numpy as np
import pytest

from qwen35_jax.data.token_cache import tokenize_documents
from qwen35_jax.data.tokenizer import get_tokenizer

TEXTS = ["The quality of mercy is not strained.", "", "Le cœur a ses raisons."]


def test_documents_end_with_eos():
    tok = get_tokenizer()
    docs = tokenize_documents(TEXTS, tok)
    assert len(docs) == 3
    for text, doc in zip(TEXTS, docs, strict=True):
        assert doc.dtype == np.int32 and doc[-1] == tok.eos_id
        assert doc[:-1].tolist() == tok.encode(text)


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    tok = get_tokenizer()
    first = tokenize_documents(TEXTS, tok, cache_dir=tmp_path)
    assert len(os.listdir(tmp_path)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("tokenizer called despite a cached result")

    monkeypatch.setattr(tok, "encode", fail)
    second = tokenize_documents(TEXTS, tok, cache_dir=tmp_path)
    assert [d.tolist() for d in second] == [d.tolist() for d in first]
    # Different texts (even only one character) miss the cache.
    with pytest.raises(AssertionError, match="despite a cached result"):
        tokenize_documents(TEXTS[:-1] + ["Le cœur a ses raisons!"], tok, cache_dir=tmp_path)


def test_no_texts():
    assert tokenize_documents([], get_tokenizer()) == []
