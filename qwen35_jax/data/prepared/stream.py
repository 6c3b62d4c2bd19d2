"""The training input over prepared datasets: a grain pipeline whose batch ``k`` is a pure function of (datasets,
weights, seed, ``k``), read in pieces by every process.

  stream = TrainStream(sources, seq_len=4096, global_batch_size=256, seed=0, rows=slice(p * 32, (p + 1) * 32))
  iterator = stream.iterator(workers=2)      # this process's rows of global batch 0, 1, 2, ...
  batch = next(iterator)
  state = iterator.get_state()               # {"step": k, "datasets": {name: manifest fingerprint}}
  iterator.set_state(state)                  # continues with batch k; refuses other datasets

Global row ``r = k·B + i`` of batch ``k``: the mixture (``mixture.Mixture``) names its source and its index ``j`` among
that source's rows; ``j`` is split into an epoch and a position inside the epoch, and the position goes through
grain's ``index_shuffle`` (a keyed bijection of ``[0, windows)``, nothing materialised) seeded by (seed, source,
epoch) to a window of the source's training split (``dataset.TokenWindows``), which becomes a row
(``dataset.window_row``). A process reads only its rows ``rows`` of each global batch, so the concatenation over
processes is the global batch for any number of processes, and grain's ``mp_prefetch`` workers each build whole
batches in order, so the stream is the same for any number of workers. Resuming sets the step: no iterator
internals are saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from qwen35_jax.data.prepared.dataset import TokenWindows, window_row
from qwen35_jax.data.prepared.mixture import Mixture

Batch = dict[str, np.ndarray]
_ENDLESS = 2**62  # the stream's length for grain (batches are never exhausted)


@dataclasses.dataclass(frozen=True)
class StreamSource:
    """One dataset of a mixture: its training windows, weight and a name for metrics and state."""

    name: str
    windows: TokenWindows
    weight: float = 1.0

    @property
    def fingerprint(self) -> str:
        return self.windows.dataset.manifest.fingerprint


def _source_seed(seed: int, name: str, epoch: int) -> int:
    digest = hashlib.sha256(f"qwen35_jax.stream\0{seed}\0{name}\0{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _BatchSource:
    """grain random-access source: batch ``k`` (this process's rows) of the stream."""

    def __init__(self, sources: Sequence[StreamSource], seq_len: int, global_batch_size: int, seed: int,
                 rows: slice, to_model: np.ndarray | None) -> None:
        self.sources, self.seq_len, self.global_batch_size = tuple(sources), seq_len, global_batch_size
        self.seed, self.rows, self.to_model = seed, rows, to_model
        self.mixture = Mixture([s.weight for s in sources])

    def __len__(self) -> int:
        return _ENDLESS

    def window_of(self, row: int) -> tuple[int, int]:
        """(source, window) of global row ``row``."""
        source, index = self.mixture.assign(row)
        windows = self.sources[source].windows
        epoch, position = divmod(index, len(windows))
        shuffled = grain.experimental.index_shuffle(position, max_index=len(windows) - 1,
                                                    seed=_source_seed(self.seed, self.sources[source].name, epoch),
                                                    rounds=4)
        return source, int(shuffled)

    def __getitem__(self, step: int) -> Batch:
        rows = []
        for i in range(self.rows.start, self.rows.stop):
            source, window = self.window_of(step * self.global_batch_size + i)
            windows = self.sources[source].windows
            rows.append(window_row(windows.read(window), windows.eos_id, self.to_model))
        return {name: np.stack([r[name] for r in rows]) for name in rows[0]}


class TrainStream:
    """See the module docstring. ``to_model`` maps real token ids to model ids (a compact vocabulary), or None."""

    def __init__(self, sources: Sequence[StreamSource], *, seq_len: int, global_batch_size: int, seed: int,
                 rows: slice | None = None, to_model: np.ndarray | None = None) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data sources {names} repeat a name; name each once")
        for s in sources:
            if len(s.windows) < 1:
                raise ValueError(f"data source {s.name!r} has {s.windows.dataset.manifest.splits['train'].tokens} "
                                 f"training tokens, not one window of data.seq_len={seq_len} + 1; lower "
                                 "data.seq_len or add text")
        rows = rows or slice(0, global_batch_size)
        if not 0 <= rows.start < rows.stop <= global_batch_size:
            raise ValueError(f"rows {rows} are not inside the global batch of {global_batch_size}")
        self.source = _BatchSource(sources, seq_len, global_batch_size, seed, rows, to_model)

    @property
    def fingerprints(self) -> dict[str, str]:
        return {s.name: s.fingerprint for s in self.source.sources}

    def tokens_per_source(self, steps: int) -> dict[str, int]:
        """Training tokens each source contributed to the first ``steps`` global batches."""
        rows = self.source.mixture.rows_per_source(steps * self.source.global_batch_size)
        return {s.name: n * self.source.seq_len for s, n in zip(self.source.sources, rows, strict=True)}

    def dataset(self, start: int = 0) -> grain.MapDataset:
        return grain.MapDataset.source(self.source)[start:]

    def iterator(self, workers: int = 0, *, start: int = 0) -> StreamIterator:
        return StreamIterator(self, workers, start)


class StreamIterator:
    """Batches from ``start`` on, with ``workers`` grain worker processes (0: threads of this process)."""

    def __init__(self, stream: TrainStream, workers: int, start: int) -> None:
        if workers < 0:
            raise ValueError(f"data.workers={workers} must be >= 0")
        self.stream, self.workers, self.step = stream, workers, start
        self._iterator: Any = None

    def _open(self) -> Any:
        dataset = self.stream.dataset(self.step).to_iter_dataset(
            grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        if self.workers:
            if not flags.FLAGS.is_parsed():  # grain's worker options are absl flags; a notebook or test parsed none
                flags.FLAGS.mark_as_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                                       per_worker_buffer_size=2))
        return iter(dataset)

    def __iter__(self) -> StreamIterator:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "datasets": self.stream.fingerprints}

    def check_state(self, state: dict[str, Any]) -> None:
        """Refuse a saved position of another stream: other datasets (by manifest fingerprint) or names."""
        saved = state.get("datasets") if isinstance(state, dict) else None
        if saved is None:
            raise ValueError("the checkpoint's data position was saved by another input pipeline (not prepared "
                             "datasets, or with data.mqar_fraction); resume with the settings it was trained with "
                             "or start a new workdir")
        if saved != self.stream.fingerprints:
            raise ValueError(f"the checkpoint was trained on datasets {saved} (name: manifest fingerprint), this run "
                             f"reads {self.stream.fingerprints}; resume with the same data.corpora or start a new "
                             "workdir")

    def set_state(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.close()
        self.step = int(state["step"])

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None
