"""Pack tokenised documents into fixed-length rows ``[T]`` for causal-LM training (plain NumPy).

Documents are concatenated into one stream and cut into windows of ``T + 1`` tokens that overlap by one token, so
every next-token pair inside a document is trained on exactly once and no row is padded except the last.
Per row:

* ``input_ids``   window[:-1]
* ``targets``     window[1:]  (the next token)
* ``segment_ids`` 1..n numbering the documents (or document pieces) in the row; 0 on padding. The model resets its
  attention mask and GDN/conv state where the segment id changes.
* ``loss_mask``   True where input and target belong to the same document: False on padding and on the last token
  of a piece whose target is the first token of the next document.

Padding positions hold token id 0 (a valid id in any vocabulary; they are masked out of the loss).
``PackedRows`` is a random-access source (``len`` / ``[i]``), so grain's ``MapDataset.source`` can wrap it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

Batch = dict[str, np.ndarray]
FIELDS = ("input_ids", "targets", "segment_ids", "loss_mask")


@dataclasses.dataclass(frozen=True)
class PackedRows:
    """``[N, T]`` arrays, one field per name in ``FIELDS``."""

    input_ids: np.ndarray
    targets: np.ndarray
    segment_ids: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> Batch:
        return {name: getattr(self, name)[index] for name in FIELDS}

    def take(self, indices: np.ndarray) -> Batch:
        """Rows ``indices`` stacked into a ``[len(indices), T]`` batch."""
        return {name: getattr(self, name)[indices] for name in FIELDS}


def pack_documents(documents: Sequence[np.ndarray], seq_len: int, *, drop_remainder: bool) -> PackedRows:
    """Pack ``documents`` (1-D int arrays, in the given order) into rows of ``seq_len`` tokens.

    With ``drop_remainder=False`` the tokens after the last full row form one more, padded row.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    documents = [np.asarray(d, dtype=np.int32) for d in documents if len(d)]
    if not documents:
        raise ValueError("documents is empty (or all documents have no tokens); nothing to pack")
    stream = np.concatenate(documents)
    doc_index = np.repeat(np.arange(len(documents), dtype=np.int32), [len(d) for d in documents])
    num_pairs = len(stream) - 1  # next-token pairs in the stream
    num_rows = num_pairs // seq_len if drop_remainder else -(-num_pairs // seq_len)
    # Pad the stream so every window of seq_len + 1 tokens is in range; doc index -1 marks padding.
    stream = np.concatenate([stream, np.zeros(seq_len + 1, np.int32)])
    doc_index = np.concatenate([doc_index, np.full(seq_len + 1, -1, np.int32)])
    window = np.arange(num_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    tokens, docs = stream[window], doc_index[window]
    # Documents are consecutive along the stream, so subtracting the row's first index numbers them 1..n.
    segments = np.where(docs >= 0, docs - docs[:, :1] + 1, 0).astype(np.int32)
    return PackedRows(
        input_ids=tokens[:, :-1],
        targets=tokens[:, 1:],
        segment_ids=segments[:, :-1],
        loss_mask=(segments[:, :-1] > 0) & (segments[:, :-1] == segments[:, 1:]),
    )


def fixed_batches(rows: PackedRows, batch_size: int, max_batches: int) -> list[Batch]:
    """The first ``max_batches`` batches of ``rows`` in order (for evaluation), the last one filled up with
    all-padding rows (zeros, ``loss_mask`` False) so every batch has the same shape."""
    if batch_size < 1 or max_batches < 1:
        raise ValueError(f"batch_size={batch_size} and max_batches={max_batches} must both be >= 1")
    batches = []
    for start in range(0, min(len(rows), batch_size * max_batches), batch_size):
        batch = rows.take(np.arange(start, min(start + batch_size, len(rows))))
        missing = batch_size - batch["input_ids"].shape[0]
        batches.append({k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()})
    return batches
