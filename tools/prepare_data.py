"""Prepare a dataset: tokenise a corpus once into sharded int32 token files + manifest.json (an Apache Beam pipeline,
qwen35_jax/data/prepared/beam_pipeline.py; ``pip install -e ".[data]"``).

  python -m tools.prepare_data --input 'corpus/*.jsonl.zst' [--input 'more/*.parquet' ...] --output DIR
      [--text_field text] [--validation_fraction 0.001] [--split_seed 0] [--num_shards 0] [--shard_mb 256]
      [--overwrite] [Beam pipeline options ...]

Inputs: JSON lines (``*.jsonl`` / ``*.json``, optionally ``.gz`` / ``.zst``; the document in ``--text_field``),
Parquet (a string column ``--text_field``) and ``*.txt`` (a file is a document), local or on any Beam file system
(``gs://``, ``s3://``, ...). ``--output`` may be a ``gs://`` URL too. ``--num_shards 0`` makes one training shard
per ``--shard_mb`` MiB of input. The same inputs and options give the same bytes on every runner and any number of
workers (see qwen35_jax/data/prepared/documents.py).

Every other option is a Beam pipeline option. Without ``--runner`` the pipeline runs on this machine on one worker
process per core: ``--runner=FnApiRunner --direct_running_mode=multi_processing --direct_num_workers=<cores>`` (the
DirectRunner's batch engine; ``--runner=DirectRunner`` itself may try to download and use the Prism runner); give
``--direct_num_workers=N`` to use fewer. Elsewhere:

  # Google Cloud Dataflow: the workers install this package from setup.py (or --requirements_file)
  python -m tools.prepare_data --input 'gs://bucket/corpus/*.jsonl.gz' --output gs://bucket/prepared/corpus \\
      --runner=DataflowRunner --project=PROJECT --region=us-central1 --temp_location=gs://bucket/tmp \\
      --setup_file ./setup.py --num_workers=32 --machine_type=n2-standard-8
  # Apache Flink (a running cluster; the Beam Flink job server is started for you)
  python -m tools.prepare_data --input ... --output ... --runner=FlinkRunner --flink_master=HOST:8081 \\
      --environment_type=LOOPBACK
  # Apache Spark
  python -m tools.prepare_data --input ... --output ... --runner=SparkRunner --spark_master_url=spark://HOST:7077 \\
      --environment_type=LOOPBACK

(On a cluster the workers need this package and its dependencies: a Docker ``--sdk_container_image`` or
``--environment_type=PROCESS``/``EXTERNAL`` set up with ``pip install -e ".[data]"``; LOOPBACK runs the Python
workers in this process, fine for a small cluster test.) The output is written by the workers into
``<output>.partial`` and moved into place (manifest.json last) only when complete: a killed run leaves no dataset,
and running it again starts afresh. Stopping this program does not stop a job on a cluster (Dataflow, Flink, Spark):
cancel the job (e.g. ``gcloud dataflow jobs cancel``) before running again, or its workers may still write into
``<output>.partial`` (local worker processes exit with this program, after their current bundle).

A bad input (a missing field, a glob that matches nothing, an existing output
without ``--overwrite``, an input with no document) ends with one ``error: ...`` line and status 1
(``QWEN35_JAX_DEBUG=1`` shows the traceback and Beam's log); records that are not valid UTF-8 or JSON, or are
empty, are skipped and counted in the manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator

from qwen35_jax.data.prepared.manifest import Manifest
from qwen35_jax.train.cli import CommandLineError, debug_enabled, report_user_error

_LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
_NOISE = ("apitools not found", "bigquery_storage_v1")  # Beam's import-time warnings about unused GCP clients


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors raise CommandLineError (one ``error:`` line, status 2) instead of printing usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandLineError(f"{message} (see {self.prog} --help)")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(our options, the Beam pipeline options)."""
    parser = _Parser(prog="python -m tools.prepare_data", description=__doc__.splitlines()[0], allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--input", action="append", required=True,
                        help="input file or glob (repeatable); quote globs so the shell does not expand them")
    parser.add_argument("--output", required=True, help="dataset directory to create (local or gs://...)")
    parser.add_argument("--text_field", default="text", help="JSON field / Parquet column holding the document text")
    parser.add_argument("--validation_fraction", type=float, default=0.001, help="fraction of documents held out")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the hash that splits the documents")
    parser.add_argument("--num_shards", type=int, default=0, help="training shards (0: one per --shard_mb of input)")
    parser.add_argument("--shard_mb", type=float, default=256, help="MiB of input per training shard (--num_shards 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output once the new is done")
    args, rest = parser.parse_known_args(argv)
    for previous, arg in zip(["", *rest], rest, strict=False):  # a bare value only after a Beam option without "="
        if not arg.startswith("-") and not (previous.startswith("--") and "=" not in previous):
            raise CommandLineError(f"unexpected argument {arg!r} (see {parser.prog} --help)")
    return args, rest


