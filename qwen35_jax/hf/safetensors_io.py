"""Minimal safetensors reader: header parsing and one-tensor-at-a-time loading.

Reading a tensor reads only its byte range, so host memory stays bounded by the largest tensor; bf16 is
supported through ``ml_dtypes``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import ml_dtypes
import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


def read_header(path: str) -> tuple[dict, int]:
    """(tensor entries by name, byte offset where the data section starts)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header length)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: corrupt safetensors header length {header_len} for a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} extends past the end of the file (truncated download?)")
        if entry["dtype"] not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
    return header, data_start


def load_tensor(path: str, entry: dict, data_start: int) -> np.ndarray:
    begin, end = entry["data_offsets"]
    dtype = np.dtype(DTYPES[entry["dtype"]])
    shape = tuple(entry["shape"])
    if end - begin != dtype.itemsize * int(np.prod(shape)):
        raise CheckpointError(f"{path}: byte size of a {entry['dtype']}{list(shape)} tensor is {end - begin}")
    # Read straight into the result (no memory map kept resident next to a copy): one tensor's bytes in memory.
    out = np.empty(shape, dtype)
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) != end - begin:
            raise CheckpointError(f"{path}: could not read the {end - begin} bytes of a tensor (truncated file?)")
    return out


def checkpoint_files(directory: str) -> list[str]:
    """The safetensors files of a transformers checkpoint directory (single file or sharded with an index)."""
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(directory, n) for n in names]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise CheckpointError(f"{directory}: shards listed in the index are missing: {missing}")
        return files
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        return [single]
    found = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not found:
        raise CheckpointError(f"{directory}: no *.safetensors files (expected model.safetensors or an index)")
    return [os.path.join(directory, f) for f in found]


def iter_tensors(directory: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for every tensor of the checkpoint, one at a time."""
    for path in checkpoint_files(directory):
        header, data_start = read_header(path)
        for name, entry in header.items():
            yield name, load_tensor(path, entry, data_start)


def tensor_names(directory: str) -> list[str]:
    return [name for path in checkpoint_files(directory) for name in read_header(path)[0]]
