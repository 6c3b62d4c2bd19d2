"""The Apache Beam engine of a prepared dataset (``tools.prepare_data``): the same per-document and per-shard
functions as ``writer.prepare_documents``, on any Beam runner (DirectRunner, Dataflow, Flink, Spark).

Pipeline: input files -> records (``inputs.read_documents``) -> tokens, split and shard (``tokenize_document``) ->
GroupByKey (split, shard) -> one shard file each (``write_staged_shard``) into ``<output>.partial/<run id>``;
skipped records are counted per reason (``write_staged_skipped``). The launching process validates everything it
can before the pipeline starts and calls ``writer.finalize`` after it ends, so the output bytes equal the in-process
engine's for any runner and number of workers.

Apache Beam is an optional dependency (``pip install -e ".[data]"``), imported only here.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import re
from collections.abc import Iterator, Sequence
from typing import IO, Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from qwen35_jax.data import tokenizer as tokenizer_lib
from qwen35_jax.data.prepared import inputs as inputs_lib
from qwen35_jax.data.prepared import storage, writer
from qwen35_jax.data.prepared.documents import SplitRule, TokenizedDocument, shard_of, tokenize_document
from qwen35_jax.data.prepared.manifest import TOKEN_DTYPE, Manifest

DEFAULT_SHARD_BYTES = 256 << 20  # input bytes per training shard when num_shards=0
# Fewer input files than this: documents are redistributed across workers before tokenising (else a single large
# file would be tokenised by one worker); with more, each file's documents stay on the worker that read it.
_RESHUFFLE_BELOW_FILES = 64


class BeamFileOps:
    """``writer.FileOps`` on Beam's FileSystems (``gs://``, ``s3://``, ``hdfs://``, local), for remote outputs."""

    def write(self, path: str, data: bytes) -> None:
        with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(data)

    def read(self, path: str) -> bytes:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)

    def listdir(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        try:
            matched = FileSystems.match([prefix + "*"])[0].metadata_list
        except Exception:  # a missing directory: some file systems raise, others match nothing
            return []
        names = (m.path[len(prefix):] for m in matched if m.path.startswith(prefix))
        return sorted(name for name in names if name and "/" not in name)

    def rename(self, source: str, destination: str) -> None:
        parent = destination.rstrip("/").rsplit("/", 1)[0]
        if not FileSystems.exists(parent):  # a local directory (object stores have none: a no-op)
            FileSystems.mkdirs(parent)
        FileSystems.rename([source], [destination])

    def remove_tree(self, directory: str) -> None:
        path = directory.rstrip("/")
        if FileSystems.exists(path) or self.listdir(path):  # a local directory, or objects under the prefix
            FileSystems.delete([path + "/" if storage.is_remote(path) else path])  # object stores: the whole prefix

    def remove(self, path: str) -> None:
        FileSystems.delete([path])


def file_ops(output: str) -> writer.FileOps:
    return BeamFileOps() if storage.is_remote(output) else writer.LocalFileOps()


@contextlib.contextmanager
def open_input(path: str) -> Iterator[IO[bytes]]:
    """An input file (any Beam file system) as a decompressed binary stream that reads by lines. Parquet needs a
    seekable file: a stream that cannot seek is read into memory."""
    kind, compression = inputs_lib.input_format(path)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
        if compression == "gzip":
            yield stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
        elif compression == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=False, read_across_frames=True)
            yield stack.enter_context(io.BufferedReader(reader))  # zstandard's reader does not iterate lines
        elif kind == "parquet" and not (hasattr(raw, "seekable") and raw.seekable()):
            yield io.BytesIO(raw.read())
        else:
            yield raw


def check_text_field(path: str, field: str) -> None:
    """``inputs.first_record`` for a file on any Beam file system: a wrong field fails here, before the pipeline."""
    if not storage.is_remote(path):
        inputs_lib.first_record(path, field)
        return
    with open_input(path) as stream:
        for record in inputs_lib.read_documents(stream, path, field):
            if isinstance(record, str):
                return


def match_inputs(input_globs: Sequence[str]) -> list[dict[str, Any]]:
    """``{"path", "bytes"}`` of every file the globs match, sorted by path; ValueError for a glob that matches
    nothing or a file of unknown format."""
    if not input_globs:
        raise ValueError("no --input given; pass --input GLOB (e.g. --input 'data/*.jsonl.gz')")
    found: dict[str, int] = {}
    for pattern in input_globs:
        pattern = storage.normalize(pattern)
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # Beam raises for a non-glob path that does not exist
            matched = []
        files = [m for m in matched if not m.path.endswith("/")]
        if not files:
            raise ValueError(f"input {pattern} matches no file; check the path or glob (quote it so the shell does "
                             "not expand it)")
        for m in files:
            inputs_lib.input_format(m.path)
            found[m.path] = int(m.size_in_bytes)
    return [{"path": path, "bytes": size} for path, size in sorted(found.items())]


class _TokenizeFile(beam.DoFn):
    """An input file -> ((split, shard), (digest, tokens, text bytes)) per document, and skip reasons (tagged)."""

    SKIPPED = "skipped"

    def __init__(self, text_field: str, rule: SplitRule, shards: dict[str, int], tokenize: bool) -> None:
        self._field, self._rule, self._shards, self._tokenize = text_field, rule, shards, tokenize
        self._tokenizer = None

    def setup(self) -> None:
        if self._tokenize:
            self._tokenizer = tokenizer_lib.get_tokenizer()

    def process(self, path: str) -> Iterator[Any]:
        with open_input(path) as stream:
            for record in inputs_lib.read_documents(stream, path, self._field):
                if isinstance(record, inputs_lib.Skipped):
                    yield beam.pvalue.TaggedOutput(self.SKIPPED, record.reason)
                elif self._tokenize:
                    yield tokenize_text(record, self._tokenizer, self._rule, self._shards)
                else:
                    yield record


