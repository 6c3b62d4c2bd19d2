"""Compact vocabulary: the real token ids a training corpus uses, renumbered 1..V'-1, with 0 reserved for <unk>.

With the real 248,320-row vocabulary the LM head dominates a tiny model on CPU; training on the compact ids cuts it
to the ~20k ids a corpus actually uses. The mapping is saved with the run (JSON), so compact ids predicted by the
model map back to real ids and, through the real tokenizer, to text. Real ids outside the vocabulary (e.g. in a
validation set or prompt) map to the ``<unk>`` id.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np

UNK_ID = 0
UNK_TEXT = "<unk>"
_FORMAT = "qwen35_jax.compact_vocab/1"


@dataclasses.dataclass(frozen=True, eq=False)
class CompactVocab:
    """``real_ids[c - 1]`` is the real id of compact id ``c >= 1``; ``real_ids`` is sorted and unique."""

    real_ids: np.ndarray

    def __post_init__(self) -> None:
        ids = np.asarray(self.real_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or np.any(np.diff(ids) <= 0):
            raise ValueError("real_ids must be a non-empty, sorted, strictly increasing 1-D array of ids >= 0")
        object.__setattr__(self, "real_ids", ids.astype(np.int32))
        # Dense real -> compact lookup table (~1 MB for the full Qwen vocabulary).
        table = np.full(int(ids[-1]) + 1, UNK_ID, np.int32)
        table[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        object.__setattr__(self, "_table", table)

    @property
    def size(self) -> int:
        """Number of compact ids including ``<unk>``: the model's ``vocab_size``."""
        return self.real_ids.size + 1

    @classmethod
    def build(cls, documents: Iterable[np.ndarray], *, always_include: Sequence[int] = (),
              max_size: int | None = None) -> CompactVocab:
        """The ids used in ``documents`` plus ``always_include``; with ``max_size``, only the ``max_size - 1`` most
        frequent of them (``always_include`` first, then by count, ties by smaller id)."""
        tokens = np.concatenate([np.asarray(d, dtype=np.int64).ravel() for d in documents] + [np.zeros(0, np.int64)])
        if tokens.size and tokens.min() < 0:
            raise ValueError(f"documents contain negative token id {tokens.min()}; token ids must be >= 0")
        return cls.from_counts(np.bincount(tokens), always_include=always_include, max_size=max_size)

    @classmethod
    def from_counts(cls, counts: np.ndarray, *, always_include: Sequence[int] = (),
                    max_size: int | None = None) -> CompactVocab:
        """``build`` from token-id counts (``counts[i]`` = occurrences of id ``i``, e.g. a prepared dataset's
        ``token_counts``): the same vocabulary as ``build`` on the documents they were counted from."""
        forced = list(dict.fromkeys(int(i) for i in always_include))
        if max_size is not None and max_size < len(forced) + 2:
            raise ValueError(f"max_size={max_size} is too small: it must hold <unk>, the {len(forced)} "
                             f"always-included id(s) and at least one more; raise it (e.g. to 8192) or use None")
        counts = np.asarray(counts, np.int64)
        used = np.flatnonzero(counts)
        used = used[~np.isin(used, forced)]
        # Most frequent first, ties by smaller id (lexsort sorts by the last key first).
        others = used[np.lexsort((used, -counts[used]))].tolist()
        keep = forced + others
        if max_size is not None:
            keep = keep[:max_size - 1]
        if not keep:
            raise ValueError("documents contain no tokens and always_include is empty; nothing to build from")
        return cls(np.sort(np.asarray(keep, dtype=np.int64)))

    def model_table(self, size: int) -> np.ndarray:
        """int32 ``[size]``: the compact id of every real id ``0 .. size-1`` (``UNK_ID`` outside the vocabulary), for
        mapping whole windows at once."""
        return self.to_compact(np.arange(size))

    def to_compact(self, real_ids: np.ndarray) -> np.ndarray:
        """Real ids -> compact ids (int32, same shape); ids outside the vocabulary become ``UNK_ID``."""
        real_ids = np.asarray(real_ids, dtype=np.int64)
        inside = (real_ids >= 0) & (real_ids < self._table.size)
        return np.where(inside, self._table[np.where(inside, real_ids, 0)], UNK_ID).astype(np.int32)

    def to_real(self, compact_ids: np.ndarray) -> np.ndarray:
        """Compact ids -> real ids (int32, same shape); ``UNK_ID`` has no real id and becomes -1."""
        compact_ids = np.asarray(compact_ids, dtype=np.int64)
        if compact_ids.size and (compact_ids.min() < 0 or compact_ids.max() >= self.size):
            raise ValueError(f"compact ids must lie in [0, {self.size}); got range "
                             f"[{compact_ids.min()}, {compact_ids.max()}]")
        return np.concatenate([[-1], self.real_ids])[compact_ids].astype(np.int32)

    def decode(self, compact_ids: Sequence[int], decode_real: Callable[[list[int]], str]) -> str:
        """Text of ``compact_ids`` via a real-id decoder (e.g. ``QwenTokenizer.decode``); ``<unk>`` is written as
        the literal text ``<unk>``."""
        real = self.to_real(np.asarray(compact_ids)).tolist()
        return "".join(UNK_TEXT * len(list(run)) if unknown else decode_real(list(run))
                       for unknown, run in itertools.groupby(real, key=lambda i: i < 0))

    def save(self, path: str | os.PathLike) -> None:
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w") as f:
            json.dump({"format": _FORMAT, "unk_id": UNK_ID, "real_ids": self.real_ids.tolist()}, f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CompactVocab:
        with open(path) as f:
            data = json.load(f)
        if data.get("format") != _FORMAT or data.get("unk_id") != UNK_ID:
            raise ValueError(f"{path} is not a compact vocabulary file of format {_FORMAT!r}; rebuild it by "
                             "training with data.compact_vocab=True")
        return cls(np.asarray(data["real_ids"], dtype=np.int64))
