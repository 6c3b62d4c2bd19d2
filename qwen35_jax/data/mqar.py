"""Multi-query associative recall (MQAR; Arora et al., "Zoology", 2023): synthetic rows probing in-context recall.

  bands = SymbolBands.last_ids(vocab_size, symbols=64, exclude=(eos_id,))
  rows = mqar_rows(256, seq_len=128, pairs=8, bands=bands, seed=[1, 2, 3])   # PackedRows, [256, 128] each

A row of length ``L`` with ``P`` key-value pairs is one token stream of ``L + 1`` tokens cut like a packed row
(``input_ids = stream[:-1]``, ``targets = stream[1:]``, one segment)::

  k1 v1 k2 v2 ... kP vP | q1 a1 q2 a2 ... qQ aQ [q]

The ``P`` keys of a row are distinct, each value is drawn uniformly (values may repeat). The ``Q = (L + 1 - 2P) // 2``
queries repeat the row's keys in random order, every block of ``P`` queries being a fresh permutation of all ``P``
keys (so each key is asked about equally often); ``a`` is the queried key's value. When ``L + 1 - 2P`` is odd the
stream ends with one more query whose answer falls outside the row. ``loss_mask`` is set exactly where the input is
a query and the target its answer, so a loss or an accuracy over the mask counts answers only.

Keys and values come from two disjoint bands of ``S`` ids each (``SymbolBands``). A model that has not recalled the
pair can at best guess uniformly among the ``S`` values: chance accuracy is ``1 / S``.

Everything is a pure function of ``seed`` (anything ``np.random.default_rng`` accepts): the same seed gives the same
arrays on every machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from qwen35_jax.data.packing import FIELDS, PackedRows

Seed = int | Sequence[int]
Batch = dict[str, np.ndarray]
# First words of the training and evaluation seeds: the two streams never share a draw.
TRAIN_STREAM = 0x4D514152
EVAL_STREAM = 0x4D514145


@dataclasses.dataclass(frozen=True, eq=False)
class SymbolBands:
    """The ``S`` key ids and the ``S`` value ids (disjoint, ascending) MQAR rows are written with."""

    keys: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        keys, values = np.asarray(self.keys, np.int32), np.asarray(self.values, np.int32)
        if keys.ndim != 1 or keys.shape != values.shape or keys.size < 1:
            raise ValueError(f"keys and values must be 1-D bands of one size >= 1; got shapes {keys.shape} and "
                             f"{values.shape}")
        if len(np.unique(np.concatenate([keys, values]))) != 2 * keys.size:
            raise ValueError("the key and value bands must be disjoint and hold no id twice")
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "values", values)

    @property
    def symbols(self) -> int:
        """``S``: the size of each band."""
        return int(self.keys.size)

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess among the values: ``1 / S``."""
        return 1.0 / self.symbols

    @classmethod
    def last_ids(cls, vocab_size: int, symbols: int, exclude: Iterable[int] = ()) -> SymbolBands:
        """The ``2 * symbols`` highest ids below ``vocab_size`` that are not in ``exclude`` (e.g. end-of-text, <unk>):
        the lower half are the keys, the upper half the values. In a compact vocabulary (ids ordered by real id) these
        are the tokens with the highest BPE ranks, the latest merges (mostly rare word pieces); in the full Qwen3.5
        vocabulary they are first the embedding padding ids, which no text uses."""
        if symbols < 1:
            raise ValueError(f"symbols={symbols} must be >= 1")
        excluded = {int(i) for i in exclude}
        usable = [i for i in range(vocab_size - 1, -1, -1) if i not in excluded][:2 * symbols]
        if len(usable) < 2 * symbols or 2 * symbols >= vocab_size:
            raise ValueError(f"MQAR needs 2 x symbols = {2 * symbols} ids (plus the excluded {sorted(excluded)}) in "
                             f"a vocabulary of {vocab_size}: lower data.mqar_symbols (e.g. to {vocab_size // 4}) or "
                             "use a larger vocabulary")
        band = np.asarray(usable[::-1], np.int32)
        return cls(keys=band[:symbols], values=band[symbols:])


