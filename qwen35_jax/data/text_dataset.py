"""Text data of a training run: corpus specs -> prepared datasets -> (optional) compact vocabulary -> streams.

Corpus specs (``data.corpora``, comma-separated):

* ``prepared:DIR`` — a dataset written by ``python -m tools.prepare_data`` (a local path or a URL such as
  ``gs://bucket/web``); its name (for weights and metrics) is the directory's base name.
* ``shakespeare``, ``wiki_en``, ``wiki_fr``, ``wiki_es`` — the bundled corpora (``corpora``);
* ``files:<glob>`` — your files: ``*.jsonl`` / ``*.parquet`` records (field ``text``), any other file one UTF-8
  document.

Bundled corpora and ``files:`` globs go through the same preparation (``prepared.writer``, in this process) into a
cache under the workdir, ``<workdir>/prepared/<name>-<key>``, keyed by the inputs, the split and the tokenizer; in a
multi-process run process 0 prepares and the others wait for its manifest. Every source is then read the same way:
training windows through ``prepared.stream`` (weighted by ``data.weights``, by default in proportion to the sources'
training tokens), held-out windows per source for evaluation.

Token ids in a stream are *model* ids: compact ids when a compact vocabulary is used (built from the sources'
``token_counts``, saved as ``<workdir>/compact_vocab.json``), real Qwen3.5 ids otherwise.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np

import qwen35_jax.data.prepared.storage as storage
from qwen35_jax.data.corpora import BUNDLED_CORPORA, bundled_version, check_corpus_spec, load_corpus
from qwen35_jax.data.prepared.dataset import PreparedDataset, TokenWindows
from qwen35_jax.data.prepared.documents import SplitRule
from qwen35_jax.data.prepared.inputs import Skipped, input_format, open_local, read_documents
from qwen35_jax.data.prepared.manifest import MANIFEST_FILE
from qwen35_jax.data.prepared.stream import StreamSource, TrainStream
from qwen35_jax.data.prepared.writer import prepare_documents
from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer
from qwen35_jax.data.vocab import CompactVocab

VOCAB_FILE = "compact_vocab.json"
CACHE_DIR = "prepared"
FILES_PREFIX = "files:"
PREPARED_PREFIX = "prepared:"
_RETIRED_PREFIX = "arrayrecord:"
_WAIT_SECONDS = 3600.0  # how long processes > 0 wait for process 0's preparation of a cached corpus


def parse_corpora(corpora: str | Sequence[str]) -> tuple[str, ...]:
    """Corpus specs from a comma-separated string (as given on the command line) or a sequence; each is checked
    (known name, package installed, non-empty path) so a bad spec fails before any expensive work."""
    specs = tuple(s.strip() for s in (corpora.split(",") if isinstance(corpora, str) else corpora) if s.strip())
    if not specs:
        raise ValueError(f"corpora={corpora!r} names no corpus; e.g. 'shakespeare' or 'prepared:/data/web'")
    if len(set(specs)) != len(specs):
        raise ValueError(f"corpora={corpora!r} lists a corpus twice; list each once")
    for spec in specs:
        if spec.startswith(_RETIRED_PREFIX):
            raise ValueError(f"corpus spec {spec!r}: arrayrecord token files are no longer read; prepare the text "
                             "once with python -m tools.prepare_data --input GLOB --output DIR and train on "
                             "prepared:DIR")
        for prefix in (FILES_PREFIX, PREPARED_PREFIX):
            if spec.startswith(prefix) and not spec[len(prefix):]:
                raise ValueError(f"corpus spec {spec!r} names no path; write e.g. '{prefix}/data/web'")
        if not spec.startswith((FILES_PREFIX, PREPARED_PREFIX)):
            check_corpus_spec(spec)
    names = [source_name(s) for s in specs]
    if len(set(names)) != len(names):
        twice = sorted(n for n in names if names.count(n) > 1)[0]
        raise ValueError(f"corpora={corpora!r} gives two sources the name {twice!r} (a prepared dataset is named by "
                         "its directory's base name); rename one directory")
    return specs


def source_name(spec: str) -> str:
    """The name of a source in weights, metrics and checkpoints: a prepared directory's base name, else the spec."""
    if spec.startswith(PREPARED_PREFIX):
        return storage.normalize(spec[len(PREPARED_PREFIX):]).rstrip("/").rsplit("/", 1)[-1]
    return spec


