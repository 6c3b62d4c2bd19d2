"""Tokenise documents once and cache the ids on disk, so later runs in the same workdir skip tokenisation.

The cache file name is a hash of the tokenizer version and the exact document texts, so a changed corpus, split or
tokenizer never reads stale ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from qwen35_jax.data.tokenizer import QwenTokenizer


def _cache_key(texts: Sequence[str], tokenizer: QwenTokenizer) -> str:
    h = hashlib.sha256(f"{tokenizer.fingerprint}\0eos={tokenizer.eos_id}\0{len(texts)}".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def tokenize_documents(texts: Sequence[str], tokenizer: QwenTokenizer, *,
                       cache_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Each text as int32 token ids followed by ``<|endoftext|>`` (the document separator)."""
    if not texts:
        return []
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"tokens-{_cache_key(texts, tokenizer)}.npz")
        if os.path.exists(path):
            with np.load(path) as cached:
                return np.split(cached["tokens"], np.cumsum(cached["lengths"])[:-1])
    documents = [np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=np.int32) for text in texts]
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp.npz"  # np.savez appends .npz to names without it
        np.savez(tmp, tokens=np.concatenate(documents),
                 lengths=np.asarray([len(d) for d in documents], dtype=np.int64))
        os.replace(tmp, path)
    return documents
