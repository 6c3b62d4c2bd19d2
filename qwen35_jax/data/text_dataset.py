"""Assemble training text: corpora -> train/validation split -> token ids (cached) -> optional compact vocabulary.

Corpus specs: the bundled corpora (``shakespeare``, ``wiki_en`` ...), ``files:<glob>`` (your own UTF-8 text files,
one document each) or ``arrayrecord:<glob>`` (already tokenised documents: one record per document holding its
real Qwen3.5 token ids as little-endian int32, the format of the token cache written by ``token_cache``).

The result holds token ids in *model space*: compact ids when a compact vocabulary is used (saved as
``<workdir>/compact_vocab.json``), real Qwen3.5 ids otherwise.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Sequence

import numpy as np

from qwen35_jax.data.corpora import Corpus, check_corpus_spec, load_corpus, split_documents
from qwen35_jax.data.token_cache import read_token_records, tokenize_documents
from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer
from qwen35_jax.data.vocab import CompactVocab

VOCAB_FILE = "compact_vocab.json"
TOKEN_CACHE_DIR = "token_cache"
ARRAY_RECORD_PREFIX = "arrayrecord:"


@dataclasses.dataclass(frozen=True)
class TextData:
    train: list[np.ndarray]  # one int32 array per document, all corpora together
    validation: dict[str, list[np.ndarray]]  # held-out documents per corpus spec
    vocab_size: int  # the model's vocab_size for these ids
    vocab: CompactVocab | None  # None: ids are real Qwen3.5 ids
    # The held-out documents as real Qwen3.5 ids (``validation`` itself without a compact vocabulary): what an
    # out-of-vocabulary <unk> stood for, e.g. to count the held-out text's bytes.
    validation_real: dict[str, list[np.ndarray]] | None = None


def parse_corpora(corpora: str | Sequence[str]) -> tuple[str, ...]:
    """Corpus specs from a comma-separated string (as given on the command line) or a sequence; each is checked
    (known name, package installed) so a bad spec fails before any expensive work."""
    specs = tuple(s.strip() for s in (corpora.split(",") if isinstance(corpora, str) else corpora) if s.strip())
    if not specs:
        raise ValueError(f"corpora={corpora!r} names no corpus; e.g. 'shakespeare' or 'shakespeare,wiki_en'")
    if len(set(specs)) != len(specs):
        raise ValueError(f"corpora={corpora!r} lists a corpus twice; list each once")
    for spec in specs:
        if spec.startswith(ARRAY_RECORD_PREFIX):
            if not spec[len(ARRAY_RECORD_PREFIX):]:
                raise ValueError(f"corpus spec {spec!r} has an empty glob; write e.g. "
                                 f"'{ARRAY_RECORD_PREFIX}~/tokens/*.array_record'")
        else:
            check_corpus_spec(spec)
    return specs


def _split_token_records(spec: str, validation_fraction: float, split_seed: int,
                         ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train/validation documents of an ``arrayrecord:<glob>`` spec, split like text corpora (by a seeded hash of
    each document's key ``<file>:<record index>``)."""
    paths = sorted(glob.glob(os.path.expanduser(spec[len(ARRAY_RECORD_PREFIX):])))
    if not paths:
        raise ValueError(f"corpus spec {spec!r} matches no file; check the glob")
    docs = {f"{os.path.basename(p)}:{i}": d for p in paths for i, d in enumerate(read_token_records(p))}
    # split_documents only ranks keys; the values may be any objects (here token arrays).
    train, validation = split_documents(Corpus(spec, docs), validation_fraction=validation_fraction,
                                        seed=split_seed)  # type: ignore[arg-type]
    return list(train), list(validation)


def prepare_text_data(corpora: str | Sequence[str], *, workdir: str | os.PathLike, validation_fraction: float,
                      split_seed: int, compact_vocab: bool, compact_vocab_max_size: int | None = None) -> TextData:
    """Load, split and tokenise ``corpora`` (specs as accepted by ``parse_corpora``); with ``compact_vocab``, build
    the vocabulary from the training documents (plus ``<|endoftext|>``), save it in ``workdir`` and map every
    document to compact ids."""
    tokenizer = get_tokenizer()
    cache_dir = os.path.join(workdir, TOKEN_CACHE_DIR)
    train: list[np.ndarray] = []
    validation: dict[str, list[np.ndarray]] = {}
    for spec in parse_corpora(corpora):
        if spec.startswith(ARRAY_RECORD_PREFIX):
            train_docs, validation[spec] = _split_token_records(spec, validation_fraction, split_seed)
            train += train_docs
            continue
        train_texts, validation_texts = split_documents(load_corpus(spec), validation_fraction=validation_fraction,
                                                        seed=split_seed)
        train += tokenize_documents(train_texts, tokenizer, cache_dir=cache_dir)
        validation[spec] = tokenize_documents(validation_texts, tokenizer, cache_dir=cache_dir)
    if not compact_vocab:
        return TextData(train, validation, MODEL_VOCAB_SIZE, None, validation_real=validation)
    vocab = CompactVocab.build(train, always_include=(tokenizer.eos_id,), max_size=compact_vocab_max_size)
    os.makedirs(workdir, exist_ok=True)
    vocab.save(os.path.join(workdir, VOCAB_FILE))
    return TextData(
        train=[vocab.to_compact(d) for d in train],
        validation={spec: [vocab.to_compact(d) for d in docs] for spec, docs in validation.items()},
        vocab_size=vocab.size,
        vocab=vocab,
        validation_real=validation,
    )