def check_setting(seq_len: int, pairs: int, symbols: int, *, what: str = "MQAR") -> None:
    """Raise a ValueError unless a row of ``seq_len`` tokens with ``pairs`` pairs over ``symbols`` symbols is
    possible: ``1 <= pairs <= symbols`` (distinct keys) and ``2 * pairs + 2 <= seq_len`` (at least one query)."""
    if symbols < 1:
        raise ValueError(f"{what}: symbols={symbols} must be >= 1")
    if not 1 <= pairs <= symbols:
        raise ValueError(f"{what}: pairs={pairs} must be in [1, symbols={symbols}] (the keys of a row are distinct); "
                         "lower the pairs or raise the symbols")
    if 2 * pairs + 2 > seq_len:
        raise ValueError(f"{what}: length {seq_len} cannot hold {pairs} pairs and a query (needs 2 x pairs + 2 = "
                         f"{2 * pairs + 2} <= length); lower the pairs or lengthen the rows")


def num_queries(seq_len: int, pairs: int) -> int:
    """``Q``: the answers (masked-in targets) of a row."""
    return (seq_len + 1 - 2 * pairs) // 2


def answer_positions(seq_len: int, pairs: int) -> np.ndarray:
    """Input positions whose target is an answer (where ``loss_mask`` is set): ``2P, 2P + 2, ...``, ``Q`` of them."""
    return 2 * pairs + 2 * np.arange(num_queries(seq_len, pairs))


def _distinct(rng: np.random.Generator, rows: int, population: int, count: int) -> np.ndarray:
    """``[rows, count]``: per row ``count`` distinct draws from ``range(population)`` in random order."""
    return np.argsort(rng.random((rows, population)), axis=1)[:, :count]


