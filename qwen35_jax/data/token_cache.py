"""Tokenise documents once and cache the ids on disk as ArrayRecord files, so later runs in the same workdir skip
tokenisation.

One record per document: its int32 token ids (little-endian bytes, ending with ``<|endoftext|>``). The file name is
a hash of the tokenizer version and the exact document texts, so a changed corpus, split or tokenizer never reads
stale ids. ``read_token_records`` also reads user-supplied ArrayRecord files in the same format
(``data.corpora=arrayrecord:<glob>``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from qwen35_jax.data.tokenizer import QwenTokenizer

_TOKEN_DTYPE = np.dtype("<i4")


def _cache_key(texts: Sequence[str], tokenizer: QwenTokenizer) -> str:
    h = hashlib.sha256(f"{tokenizer.fingerprint}\0eos={tokenizer.eos_id}\0{len(texts)}".encode())
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def write_token_records(path: str | os.PathLike, documents: Sequence[np.ndarray]) -> None:
    """Write ``documents`` (1-D int arrays) as one ArrayRecord file, atomically (temp file + rename)."""
    tmp = f"{path}.tmp"
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    for doc in documents:
        writer.write(np.asarray(doc, dtype=_TOKEN_DTYPE).tobytes())
    writer.close()
    os.replace(tmp, path)


def read_token_records(path: str | os.PathLike) -> list[np.ndarray]:
    """Every record of an ArrayRecord file as an int32 array (one document each)."""
    reader = ArrayRecordReader(str(path))
    try:
        records = reader.read_all()
    finally:
        reader.close()
    docs = []
    for i, record in enumerate(records):
        if len(record) % _TOKEN_DTYPE.itemsize:
            raise ValueError(f"{path}: record {i} has {len(record)} bytes, not a whole number of int32 token ids; "
                             "each record must be a document's token ids as little-endian int32")
        docs.append(np.frombuffer(record, dtype=_TOKEN_DTYPE).astype(np.int32))
    return docs


def tokenize_documents(texts: Sequence[str], tokenizer: QwenTokenizer, *,
                       cache_dir: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Each text as int32 token ids followed by ``<|endoftext|>`` (the document separator)."""
    if not texts:
        return []
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, f"tokens-{_cache_key(texts, tokenizer)}.array_record")
        if os.path.exists(path):
            return read_token_records(path)
    documents = [np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=np.int32) for text in texts]
    if path is not None:
        os.makedirs(cache_dir, exist_ok=True)
        write_token_records(path, documents)
    return documents