def parse_weights(weights: str, names: Sequence[str]) -> dict[str, float] | None:
    """``"web=0.7,code=0.3"`` -> ``{"web": 0.7, "code": 0.3}``; ``""`` -> None (proportional to training tokens)."""
    if not weights.strip():
        return None
    parsed: dict[str, float] = {}
    for item in weights.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep:
            raise ValueError(f"data.weights={weights!r}: {item!r} is not name=weight; e.g. 'web=0.7,code=0.3'")
        name = name.strip()
        if name not in names:
            raise ValueError(f"data.weights={weights!r} names dataset {name!r}, which data.corpora does not have; "
                             f"its datasets are {list(names)}")
        try:
            parsed[name] = float(value)
        except ValueError:
            raise ValueError(f"data.weights={weights!r}: weight {value!r} of {name!r} is not a number") from None
        if not parsed[name] > 0:
            raise ValueError(f"data.weights={weights!r}: the weight of {name!r} is {parsed[name]}; weights must be "
                             "> 0 (leave a dataset out of data.corpora instead)")
    missing = [n for n in names if n not in parsed]
    if missing:
        raise ValueError(f"data.weights={weights!r} gives no weight to {missing}; give every dataset of "
                         "data.corpora a weight, or leave data.weights empty (proportional to tokens)")
    return parsed


def _file_texts(paths: Sequence[str]) -> Iterator[str | Skipped]:
    for path in paths:
        try:
            input_format(path)
        except ValueError:  # any other file is one text document
            with open(path, "rb") as stream:
                yield from read_documents(stream, path, "text", kind="text")
            continue
        with open_local(path) as stream:
            yield from read_documents(stream, path, "text")


def _cache_key(spec: str, validation_fraction: float, split_seed: int, tokenizer_fingerprint: str,
               ) -> tuple[str, list[dict], list[str]]:
    """(cache key, manifest inputs, file paths) of a bundled corpus or ``files:`` glob."""
    h = hashlib.sha256(f"{spec}\0{validation_fraction!r}\0{split_seed}\0{tokenizer_fingerprint}".encode())
    if spec.startswith(FILES_PREFIX):
        pattern = spec[len(FILES_PREFIX):]
        paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p))
        if not paths:
            raise ValueError(f"corpus spec {spec!r} matches no files; give a glob of text, JSONL or Parquet files, "
                             f"e.g. '{FILES_PREFIX}~/texts/*.txt'")
        inputs = []
        for p in paths:
            stat = os.stat(p)
            h.update(f"\0{p}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
            inputs.append({"path": os.path.abspath(p), "bytes": stat.st_size})
        return h.hexdigest()[:16], inputs, paths
    h.update(bundled_version(spec).encode())
    return h.hexdigest()[:16], [{"corpus": spec}], []


def _cached_dataset(spec: str, workdir: str, rule: SplitRule) -> PreparedDataset:
    tokenizer = get_tokenizer()
    key, inputs, paths = _cache_key(spec, rule.validation_fraction, rule.seed, tokenizer.fingerprint)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (spec if spec in BUNDLED_CORPORA else "files"))
    directory = os.path.join(os.path.abspath(workdir), CACHE_DIR, f"{safe}-{key}")
    manifest = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(manifest):
        if jax.process_index() == 0:
            texts = _file_texts(paths) if paths else iter(load_corpus(spec).documents.values())
            prepare_documents(texts, directory, rule=rule, shards={"train": 1, "validation": 1}, inputs=inputs,
                              text_field="text", tokenizer=tokenizer, overwrite=True)
        else:
            deadline = time.monotonic() + _WAIT_SECONDS
            while not os.path.exists(manifest):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"process {jax.process_index()} waited {_WAIT_SECONDS:.0f} s for process 0 "
                                       f"to prepare {spec!r} into {directory}; check process 0's log")
                time.sleep(0.5)
    return PreparedDataset.open(directory)


