"""MQAR rows (``qwen35_jax.data.mqar``): deterministic per seed, the documented layout, argument errors."""

import numpy as np
import pytest

from qwen35_jax.data.mqar import (
    SymbolBands,
    answer_positions,
    check_setting,
    mqar_rows,
    num_queries,
    parse_settings,
)
from qwen35_jax.data.packing import FIELDS

BANDS = SymbolBands.last_ids(100, 16, exclude=(99,))


def test_bands_are_the_highest_ids_left_after_the_excluded():
    assert BANDS.keys.tolist() == list(range(67, 83)) and BANDS.values.tolist() == list(range(83, 99))
    assert BANDS.symbols == 16 and BANDS.chance == 1 / 16
    bands = SymbolBands.last_ids(10, 2, exclude=(9, 7, 0))
    assert bands.keys.tolist() == [4, 5] and bands.values.tolist() == [6, 8]


def test_same_seed_same_rows_other_seed_other_rows():
    a, b = (mqar_rows(8, 40, (2, 4, 8), BANDS, seed=[3, 1]) for _ in range(2))
    c = mqar_rows(8, 40, (2, 4, 8), BANDS, seed=[3, 2])
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.input_ids, c.input_ids)


@pytest.mark.parametrize("seq_len,pairs", [(32, 4), (33, 4), (10, 4), (64, 16), (40, (2, 5, 8))])
def test_layout(seq_len, pairs):
    rows = mqar_rows(50, seq_len, pairs, BANDS, seed=7)
    assert all(getattr(rows, f).shape == (50, seq_len) for f in FIELDS)
    np.testing.assert_array_equal(rows.input_ids[:, 1:], rows.targets[:, :-1])  # one stream, cut like packing
    assert np.all(rows.segment_ids == 1)
    keys, values = set(BANDS.keys.tolist()), set(BANDS.values.tolist())
    for r in range(50):
        stream = np.concatenate([rows.input_ids[r], rows.targets[r, -1:]])
        p = int(np.flatnonzero(rows.loss_mask[r])[0]) // 2  # the first answer follows the p pairs
        # the pairs: keys at even, values at odd positions; a row's keys are distinct
        pair_keys, pair_values = stream[0:2 * p:2], stream[1:2 * p:2]
        assert len(set(pair_keys.tolist())) == p and set(pair_keys.tolist()) <= keys
        assert set(pair_values.tolist()) <= values
        assert p in np.atleast_1d(pairs)
        value_of = dict(zip(pair_keys.tolist(), pair_values.tolist(), strict=True))
        # the queries repeat the pairs' keys (after them); each answer is its key's value
        queries = stream[2 * p::2]
        assert set(queries.tolist()) <= set(pair_keys.tolist())
        mask = rows.loss_mask[r]
        assert np.flatnonzero(mask).tolist() == answer_positions(seq_len, p).tolist()
        assert mask.sum() == num_queries(seq_len, p) >= 1
        for i in np.flatnonzero(mask):
            assert rows.input_ids[r, i] in value_of and rows.targets[r, i] == value_of[rows.input_ids[r, i]]
        # every block of p queries asks every key once
        full = len(queries) // p * p
        for block in queries[:full].reshape(-1, p):
            assert sorted(block.tolist()) == sorted(pair_keys.tolist())
        assert not mask[:2 * p].any()


def test_pair_choices_are_all_used():
    rows = mqar_rows(60, 40, (2, 8), BANDS, seed=0)
    answers = rows.loss_mask.sum(axis=1)
    assert set(answers.tolist()) == {num_queries(40, 2), num_queries(40, 8)}


def test_argument_errors():
    with pytest.raises(ValueError, match="pairs=17 must be in \\[1, symbols=16\\]"):
        mqar_rows(2, 64, 17, BANDS, seed=0)
    with pytest.raises(ValueError, match="2 x pairs \\+ 2 = 18 <= length"):
        mqar_rows(2, 17, 8, BANDS, seed=0)
    check_setting(18, 8, 16)  # the shortest length that holds one query
    with pytest.raises(ValueError, match="pairs=0"):
        check_setting(32, 0, 16)
    with pytest.raises(ValueError, match="lower data.mqar_symbols"):
        SymbolBands.last_ids(32, 16)
    with pytest.raises(ValueError, match="lower data.mqar_symbols"):
        SymbolBands.last_ids(40, 16, exclude=range(30, 40))
    with pytest.raises(ValueError, match="disjoint"):
        SymbolBands(np.array([1, 2]), np.array([2, 3]))
    assert parse_settings("64x4, 128x8,") == ((64, 4), (128, 8)) and parse_settings("") == ()
    with pytest.raises(ValueError, match="<length>x<pairs>"):
        parse_settings("64by4")
    with pytest.raises(ValueError, match="twice"):
        parse_settings("64x4,64x4")
