"""Compact vocabulary: remapping, <unk>, frequency cap, persistence, decoding back to text."""

import numpy as np
import pytest

from qwen35_jax.data.tokenizer import get_tokenizer
from qwen35_jax.data.vocab import UNK_ID, UNK_TEXT, CompactVocab


def test_maps_used_ids_to_dense_range_and_back():
    docs = [np.array([500, 7, 7, 248044]), np.array([90000, 7])]
    vocab = CompactVocab.build(docs)
    assert vocab.size == 5  # <unk> + {7, 500, 90000, 248044}
    for doc in docs:
        compact = vocab.to_compact(doc)
        assert compact.dtype == np.int32 and compact.min() >= 1 and compact.max() < vocab.size
        np.testing.assert_array_equal(vocab.to_real(compact), doc)
    assert sorted(vocab.to_compact(np.array([7, 500, 90000, 248044])).tolist()) == [1, 2, 3, 4]


def test_unknown_ids_map_to_unk():
    vocab = CompactVocab.build([np.array([3, 5])])
    compact = vocab.to_compact(np.array([[3, 4], [5, 10**6]]))
    assert compact.shape == (2, 2)
    assert compact[0, 1] == compact[1, 1] == UNK_ID
    assert vocab.to_real(compact)[0, 1] == -1


def test_always_include_and_max_size():
    docs = [np.array([1] * 5 + [2] * 4 + [3] * 3 + [4] * 3 + [9])]
    vocab = CompactVocab.build(docs, always_include=[100], max_size=5)
    # <unk> + forced 100 + the three most frequent (ties 3 vs 4 broken by the smaller id).
    assert vocab.real_ids.tolist() == [1, 2, 3, 100]
    assert vocab.to_compact(np.array([4, 9])).tolist() == [UNK_ID, UNK_ID]
    with pytest.raises(ValueError, match="max_size=2 is too small"):
        CompactVocab.build(docs, always_include=[100], max_size=2)


def test_save_load_round_trip(tmp_path):
    vocab = CompactVocab.build([np.array([10, 20, 30])], always_include=[248044])
    vocab.save(tmp_path / "v.json")
    loaded = CompactVocab.load(tmp_path / "v.json")
    np.testing.assert_array_equal(loaded.real_ids, vocab.real_ids)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a compact vocabulary file"):
        CompactVocab.load(tmp_path / "bad.json")


def test_decode_to_real_text():
    tok = get_tokenizer()
    text = "Now is the winter of our discontent"
    vocab = CompactVocab.build([np.array(tok.encode(text))])
    compact = vocab.to_compact(np.array(tok.encode(text + " Made glorious summer")))
    decoded = vocab.decode(compact, tok.decode)
    assert decoded.startswith(text) and UNK_TEXT in decoded


def test_bad_inputs():
    vocab = CompactVocab.build([np.array([1, 2])])
    with pytest.raises(ValueError, match=r"compact ids must lie in \[0, 3\)"):
        vocab.to_real(np.array([3]))
    with pytest.raises(ValueError, match="negative token id"):
        CompactVocab.build([np.array([-1, 2])])
    with pytest.raises(ValueError, match="nothing to build from"):
        CompactVocab.build([np.array([], dtype=np.int32)])