def pipeline_args(beam_args: list[str], cores: int) -> list[str]:
    """The Beam options to run with: the user's, and without a runner this machine's cores (module docstring).
    Unknown options are refused (Beam would only log that it discards them)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(beam_args)
    beam_logger = logging.getLogger("apache_beam.options.pipeline_options")
    level, beam_logger.level = beam_logger.level, logging.ERROR  # its "Discarding unparseable args" warning
    try:
        unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    finally:
        beam_logger.setLevel(level)
    if unknown:
        raise CommandLineError(f"unknown option(s) {sorted('--' + u for u in unknown)}: neither this program's nor "
                               "a Beam pipeline option (see python -m tools.prepare_data --help)")
    given = {a[2:].split("=", 1)[0] for a in beam_args if a.startswith("--")}
    args = list(beam_args)
    if "runner" not in given:
        args.append("--runner=FnApiRunner")
        if "direct_running_mode" not in given:
            args.append("--direct_running_mode=multi_processing")
        if "direct_num_workers" not in given:
            args.append(f"--direct_num_workers={cores}")
    return args


def _workers(args: list[str], cores: int) -> tuple[str, int | None]:
    """(runner name, worker processes) of the options, None where the runner decides."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, WorkerOptions

    options = PipelineOptions(args)
    runner = str(options.view_as(StandardOptions).runner or "DirectRunner").rsplit(".", 1)[-1]
    if runner in _LOCAL_RUNNERS:
        return runner, options.view_as(DirectOptions).direct_num_workers or cores
    return runner, options.view_as(WorkerOptions).num_workers


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in _NOISE)


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Send this process's stderr (file descriptor 2, which the local Beam workers inherit) to ``path``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _summary(manifest: Manifest, output: str, seconds: float, runner: str, workers: int | None) -> str:
    lines = [f"prepared {output} in {seconds:.1f}s ({runner}, {workers or '?'} workers)"]
    for name, split in manifest.splits.items():
        lines.append(f"  {name:<10} {split.documents:>12,} documents {split.tokens:>15,} tokens "
                     f"{len(split.shards):>5} shard(s) {split.text_bytes / 1e6:>10,.1f} MB text")
    skipped = ", ".join(f"{reason} {count:,}" for reason, count in sorted(manifest.skipped.items()))
    lines.append(f"  skipped records: {skipped}")
    text_mb = sum(s.text_bytes for s in manifest.splits.values()) / 1e6
    input_mb = sum(i.get("bytes", 0) for i in manifest.inputs) / 1e6
    rate = f"{text_mb / seconds:,.2f} MB/s"
    if workers:
        per = "core" if runner in _LOCAL_RUNNERS else "worker"
        rate += f" = {text_mb / seconds / workers:,.2f} MB/s per {per}"
    lines.append(f"  {len(manifest.inputs)} input file(s), {input_mb:,.1f} MB; {text_mb:,.1f} MB of text: {rate}")
    lines.append(f"  manifest fingerprint {manifest.fingerprint}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    log_path = None
    try:
        args, beam_args = parse_args(argv)
        handler = logging.StreamHandler()  # before Beam is imported: its import-time warnings go through the filter
        handler.addFilter(_DropNoise())
        logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(levelname)s %(name)s: %(message)s",
                            force=True)  # replaces absl's handler
        try:
            from qwen35_jax.data.prepared.beam_pipeline import prepare_with_beam
        except ImportError as e:
            raise CommandLineError(f"{e}; Apache Beam and the input readers are optional: "
                                   'pip install -e ".[data]"') from None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        options = pipeline_args(beam_args, cores)
        runner, workers = _workers(options, cores)
        local = runner in _LOCAL_RUNNERS
        if not local:
            logging.getLogger().setLevel(logging.INFO)  # a remote runner's job id and console URL
        print(f"preparing {args.output} with {runner} ({workers or 'the runner decides the'} workers)", flush=True)
        quiet = contextlib.nullcontext()
        if local and not debug_enabled():  # local workers log to the terminal: keep it for errors
            fd, log_path = tempfile.mkstemp(prefix="prepare_data.", suffix=".log")
            os.close(fd)
            quiet = _stderr_to(log_path)
        with quiet:
            manifest = prepare_with_beam(args.input, args.output, text_field=args.text_field,
                                         validation_fraction=args.validation_fraction, split_seed=args.split_seed,
                                         num_shards=args.num_shards, shard_bytes=int(args.shard_mb * (1 << 20)),
                                         overwrite=args.overwrite, pipeline_args=options)
        print(_summary(manifest, args.output, time.perf_counter() - start, runner, workers))
    except BaseException as error:  # a user error: one line, status 1 (2 for the command line)
        status = report_user_error(error)
        if status is None:
            if log_path and os.path.getsize(log_path):
                sys.stderr.write(f"Beam's log is in {log_path}\n")
                log_path = None
            raise
        return status
    finally:
        if log_path:
            os.remove(log_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
