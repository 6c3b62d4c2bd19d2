"""Reading documents out of input files: JSON lines (plain, ``.gz``, ``.zst``), Parquet and plain text.

The format follows the file name: ``*.jsonl`` / ``*.json`` (one JSON object per line, the document in its
``text_field``), ``*.parquet`` (a string column named ``text_field``), ``*.txt`` (the whole file is one document), each
optionally compressed (``.gz``, ``.zst``; Parquet compresses inside). ``read_documents`` yields the text of every
record, or a ``Skipped`` reason:

* skipped and counted (recorded in the manifest under ``skipped``): a line that is not valid UTF-8, a line that is
  not a JSON object, an empty or whitespace-only document, a text file that is not UTF-8;
* refused (ValueError naming the file, the line and the fix): a record without ``text_field``, or whose field is
  not a string — that is a wrong ``--text_field``, not a bad record.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
from collections.abc import Iterator
from typing import IO

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
SKIP_REASONS = ("invalid_utf8", "invalid_json", "empty")


@dataclasses.dataclass(frozen=True)
class Skipped:
    reason: str  # one of SKIP_REASONS


def input_format(path: str) -> tuple[str, str | None]:
    """(format, compression) of an input file from its name; ValueError for an unknown one."""
    name = path.rsplit("/", 1)[-1].lower()
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            name, compression = name[: -len(suffix)], kind
            break
    for suffix, kind in FORMATS.items():
        if name.endswith(suffix) and not (kind == "parquet" and compression):
            return kind, compression
    raise ValueError(f"input file {path} has an unknown format; name it *.jsonl / *.json (JSON lines), *.parquet or "
                     f"*.txt, optionally ending in .gz or .zst")


def open_local(path: str) -> IO[bytes]:
    """A local input file as a decompressed binary stream."""
    _, compression = input_format(path)
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        import zstandard

        # zstandard's reader cannot iterate lines (io.UnsupportedOperation): buffer it; read every frame of the file
        decompressor = zstandard.ZstdDecompressor()
        return io.BufferedReader(decompressor.stream_reader(open(path, "rb"), closefd=True, read_across_frames=True))
    return open(path, "rb")


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise TypeError
    if field not in record:
        keys = sorted(record)[:10]
        raise ValueError(f"{where} has no field {field!r} (its fields: {keys}); pass --text_field with the name of "
                         "the field that holds the document text")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} is a {type(value).__name__}, not a string; pass --text_field "
                         "with the name of the field that holds the document text")
    return value


def _jsonl(stream: IO[bytes], path: str, field: str) -> Iterator[str | Skipped]:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield Skipped("invalid_utf8")
            continue
        try:
            record = json.loads(text)
            value = _field(record, field, f"{path} line {number}")
        except (json.JSONDecodeError, TypeError):
            yield Skipped("invalid_json")
            continue
        yield value if value.strip() else Skipped("empty")


def _parquet(stream: IO[bytes], path: str, field: str) -> Iterator[str | Skipped]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(stream)
    if field not in parquet.schema_arrow.names:
        raise ValueError(f"{path} has no column {field!r} (its columns: {parquet.schema_arrow.names[:10]}); pass "
                         "--text_field with the name of the column that holds the document text")
    for group in range(parquet.num_row_groups):
        column = parquet.read_row_group(group, columns=[field]).column(0)
        for value in column.to_pylist():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{path}: column {field!r} holds {type(value).__name__} values, not strings; pass "
                                 "--text_field with the name of the column that holds the document text")
            yield value if value and value.strip() else Skipped("empty")


def _text(stream: IO[bytes]) -> Iterator[str | Skipped]:
    try:
        text = stream.read().decode("utf-8")
    except UnicodeDecodeError:
        yield Skipped("invalid_utf8")
        return
    yield text if text.strip() else Skipped("empty")


def read_documents(stream: IO[bytes], path: str, field: str, kind: str | None = None) -> Iterator[str | Skipped]:
    """Every record of the input file ``path`` (already opened and decompressed as ``stream``), in file order;
    ``kind`` overrides the format the file name implies."""
    kind = kind or input_format(path)[0]
    if kind == "jsonl":
        yield from _jsonl(stream, path, field)
    elif kind == "parquet":
        yield from _parquet(stream, path, field)
    else:
        yield from _text(stream)


def first_record(path: str, field: str) -> None:
    """Read records of a local input file until the first document, so a wrong ``field`` (or a file of another
    format) fails before a pipeline starts; a file of only skipped records is left to the pipeline's counts."""
    with open_local(path) as stream:
        for record in read_documents(stream, path, field):
            if isinstance(record, str):
                return


def local_size(path: str) -> int:
    return os.path.getsize(path)