def mqar_rows(num_rows: int, seq_len: int, pairs: int | Sequence[int], bands: SymbolBands, seed: Seed) -> PackedRows:
    """``num_rows`` MQAR rows of ``seq_len`` tokens (see the module docstring). ``pairs`` is one count or a sequence
    of counts, one drawn uniformly per row."""
    choices = np.atleast_1d(np.asarray(pairs, np.int64))
    if num_rows < 0 or choices.ndim != 1 or choices.size == 0:
        raise ValueError(f"num_rows={num_rows} must be >= 0 and pairs={pairs!r} one int or a non-empty sequence")
    for p in choices:
        check_setting(seq_len, int(p), bands.symbols)
    rng = np.random.default_rng(seed)
    per_row = choices[rng.integers(0, choices.size, num_rows)] if choices.size > 1 else np.full(num_rows, choices[0])
    stream = np.zeros((num_rows, seq_len + 1), np.int32)
    mask = np.zeros((num_rows, seq_len), bool)
    for p in np.unique(per_row):  # rows with the same number of pairs share one layout: vectorised per count
        rows = np.flatnonzero(per_row == p)
        p = int(p)
        keys = bands.keys[_distinct(rng, rows.size, bands.symbols, p)]  # [n, P]
        values = bands.values[rng.integers(0, bands.symbols, (rows.size, p))]
        asks = (seq_len + 2 - 2 * p) // 2  # queries begun in the stream (the last may lack its answer)
        blocks = -(-asks // p)
        asked = np.concatenate([_distinct(rng, rows.size, p, p) for _ in range(blocks)], axis=1)[:, :asks]
        body = np.empty((rows.size, 2 * p + 2 * asks), np.int32)
        body[:, 0:2 * p:2], body[:, 1:2 * p:2] = keys, values
        body[:, 2 * p::2] = np.take_along_axis(keys, asked, axis=1)
        body[:, 2 * p + 1::2] = np.take_along_axis(values, asked, axis=1)
        stream[rows] = body[:, :seq_len + 1]
        mask[np.ix_(rows, answer_positions(seq_len, p))] = True
    return PackedRows(input_ids=stream[:, :-1], targets=stream[:, 1:],
                      segment_ids=np.ones((num_rows, seq_len), np.int32), loss_mask=mask)


def parse_settings(spec: str) -> tuple[tuple[int, int], ...]:
    """``"64x4,128x8"`` -> ``((64, 4), (128, 8))``: (length, pairs) evaluation settings; ``""`` -> ``()``."""
    settings = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        length, _, pairs = item.partition("x")
        if not (length.isdigit() and pairs.isdigit()):
            raise ValueError(f"MQAR setting {item!r} is not <length>x<pairs>, e.g. '64x4,128x8'")
        settings.append((int(length), int(pairs)))
    if len(set(settings)) != len(settings):
        raise ValueError(f"MQAR settings {spec!r} list a setting twice")
    return tuple(settings)


def setting_name(seq_len: int, pairs: int) -> str:
    """``"<L>x<P>"``, the name of a setting in metrics (``mqar/<L>x<P>``)."""
    return f"{seq_len}x{pairs}"


class MqarMixer(Iterator[Batch]):
    """Training batches (this process's rows, from a resumable iterator) with a ``fraction`` of the global batch's
    rows replaced by MQAR rows; the text rows they replace are consumed and dropped, so the text stream is the same
    with or without the mix.

    Batch ``i`` (counted from the start of training) replaces ``floor(f·B)`` rows, plus one more with probability
    ``f·B - floor(f·B)`` (so ``f·B`` on average), at positions drawn over the global batch ``B`` (process ``p`` of
    ``n`` owns rows ``[p·B/n, (p+1)·B/n)``); its MQAR rows draw their pair count from ``pairs``. All of it comes from
    ``np.random.default_rng([TRAIN_STREAM, seed, i])``: the same on every process and after a resume, which
    restores the text iterator's state and ``i`` (``get_state`` / ``set_state``)."""

    def __init__(self, batches: Any, *, fraction: float, seq_len: int, pairs: Sequence[int], bands: SymbolBands,
                 seed: int, process_index: int = 0, process_count: int = 1) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be in [0, 1]")
        for p in pairs:
            check_setting(seq_len, int(p), bands.symbols, what="data.mqar_train_pairs")
        self._batches, self._fraction, self._seq_len = batches, float(fraction), seq_len
        self._pairs, self._bands, self._seed = tuple(int(p) for p in pairs), bands, int(seed)
        self._process, self._processes = process_index, process_count
        self._index = 0

    def __next__(self) -> Batch:
        batch = next(self._batches)
        local = batch["input_ids"].shape[0]
        if batch["input_ids"].shape[1] != self._seq_len:
            raise ValueError(f"batch rows have {batch['input_ids'].shape[1]} tokens, the MQAR rows {self._seq_len}")
        rng = np.random.default_rng([TRAIN_STREAM, self._seed, self._index])
        self._index += 1
        expected = self._fraction * local * self._processes
        count = int(expected) + int(rng.random() < expected - int(expected))
        where = rng.permutation(local * self._processes)[:count] - self._process * local
        rows = mqar_rows(count, self._seq_len, self._pairs, self._bands, seed=rng.integers(2**63))
        mine = (where >= 0) & (where < local)
        if not mine.any():
            return batch
        batch = {k: v.copy() for k, v in batch.items()}
        for name in FIELDS:
            batch[name][where[mine]] = getattr(rows, name)[mine]
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"text": self._batches.get_state(), "mqar_batches": self._index}

    def close(self) -> None:
        if hasattr(self._batches, "close"):
            self._batches.close()

    def check_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"text", "mqar_batches"}:
            raise ValueError("the checkpoint's data iterator state has no MQAR batch count: it was saved without "
                             "data.mqar_fraction; resume with the data settings the checkpoint was trained with")
        if hasattr(self._batches, "check_state"):
            self._batches.check_state(state["text"])

    def set_state(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self._batches.set_state(state["text"])
        self._index = int(state["mqar_batches"])
