"""The grain training pipeline: deterministic by seed, resumable from its state, disjoint per-process shards."""

import numpy as np
import pytest

from qwen35_jax.data import pack_documents, train_dataset
from qwen35_jax.data.token_cache import read_token_records, write_token_records


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 100, size=int(n)).astype(np.int32) for n in rng.integers(5, 40, size=40)]
    return pack_documents(docs, 8, drop_remainder=True)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_deterministic_and_resumable(rows):
    a = take(iter(train_dataset(rows, global_batch_size=4, seed=1, process_index=0, process_count=1)), 30)
    it = iter(train_dataset(rows, global_batch_size=4, seed=1, process_index=0, process_count=1))
    b = take(it, 12)
    state = it.get_state()
    resumed = iter(train_dataset(rows, global_batch_size=4, seed=1, process_index=0, process_count=1))
    resumed.set_state(state)
    b += take(resumed, 18)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == {"input_ids", "targets", "segment_ids", "loss_mask"}
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert a[0]["input_ids"].shape == (4, 8)
    other = take(iter(train_dataset(rows, global_batch_size=4, seed=2, process_index=0, process_count=1)), 1)
    assert not np.array_equal(other[0]["input_ids"], a[0]["input_ids"])


def test_epochs_cover_every_row_and_reshuffle(rows):
    n = len(rows) // 4
    batches = take(iter(train_dataset(rows, global_batch_size=4, seed=0, process_index=0, process_count=1)), 2 * n)
    key = lambda b: [tuple(r) for r in b["input_ids"]]  # noqa: E731
    first = sum((key(b) for b in batches[:n]), [])
    second = sum((key(b) for b in batches[n:]), [])
    assert len(set(first)) == len(first)  # no row twice within an epoch
    assert first != second  # the next epoch is reshuffled


def test_processes_get_disjoint_rows(rows):
    per_process = [take(iter(train_dataset(rows, global_batch_size=4, seed=3, process_index=p, process_count=2)), 5)
                   for p in range(2)]
    seen = [{tuple(r) for b in batches for r in b["input_ids"]} for batches in per_process]
    assert per_process[0][0]["input_ids"].shape == (2, 8)
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="data.batch_size=3 is not divisible by the 2 processes"):
        train_dataset(rows, global_batch_size=3, seed=0, process_index=0, process_count=2)


def test_token_records_round_trip(tmp_path):
    docs = [np.arange(5, dtype=np.int32), np.array([248044], dtype=np.int32)]
    write_token_records(tmp_path / "x.array_record", docs)
    back = read_token_records(tmp_path / "x.array_record")
    assert [d.tolist() for d in back] == [d.tolist() for d in docs] and back[0].dtype == np.int32
