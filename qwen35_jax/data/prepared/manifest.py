"""The manifest of a prepared dataset: what ``tools.prepare_data`` wrote and how, read at start-up instead of the
shards themselves.

A prepared dataset is a directory (local or a URL, see ``storage``)::

  manifest.json                        written last: a directory without it is an unfinished preparation
  train-00000-of-00004.tokens          int32 little-endian token ids; each document ends with <|endoftext|>
  ...
  validation-00000-of-00001.tokens
  train.token_counts.npy               int64 [tokenizer vocab size]: how often each id occurs in the split
  validation.token_counts.npy

``manifest.json`` holds the format, the tokenizer fingerprint and end-of-text id, the inputs, the split rule, and per
split its shards with their token, document and text-byte counts and sha256, plus the counts of skipped input
records. It has no timestamps or host names: the same inputs and options give the same bytes on any engine and any
number of workers. ``Manifest.fingerprint`` (sha256 of the file) identifies the data; checkpoints store it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import qwen35_jax.data.prepared.storage as storage

FORMAT = "qwen35_jax.prepared/1"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "validation")
TOKEN_DTYPE = "<i4"
TOKEN_BYTES = 4


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tokens"


def counts_name(split: str) -> str:
    return f"{split}.token_counts.npy"


@dataclasses.dataclass(frozen=True)
class Shard:
    file: str
    tokens: int
    documents: int
    text_bytes: int  # UTF-8 bytes of the documents' text
    sha256: str


@dataclasses.dataclass(frozen=True)
class Split:
    shards: tuple[Shard, ...]
    counts_file: str

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def text_bytes(self) -> int:
        return sum(s.text_bytes for s in self.shards)


@dataclasses.dataclass(frozen=True)
class Manifest:
    tokenizer: str  # QwenTokenizer.fingerprint
    eos_id: int
    inputs: tuple[dict[str, Any], ...]  # {"path", "bytes"} per input file, or {"corpus": name} for a bundled one
    text_field: str
    split_rule: dict[str, Any]  # {"rule", "validation_fraction", "seed"}
    splits: dict[str, Split]
    skipped: dict[str, int]  # input records left out, by reason
    fingerprint: str = ""  # sha256 of manifest.json (set when written or read)

    def to_json(self) -> bytes:
        data = {
            "format": FORMAT, "tokenizer": self.tokenizer, "eos_id": self.eos_id, "inputs": list(self.inputs),
            "text_field": self.text_field, "split_rule": self.split_rule,
            "splits": {name: {"tokens": split.tokens, "documents": split.documents, "text_bytes": split.text_bytes,
                              "token_counts": split.counts_file,
                              "shards": [dataclasses.asdict(s) for s in split.shards]}
                       for name, split in self.splits.items()},
            "skipped": dict(sorted(self.skipped.items())),
        }
        return (json.dumps(data, indent=1, sort_keys=False) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            splits = {name: Split(tuple(Shard(**s) for s in split["shards"]), split["token_counts"])
                      for name, split in data["splits"].items()}
            if set(splits) != set(SPLITS):
                raise ValueError(f"splits {sorted(splits)}, expected {list(SPLITS)}")
            return cls(tokenizer=data["tokenizer"], eos_id=int(data["eos_id"]), inputs=tuple(data["inputs"]),
                       text_field=data["text_field"], split_rule=data["split_rule"], splits=splits,
                       skipped={k: int(v) for k, v in data["skipped"].items()},
                       fingerprint=hashlib.sha256(raw).hexdigest())
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{where} is not a valid prepared-dataset manifest ({e}); prepare the dataset again with "
                             "python -m tools.prepare_data --overwrite") from None


def read_manifest(directory: str) -> Manifest:
    """The manifest of the prepared dataset in ``directory``, with errors that say what to do."""
    path = storage.join(directory, MANIFEST_FILE)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{directory} is not a prepared dataset (no {MANIFEST_FILE}; an interrupted preparation leaves none): "
            f"run python -m tools.prepare_data --input GLOB --output {directory}") from None
    return Manifest.from_json(raw, path)
