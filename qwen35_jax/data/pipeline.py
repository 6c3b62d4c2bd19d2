"""The grain training pipeline over packed rows: seeded shuffle, endless epochs, per-process shard, batches.

  rows = pack_documents(train_documents, seq_len, drop_remainder=True)
  dataset = train_dataset(rows, global_batch_size=8, seed=0)
  iterator = iter(dataset)                  # grain DatasetIterator
  batch = next(iterator)                    # {"input_ids": [8 / process_count, T], "segment_ids", ...}
  state = iterator.get_state()              # JSON-able; saved in every checkpoint
  iterator.set_state(state)                 # after a restart: continues with exactly the next batch

The packed rows are shuffled with ``seed`` and reshuffled every epoch (grain's ``shuffle`` before ``repeat``), then
process ``p`` of ``n`` takes rows ``p, p + n, ...`` and batches ``global_batch_size / n`` of them, so the processes
together consume ``global_batch_size`` distinct rows per step. The stream is a pure function of (rows, seed,
process_count): identical on CPU and on a pod.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from qwen35_jax.data.packing import PackedRows


def train_dataset(rows: PackedRows, *, global_batch_size: int, seed: int, process_index: int | None = None,
                  process_count: int | None = None) -> grain.MapDataset:
    """Endless batches of this process's share of ``global_batch_size`` shuffled rows (see the module docstring)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ValueError(f"data.batch_size={global_batch_size} is not divisible by the {count} processes; use a "
                         f"multiple of {count}")
    local = global_batch_size // count
    if len(rows) < global_batch_size:
        raise ValueError(f"the training data packs into {len(rows)} rows, fewer than one batch of "
                         f"data.batch_size={global_batch_size}; lower data.batch_size or data.seq_len, or add text")
    dataset = grain.MapDataset.source(rows).shuffle(seed=seed).repeat(None)
    return dataset[index::count].batch(local, drop_remainder=True, batch_fn=_stack)


def _stack(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.stack([e[name] for e in examples]) for name in examples[0]}
