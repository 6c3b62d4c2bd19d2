"""Packing: every in-document next-token pair is trained exactly once, segments and masks mark boundaries."""

import collections

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qwen35_jax.data.packing import fixed_batches, pack_documents

documents_strategy = st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=30), min_size=1, max_size=8).filter(
    lambda docs: sum(len(d) for d in docs) >= 2)


def _pairs_in_documents(docs):
    """(token, next token) counts over every next-token pair inside a document."""
    return collections.Counter((tuple(d[i:i + 2])) for d in docs for i in range(len(d) - 1))


def _pairs_in_rows(rows):
    pairs = collections.Counter()
    for r in range(len(rows)):
        row = rows[r]
        for t in np.flatnonzero(row["loss_mask"]):
            pairs[(int(row["input_ids"][t]), int(row["targets"][t]))] += 1
    return pairs


@settings(max_examples=200, deadline=None)
@given(docs=documents_strategy, seq_len=st.integers(1, 12))
def test_every_pair_exactly_once(docs, seq_len):
    rows = pack_documents([np.array(d) for d in docs], seq_len, drop_remainder=False)
    assert rows.input_ids.shape == rows.targets.shape == rows.segment_ids.shape == rows.loss_mask.shape
    assert rows.input_ids.shape[1] == seq_len
    assert _pairs_in_rows(rows) == _pairs_in_documents(docs)


@settings(max_examples=200, deadline=None)
@given(docs=documents_strategy, seq_len=st.integers(1, 12))
def test_segments_and_padding(docs, seq_len):
    rows = pack_documents([np.array(d) for d in docs], seq_len, drop_remainder=False)
    real = [np.array(d) for d in docs if d]
    stream = np.concatenate(real)
    for r in range(len(rows)):
        seg, mask, ids = rows.segment_ids[r], rows.loss_mask[r], rows.input_ids[r]
        valid = seg > 0
        # Padding only at the end of the last row, with id 0 and no loss.
        assert np.all(valid[:valid.sum()]) and (r == len(rows) - 1 or valid.all())
        assert np.all(ids[~valid] == 0) and not mask[~valid].any()
        # Segments count 1..n without gaps.
        assert seg[0] == 1 and set(np.diff(seg[valid])) <= {0, 1}
        # Row r starts at stream position r * seq_len (windows overlap by one token).
        np.testing.assert_array_equal(ids[valid], stream[r * seq_len:r * seq_len + valid.sum()])
    # On real inputs, the loss mask is off exactly at each document's last token (its target is the next
    # document's first token, or padding), wherever that token is an input.
    last_tokens = np.cumsum([len(d) for d in real]) - 1  # stream positions
    off = {(int(p) // seq_len, int(p) % seq_len) for p in last_tokens if p < len(rows) * seq_len}
    masked = {(int(r), int(t)) for r, t in zip(*np.nonzero(~rows.loss_mask & (rows.segment_ids > 0)), strict=True)}
    assert masked == off


def test_drop_remainder_and_example_row():
    docs = [np.array([1, 2, 3, 4]), np.array([5, 6, 7])]
    rows = pack_documents(docs, 3, drop_remainder=True)
    assert len(rows) == 2
    np.testing.assert_array_equal(rows.input_ids, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(rows.targets, [[2, 3, 4], [5, 6, 7]])
    np.testing.assert_array_equal(rows.segment_ids, [[1, 1, 1], [1, 2, 2]])
    np.testing.assert_array_equal(rows.loss_mask, [[True, True, True], [False, True, True]])
    assert len(pack_documents(docs, 4, drop_remainder=True)) == 1
    assert len(pack_documents(docs, 4, drop_remainder=False)) == 2


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_fixed_batches_pad_last_batch():
    rows = pack_documents([np.arange(1, 30)], 4, drop_remainder=False)  # 28 pairs -> 7 rows
    batches = fixed_batches(rows, 3, 10)
    assert [b["input_ids"].shape for b in batches] == [(3, 4)] * 3
    assert batches[-1]["loss_mask"][1:].sum() == 0 and batches[-1]["segment_ids"][1:].sum() == 0
    assert len(fixed_batches(rows, 3, 2)) == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="seq_len=0"):
        pack_documents([np.array([1, 2])], 0, drop_remainder=True)
    with pytest.raises(ValueError, match="nothing to pack"):
        pack_documents([np.array([], dtype=np.int32)], 4, drop_remainder=True)