def open_source(spec: str, *, workdir: str, validation_fraction: float, split_seed: int) -> PreparedDataset:
    """The prepared dataset of one spec (prepared into the workdir cache first, for bundled corpora and files),
    checked against this tokenizer."""
    if spec.startswith(PREPARED_PREFIX):
        dataset = PreparedDataset.open(spec[len(PREPARED_PREFIX):])
    else:
        dataset = _cached_dataset(spec, workdir, SplitRule(validation_fraction, split_seed))
    fingerprint = get_tokenizer().fingerprint
    if dataset.manifest.tokenizer != fingerprint:
        raise ValueError(f"{dataset.directory} was prepared with tokenizer {dataset.manifest.tokenizer!r}, this "
                         f"installation has {fingerprint!r}; prepare it again (tools.prepare_data --overwrite) or "
                         "install the tokenizer it was prepared with")
    return dataset


@dataclasses.dataclass(frozen=True)
class TextData:
    sources: dict[str, PreparedDataset]  # by source name, in data.corpora order
    weights: dict[str, float]  # normalised mixture weights
    vocab_size: int  # the model's vocab_size for these ids
    vocab: CompactVocab | None  # None: ids are real Qwen3.5 ids
    to_model: np.ndarray | None  # real id -> model id table of the compact vocabulary

    @property
    def train_tokens(self) -> int:
        return sum(d.manifest.splits["train"].tokens for d in self.sources.values())

    def train_stream(self, *, seq_len: int, global_batch_size: int, seed: int,
                     rows: slice | None = None) -> TrainStream:
        sources = [StreamSource(name, d.windows("train", seq_len), self.weights[name])
                   for name, d in self.sources.items()]
        return TrainStream(sources, seq_len=seq_len, global_batch_size=global_batch_size, seed=seed, rows=rows,
                           to_model=self.to_model)

    def validation_windows(self, seq_len: int) -> dict[str, TokenWindows]:
        """Every held-out window of each source, in order, the last one of each shard padded."""
        return {name: d.windows("validation", seq_len, pad_last=True) for name, d in self.sources.items()}


def prepare_text_data(corpora: str | Sequence[str], *, workdir: str | os.PathLike, validation_fraction: float,
                      split_seed: int, compact_vocab: bool, compact_vocab_max_size: int | None = None,
                      weights: str = "") -> TextData:
    """Open (preparing where needed) every source of ``corpora``; with ``compact_vocab``, build the vocabulary from
    their training token counts (plus ``<|endoftext|>``) and save it in ``workdir`` (process 0)."""
    workdir = os.fspath(workdir)
    specs = parse_corpora(corpora)
    names = [source_name(s) for s in specs]
    given = parse_weights(weights, names)
    sources = {name: open_source(spec, workdir=workdir, validation_fraction=validation_fraction,
                                 split_seed=split_seed) for name, spec in zip(names, specs, strict=True)}
    raw = given or {n: float(d.manifest.splits["train"].tokens) for n, d in sources.items()}
    total = sum(raw.values())
    normalised = {n: w / total for n, w in raw.items()}
    if not compact_vocab:
        return TextData(sources, normalised, MODEL_VOCAB_SIZE, None, None)
    counts = sum(d.token_counts("train") for d in sources.values())
    vocab = CompactVocab.from_counts(counts, always_include=(get_tokenizer().eos_id,), max_size=compact_vocab_max_size)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        vocab.save(os.path.join(workdir, VOCAB_FILE))
    return TextData(sources, normalised, vocab.size, vocab, vocab.model_table(MODEL_VOCAB_SIZE))
