"""Reading a prepared dataset: the manifest, token windows of a split, and the rows the model trains on.

A split's shards are cut into windows of ``seq_len + 1`` tokens starting every ``seq_len`` tokens (consecutive
windows share one token, so every next-token pair is trained on once); a shard's last partial window is dropped
from training (at most ``seq_len`` tokens per shard, shards hold ~10^8) and padded for evaluation. Window ``i`` of the
split is found by a binary search over the per-shard window counts from the manifest: start-up reads only the
manifest, and a process holds O(shards) integers, whatever the number of documents.

Rows (``window_row``): ``input_ids = w[:-1]``, ``targets = w[1:]``; documents end with <|endoftext|>, so the segment
of position ``t`` is 1 + the number of end-of-text tokens before ``t`` in the window, and a pair is trained on
unless its input is an end-of-text token (its target is the next document's first token). This is exactly what
``packing.pack_documents`` gives for the same token stream.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import qwen35_jax.data.prepared.storage as storage
from qwen35_jax.data.prepared.documents import counts_from_bytes
from qwen35_jax.data.prepared.manifest import TOKEN_BYTES, TOKEN_DTYPE, Manifest, read_manifest

Row = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset directory (local path or URL) and its manifest."""

    directory: str
    manifest: Manifest

    @classmethod
    def open(cls, directory: str) -> PreparedDataset:
        directory = storage.normalize(directory)
        return cls(directory, read_manifest(directory))

    def token_counts(self, split: str) -> np.ndarray:
        """int64 ``[tokenizer vocab size]``: occurrences of each id in ``split`` (for compact vocabularies)."""
        path = storage.join(self.directory, self.manifest.splits[split].counts_file)
        return counts_from_bytes(storage.read_bytes(path))

    def windows(self, split: str, seq_len: int, *, pad_last: bool = False) -> TokenWindows:
        return TokenWindows(self, split, seq_len, pad_last)


class TokenWindows:
    """Random access to the ``seq_len + 1``-token windows of one split (see the module docstring); picklable."""

    def __init__(self, dataset: PreparedDataset, split: str, seq_len: int, pad_last: bool) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        self.dataset, self.split, self.seq_len, self.pad_last = dataset, split, seq_len, pad_last
        shards = dataset.manifest.splits[split].shards
        self._files = [s.file for s in shards]
        self._tokens = np.asarray([s.tokens for s in shards], np.int64)
        pairs = np.maximum(self._tokens - 1, 0)
        per_shard = -(-pairs // seq_len) if pad_last else pairs // seq_len
        self._first = np.concatenate([[0], np.cumsum(per_shard)])
        self._reader = storage.ShardReader(dataset.directory)
        self.eos_id = dataset.manifest.eos_id

    def __len__(self) -> int:
        return int(self._first[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, first token) of window ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} is out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._first, index, side="right")) - 1
        return shard, int(index - self._first[shard]) * self.seq_len

    def read(self, index: int) -> np.ndarray:
        """int32 ``[seq_len + 1]`` tokens of window ``index``; a padded window's missing tokens are -1."""
        shard, start = self.locate(index)
        stop = min(start + self.seq_len + 1, int(self._tokens[shard]))
        raw = self._reader.read(self._files[shard], start * TOKEN_BYTES, stop * TOKEN_BYTES)
        tokens = np.frombuffer(raw, TOKEN_DTYPE).astype(np.int32)
        if tokens.size < self.seq_len + 1:
            tokens = np.concatenate([tokens, np.full(self.seq_len + 1 - tokens.size, -1, np.int32)])
        return tokens


def window_row(window: np.ndarray, eos_id: int, to_model: np.ndarray | None = None) -> Row:
    """The training row of a window (see the module docstring); ``to_model`` maps real ids to model ids (a compact
    vocabulary's table), -1 marks padding (token 0, segment 0, no loss)."""
    valid = window >= 0
    ends = (window == eos_id).astype(np.int32)
    segments = np.where(valid, 1 + np.concatenate([[0], np.cumsum(ends[:-1])]), 0).astype(np.int32)
    tokens = np.where(valid, window, 0)
    if to_model is not None:
        tokens = to_model[tokens]
    mask = valid[:-1] & valid[1:] & (ends[:-1] == 0)
    return {"input_ids": tokens[:-1].astype(np.int32), "targets": tokens[1:].astype(np.int32),
            "segment_ids": segments[:-1], "loss_mask": mask}