def tokenize_text(text: str, tokenizer: Any, rule: SplitRule, shards: dict[str, int]) -> tuple[Any, Any]:
    split, document = tokenize_document(text, tokenizer, rule)
    key = (split, shard_of(document.digest, shards[split]))
    return key, (document.digest, document.tokens.tobytes(), document.text_bytes)


class _WriteShard(beam.DoFn):
    def __init__(self, staging: str, shards: dict[str, int], vocab_size: int, ops: writer.FileOps) -> None:
        self._staging, self._shards, self._vocab_size, self._ops = staging, shards, vocab_size, ops

    def process(self, element: tuple[tuple[str, int], Any]) -> Iterator[str]:
        (split, index), documents = element
        documents = [TokenizedDocument(digest, np.frombuffer(tokens, TOKEN_DTYPE), text_bytes)
                     for digest, tokens, text_bytes in documents]
        shard = writer.write_staged_shard(self._staging, split, index, self._shards[split], documents,
                                          self._vocab_size, self._ops)
        yield shard.file


def build_pipeline(pipeline: beam.Pipeline, files: Sequence[str], *, staging: str, text_field: str,
                   rule: SplitRule, shards: dict[str, int], vocab_size: int, ops: writer.FileOps) -> None:
    """Add the preparation's transforms to ``pipeline`` (see the module docstring)."""
    reshuffle = len(files) < _RESHUFFLE_BELOW_FILES
    records = (pipeline
               | "Files" >> beam.Create(sorted(files))
               | "Read" >> beam.ParDo(_TokenizeFile(text_field, rule, shards, tokenize=not reshuffle)).with_outputs(
                   _TokenizeFile.SKIPPED, main="documents"))
    documents = records.documents
    if reshuffle:
        tokenizer = _LazyTokenizer()
        documents = (documents
                     | "Spread" >> beam.Reshuffle()
                     | "Tokenize" >> beam.Map(lambda text: tokenize_text(text, tokenizer.get(), rule, shards)))
    _ = (documents
         | "GroupByShard" >> beam.GroupByKey()
         | "WriteShards" >> beam.ParDo(_WriteShard(staging, shards, vocab_size, ops)))
    _ = (records[_TokenizeFile.SKIPPED]
         | "CountSkipped" >> beam.combiners.Count.PerElement()
         | "SkippedDict" >> beam.combiners.ToDict()
         | "WriteSkipped" >> beam.Map(lambda skipped: writer.write_staged_skipped(staging, skipped, ops)))


class _LazyTokenizer:
    """The worker's tokenizer, loaded on first use (pickles without it)."""

    def get(self) -> Any:
        return tokenizer_lib.get_tokenizer()


_WORKER_ERROR = re.compile(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+?)(?: \[while running '[^']*'\])*\s*$",
                           re.MULTILINE)


def original_error(error: Exception) -> Exception | None:
    """The user error (ValueError, OSError) a Beam worker raised, rebuilt from the long message Beam wraps it in
    (the innermost one in the text); None when there is none."""
    text = f"{type(error).__name__}: {error}"  # in-process runners re-raise the original type
    found = _WORKER_ERROR.findall(text)
    if not found:
        return None
    name, message = found[-1]
    if name == "ValueError":
        return ValueError(message)
    if name in ("OSError", "IOError", "FileNotFoundError", "PermissionError", "FileExistsError"):
        return OSError(message)
    return None


def prepare_with_beam(input_globs: Sequence[str], output: str, *, text_field: str = "text",
                      validation_fraction: float = 0.001, split_seed: int = 0, num_shards: int = 0,
                      shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False,
                      pipeline_args: Sequence[str] = ()) -> Manifest:
    """Prepare the dataset of the files ``input_globs`` match at ``output`` with a Beam pipeline (options
    ``pipeline_args``, e.g. ``["--runner=DataflowRunner", ...]``). ``num_shards``: training shards (0: one per
    ``shard_bytes`` of input). Everything checkable (globs, formats, the text field, the output) fails before the
    pipeline starts; a user error inside a worker is re-raised here with its own one-line message."""
    rule = SplitRule(validation_fraction, split_seed)
    if num_shards < 0 or shard_bytes <= 0:
        raise ValueError(f"num_shards={num_shards} must be >= 0 (0: automatic) and shard_bytes={shard_bytes} > 0")
    output = storage.normalize(output)
    inputs = match_inputs(input_globs)
    ops = file_ops(output)
    writer.check_output(output, overwrite, ops)
    check_text_field(inputs[0]["path"], text_field)
    if num_shards:
        shards = writer.shard_counts(num_shards, validation_fraction, 1)
    else:
        shards = writer.shard_counts(sum(i["bytes"] for i in inputs), validation_fraction, shard_bytes)
    tokenizer = tokenizer_lib.get_tokenizer()
    staging = writer.staging_dir(output)
    try:
        try:
            with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
                build_pipeline(pipeline, [i["path"] for i in inputs], staging=staging, text_field=text_field,
                               rule=rule, shards=shards, vocab_size=tokenizer.vocab_size, ops=ops)
        except Exception as error:
            original = original_error(error)
            if original is None:
                raise
            raise original from None
        return writer.finalize(output, staging, shards=shards, vocab_size=tokenizer.vocab_size,
                               tokenizer=tokenizer.fingerprint, eos_id=tokenizer.eos_id, inputs=inputs,
                               text_field=text_field, rule=rule, ops=ops)
    finally:
        ops.remove_tree(output.rstrip("/") + writer.STAGING_SUFFIX)
