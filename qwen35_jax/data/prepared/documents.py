"""One document's way into a prepared dataset, the same on every engine (Beam or in-process): split and shard by a
hash of its text, tokens with <|endoftext|>, and shards encoded in a fixed order.

Split rule (``SplitRule``): ``d = sha256("qwen35_jax.split" ‖ seed ‖ UTF-8 text)``; the document is held out when
the first 8 bytes of ``d`` (big-endian, as a fraction of 2^64) fall below ``validation_fraction``, and goes to shard
``int(d[8:16]) mod shards`` of its split. Inside a shard documents are ordered by ``d``. Nothing depends on the
file a document came from, its position there, or the worker that read it, so the output bytes depend only on the
set of documents and the options.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Iterable
from typing import Any

import numpy as np

from qwen35_jax.data.prepared.manifest import TOKEN_DTYPE, Shard

_SPLIT_SALT = b"qwen35_jax.split\0"


@dataclasses.dataclass(frozen=True)
class SplitRule:
    validation_fraction: float
    seed: int

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction} must be in (0, 1), e.g. 0.001")

    def digest(self, text: bytes) -> bytes:
        return hashlib.sha256(_SPLIT_SALT + self.seed.to_bytes(8, "little", signed=True) + text).digest()

    def split_of(self, digest: bytes) -> str:
        return "validation" if int.from_bytes(digest[:8], "big") < self.validation_fraction * 2.0**64 else "train"

    def describe(self) -> dict[str, Any]:
        return {"rule": "sha256('qwen35_jax.split\\0' + seed as int64 LE + UTF-8 text)[:8] / 2^64 < "
                        "validation_fraction -> validation; shard = int(digest[8:16]) mod shards; order by digest",
                "validation_fraction": self.validation_fraction, "seed": self.seed}


def shard_of(digest: bytes, count: int) -> int:
    return int.from_bytes(digest[8:16], "big") % count


@dataclasses.dataclass(frozen=True)
class TokenizedDocument:
    digest: bytes
    tokens: np.ndarray  # int32, ending with <|endoftext|>
    text_bytes: int


def tokenize_document(text: str, tokenizer: Any, rule: SplitRule) -> tuple[str, TokenizedDocument]:
    """(split, document) of one text; the text must be non-empty."""
    data = text.encode("utf-8", "surrogatepass")
    digest = rule.digest(data)
    tokens = np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=TOKEN_DTYPE)
    return rule.split_of(digest), TokenizedDocument(digest, tokens, len(data))


@dataclasses.dataclass(frozen=True)
class EncodedShard:
    data: bytes  # the .tokens file
    counts: np.ndarray  # int64 [vocab_size] token-id counts
    shard: Shard


def encode_shard(name: str, documents: Iterable[TokenizedDocument], vocab_size: int) -> EncodedShard:
    """The bytes and statistics of shard file ``name`` holding ``documents`` (in digest order)."""
    ordered = sorted(documents, key=lambda d: d.digest)
    tokens = np.concatenate([d.tokens for d in ordered]) if ordered else np.zeros(0, TOKEN_DTYPE)
    data = tokens.astype(TOKEN_DTYPE).tobytes()
    counts = np.bincount(tokens, minlength=vocab_size).astype(np.int64)
    shard = Shard(file=name, tokens=int(tokens.size), documents=len(ordered),
                  text_bytes=sum(d.text_bytes for d in ordered), sha256=hashlib.sha256(data).hexdigest())
    return EncodedShard(data, counts, shard)


def counts_bytes(counts: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(counts, np.int64), allow_pickle=False)
    return buffer.getvalue()


def counts_from_bytes(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)
