"""Writing a prepared dataset so that no reader ever sees a partial one, on any engine.

Shards are written into a staging directory of the run beside the output (``<output>.partial/<run id>``) with their
statistics; only ``finalize`` touches the output: it checks the result (train and held-out documents exist), moves
the shards in and writes ``manifest.json`` last. A killed preparation leaves only ``<output>.partial``, which the
next run deletes before it starts; a straggling worker of a killed cluster job can only write into its own run's
directory, never into the next run's. An existing dataset is replaced only with ``overwrite`` and only once its
successor is complete.

``prepare_documents`` is the in-process engine (the bundled corpora and ``files:`` globs of a training run, tests);
``tools.prepare_data`` runs the same per-document and per-shard functions on Apache Beam. Both call ``finalize``
and give the same bytes.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

import qwen35_jax.data.prepared.storage as storage
from qwen35_jax.data.prepared.documents import (
    SplitRule,
    TokenizedDocument,
    counts_bytes,
    counts_from_bytes,
    encode_shard,
    shard_of,
    tokenize_document,
)
from qwen35_jax.data.prepared.inputs import SKIP_REASONS, Skipped
from qwen35_jax.data.prepared.manifest import MANIFEST_FILE, SPLITS, Manifest, Shard, Split, counts_name, shard_name

STAGING_SUFFIX = ".partial"
SKIPPED_FILE = "skipped.json"


class FileOps(Protocol):
    """The file operations a preparation needs (local here; Beam's FileSystems in ``tools.prepare_data``)."""

    def write(self, path: str, data: bytes) -> None: ...
    def read(self, path: str) -> bytes: ...
    def exists(self, path: str) -> bool: ...
    def listdir(self, directory: str) -> list[str]: ...  # file names; [] for a missing directory
    def rename(self, source: str, destination: str) -> None: ...
    def remove_tree(self, directory: str) -> None: ...  # no error when missing
    def remove(self, path: str) -> None: ...


class LocalFileOps:
    def write(self, path: str, data: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, directory: str) -> list[str]:
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def rename(self, source: str, destination: str) -> None:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(source, destination)

    def remove_tree(self, directory: str) -> None:
        shutil.rmtree(directory, ignore_errors=True)

    def remove(self, path: str) -> None:
        os.remove(path)


def staging_dir(output: str, run: str | None = None) -> str:
    """``<output>.partial/<run>`` (a new run id when None): where one run's workers write."""
    return storage.join(output.rstrip("/") + STAGING_SUFFIX, run or uuid.uuid4().hex[:16])


def check_output(output: str, overwrite: bool, ops: FileOps) -> None:
    """Refuse an existing output without ``overwrite`` (before any work), and clear the staging directory a killed
    preparation may have left."""
    if ops.listdir(output) and not overwrite:
        what = "a prepared dataset" if ops.exists(storage.join(output, MANIFEST_FILE)) else "files"
        raise FileExistsError(f"output {output} already holds {what}; choose another --output or pass --overwrite "
                              "to replace it once the new one is complete")
    ops.remove_tree(output.rstrip("/") + STAGING_SUFFIX)


def shard_counts(input_bytes: int, validation_fraction: float, shard_bytes: int) -> dict[str, int]:
    """Shards per split from the inputs' total size (about ``shard_bytes`` of input per training shard): a function
    of the inputs, never of the engine or its workers."""
    train = max(1, -(-input_bytes // shard_bytes))
    return {"train": train, "validation": max(1, -(-int(train * validation_fraction * 4) // 4))}


def write_staged_shard(staging: str, split: str, index: int, count: int, documents: Iterable[TokenizedDocument],
                       vocab_size: int, ops: FileOps) -> Shard:
    """Encode and write one shard (its tokens, token counts and statistics) into the staging directory."""
    name = shard_name(split, index, count)
    encoded = encode_shard(name, documents, vocab_size)
    ops.write(storage.join(staging, name), encoded.data)
    ops.write(storage.join(staging, f"{name}.counts.npy"), counts_bytes(encoded.counts))
    ops.write(storage.join(staging, f"{name}.json"), json.dumps(encoded.shard.__dict__).encode())
    return encoded.shard


def write_staged_skipped(staging: str, skipped: dict[str, int], ops: FileOps) -> None:
    ops.write(storage.join(staging, SKIPPED_FILE), json.dumps(dict(sorted(skipped.items()))).encode())


def finalize(output: str, staging: str, *, shards: dict[str, int], vocab_size: int, tokenizer: str, eos_id: int,
             inputs: Sequence[dict[str, Any]], text_field: str, rule: SplitRule, ops: FileOps) -> Manifest:
    """Turn the run's ``staging`` directory into the dataset at ``output`` (see the module docstring). Shards that
    received no document are written empty here, so every engine gives the same files."""
    staged = set(ops.listdir(staging))
    skipped = json.loads(ops.read(storage.join(staging, SKIPPED_FILE))) if SKIPPED_FILE in staged else {}
    skipped = {reason: int(skipped.get(reason, 0)) for reason in SKIP_REASONS}
    splits = {}
    for split in SPLITS:
        entries, counts = [], np.zeros(vocab_size, np.int64)
        for index in range(shards[split]):
            name = shard_name(split, index, shards[split])
            if name not in staged:
                write_staged_shard(staging, split, index, shards[split], [], vocab_size, ops)
            entries.append(Shard(**json.loads(ops.read(storage.join(staging, f"{name}.json")))))
            counts += counts_from_bytes(ops.read(storage.join(staging, f"{name}.counts.npy")))
        ops.write(storage.join(staging, counts_name(split)), counts_bytes(counts))
        splits[split] = Split(tuple(entries), counts_name(split))
    manifest = Manifest(tokenizer=tokenizer, eos_id=eos_id, inputs=tuple(inputs), text_field=text_field,
                        split_rule=rule.describe(), splits=splits, skipped=skipped)
    _check_result(output, manifest)
    raw = manifest.to_json()
    ops.write(storage.join(staging, MANIFEST_FILE), raw)
    # The swap: the old manifest goes first (a reader then sees "unfinished", never a mix), the new one comes last.
    if ops.exists(storage.join(output, MANIFEST_FILE)):
        ops.remove(storage.join(output, MANIFEST_FILE))
    keep = {s.file for split in splits.values() for s in split.shards} | {counts_name(s) for s in SPLITS}
    for name in ops.listdir(output):
        if name.endswith((".tokens", ".token_counts.npy")) and name not in keep:
            ops.remove(storage.join(output, name))
    for name in sorted(keep):
        ops.rename(storage.join(staging, name), storage.join(output, name))
    ops.rename(storage.join(staging, MANIFEST_FILE), storage.join(output, MANIFEST_FILE))
    ops.remove_tree(output.rstrip("/") + STAGING_SUFFIX)
    return Manifest.from_json(raw, storage.join(output, MANIFEST_FILE))


def _check_result(output: str, manifest: Manifest) -> None:
    train, validation = manifest.splits["train"], manifest.splits["validation"]
    skipped = sum(manifest.skipped.values())
    if not train.documents and not validation.documents:
        raise ValueError(f"the input holds no document ({skipped} records skipped: {manifest.skipped}); check "
                         f"--input and --text_field; nothing was written to {output}")
    if not validation.documents or not train.documents:
        empty = "held-out" if not validation.documents else "training"
        raise ValueError(f"the split left no {empty} document ({train.documents} train, {validation.documents} held "
                         f"out of {train.documents + validation.documents}); change --validation_fraction (now "
                         f"{manifest.split_rule['validation_fraction']}) or --split_seed; nothing was written to "
                         f"{output}")


def prepare_documents(texts: Iterable[str | Skipped], output: str, *, rule: SplitRule, shards: dict[str, int],
                      inputs: Sequence[dict[str, Any]], text_field: str, tokenizer: Any, overwrite: bool = False,
                      ops: FileOps | None = None) -> Manifest:
    """The in-process engine: tokenise, split and shard ``texts`` and write the dataset at ``output``. Holds the
    tokens of the whole input in memory (small corpora); large ones go through ``tools.prepare_data`` (Beam)."""
    ops = ops or LocalFileOps()
    check_output(output, overwrite, ops)
    staging = staging_dir(output)
    try:
        groups: dict[tuple[str, int], list[TokenizedDocument]] = collections.defaultdict(list)
        skipped: collections.Counter[str] = collections.Counter()
        for text in texts:
            if isinstance(text, Skipped):
                skipped[text.reason] += 1
                continue
            split, document = tokenize_document(text, tokenizer, rule)
            groups[split, shard_of(document.digest, shards[split])].append(document)
        for (split, index), documents in sorted(groups.items()):
            write_staged_shard(staging, split, index, shards[split], documents, tokenizer.vocab_size, ops)
        write_staged_skipped(staging, dict(skipped), ops)
        return finalize(output, staging, shards=shards, vocab_size=tokenizer.vocab_size,
                        tokenizer=tokenizer.fingerprint, eos_id=tokenizer.eos_id, inputs=inputs, text_field=text_field,
                        rule=rule, ops=ops)
    finally:
        ops.remove_tree(output.rstrip("/") + STAGING_SUFFIX)
