"""tools.prepare_data / data.prepared.beam_pipeline: the Beam engine of a prepared dataset on the local FnApiRunner
(the DirectRunner's batch engine): it reads every input format, gives the same bytes on 1 and 2 worker processes as
the in-process engine, survives a kill, and reports bad input in one ``error:`` line."""

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")
pq = pytest.importorskip("pyarrow.parquet")
zstandard = pytest.importorskip("zstandard")

import pyarrow as pa  # noqa: E402

from qwen35_jax.data.prepared import beam_pipeline, writer  # noqa: E402
from qwen35_jax.data.prepared.documents import SplitRule  # noqa: E402
from qwen35_jax.data.prepared.inputs import open_local, read_documents  # noqa: E402
from qwen35_jax.data.prepared.manifest import MANIFEST_FILE, read_manifest  # noqa: E402
from qwen35_jax.data.tokenizer import get_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FRACTION = 0.25
LOCAL = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing"]
IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]
WORDS = ["the", "river", "stone", "light", "café", "over", "under", "naïve", "bright", "日本語", "data", "model",
         "quick", "brown", "fox", "jumps", "lazy", "dog"]


def _texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) + rng.choice([".", "!", "\n\nEnd."])
            for _ in range(count)]


def _jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)).encode()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    """Every format (JSON lines plain, .gz, .zst; Parquet) with 3 bad records: (directory, the good texts)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = _texts(80, seed=1)
    bad = b'{"text": "not \xff utf-8"}\n' + b"{not json\n" + b'{"text": "   "}\n'
    (root / "a.jsonl").write_bytes(_jsonl(texts[:20]) + bad)
    (root / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(texts[20:40])))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(texts[40:60])))
    pq.write_table(pa.table({"text": texts[60:], "n": list(range(20))}), root / "d.parquet")
    return root, texts


def _globs(root: Path) -> list[str]:
    return [str(root / "*.jsonl*"), str(root / "*.parquet")]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _decoded(directory: Path) -> list[str]:
    manifest, tokenizer = read_manifest(str(directory)), get_tokenizer()
    texts = []
    for split in manifest.splits.values():
        for shard in split.shards:
            tokens = np.fromfile(directory / shard.file, "<i4")
            ends = np.flatnonzero(tokens == manifest.eos_id)
            texts += [tokenizer.decode(doc[:-1]) for doc in np.split(tokens, ends + 1)[:-1]]
    return texts


@pytest.fixture(scope="module")
def one_worker(corpus, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("beam") / "one"
    beam_pipeline.prepare_with_beam(_globs(corpus[0]), str(output), validation_fraction=FRACTION, num_shards=3,
                                    pipeline_args=[*LOCAL, "--direct_num_workers=1"])
    return output


def test_every_format_round_trips(corpus, one_worker):
    _, texts = corpus
    manifest = read_manifest(str(one_worker))
    assert sorted(_decoded(one_worker)) == sorted(texts)
    assert manifest.splits["train"].documents + manifest.splits["validation"].documents == len(texts)
    assert manifest.splits["validation"].documents > 0 and len(manifest.splits["train"].shards) == 3
    assert manifest.skipped == {"empty": 1, "invalid_json": 1, "invalid_utf8": 1}
    assert [i["path"] for i in manifest.inputs] == sorted(str(p) for p in corpus[0].iterdir())
    assert all(i["bytes"] == os.path.getsize(i["path"]) for i in manifest.inputs)


def _in_process(root: Path, output: Path, shards: dict[str, int], ops=None) -> None:
    """The in-process engine on the same files' records."""
    inputs = beam_pipeline.match_inputs(_globs(root))
    records = []
    for entry in inputs:
        with open_local(entry["path"]) as stream:
            records += list(read_documents(stream, entry["path"], "text"))
    writer.prepare_documents(records, str(output), rule=SplitRule(FRACTION, 0), shards=shards, inputs=inputs,
                             text_field="text", tokenizer=get_tokenizer(), ops=ops)


def test_same_bytes_on_two_workers_and_in_process(corpus, one_worker, tmp_path):
    beam_pipeline.prepare_with_beam(_globs(corpus[0]), str(tmp_path / "two"), validation_fraction=FRACTION,
                                    num_shards=3, pipeline_args=[*LOCAL, "--direct_num_workers=2"])
    expected = _files(one_worker)
    assert _files(tmp_path / "two") == expected
    shards = writer.shard_counts(3, FRACTION, 1)
    _in_process(corpus[0], tmp_path / "local", shards)
    assert _files(tmp_path / "local") == expected
    _in_process(corpus[0], tmp_path / "beam_ops", shards, ops=beam_pipeline.BeamFileOps())  # gs:// outputs' ops
    assert _files(tmp_path / "beam_ops") == expected
    assert not (tmp_path / f"two{writer.STAGING_SUFFIX}").exists()


def _tool(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.prepare_data", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_killed_preparation_leaves_no_dataset_and_reruns_to_the_same_bytes(corpus, tmp_path):
    output, staging = tmp_path / "out", tmp_path / f"out{writer.STAGING_SUFFIX}"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    process = _tool("--input", _globs(corpus[0])[0], "--input", _globs(corpus[0])[1], "--output", str(output),
                    "--validation_fraction", str(FRACTION), "--num_shards", "24", "--direct_num_workers=2", env=env,
                    start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (staging.is_dir() and any(p.suffix == ".tokens" for p in staging.rglob("*"))):
            assert not (output / MANIFEST_FILE).exists()
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
    finally:
        process.kill()  # SIGKILL: the tool only; its worker processes end with its connection
        process.communicate()
    assert not (output / MANIFEST_FILE).exists()  # killed before finalize: no dataset
    deadline = time.monotonic() + 60
    while _group_alive(process.pid):  # the orphaned workers finish their bundle and exit by themselves
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("Beam worker processes outlived the killed tool by 60 s")
        time.sleep(0.05)
    assert not (output / MANIFEST_FILE).exists()
    (staging / "train-00000-of-00024.tokens").write_bytes(b"garbage")  # and a corrupt leftover
    (staging / writer.SKIPPED_FILE).write_bytes(b"{")
    beam_pipeline.prepare_with_beam(_globs(corpus[0]), str(output), validation_fraction=FRACTION, num_shards=24,
                                    pipeline_args=IN_MEMORY)
    _in_process(corpus[0], tmp_path / "reference", writer.shard_counts(24, FRACTION, 1))
    assert _files(output) == _files(tmp_path / "reference")
    assert not staging.exists()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _one_error_line(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_bad_input_is_one_error_line_and_writes_nothing(corpus, one_worker, tmp_path):
    root, _ = corpus
    output = tmp_path / "out"
    missing = _tool("--input", str(root / "*.jsonl*"), "--output", str(output), "--text_field", "body")
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": " \\n "}\n')
    nothing = _tool("--input", str(empty), "--output", str(output), "--direct_num_workers=1",
                    env=dict(os.environ, TMPDIR=str(tmp_path)))
    before = _files(one_worker)
    exists = _tool("--input", str(root / "a.jsonl"), "--output", str(one_worker))
    line = _one_error_line(missing)
    assert "has no field 'body'" in line and "--text_field" in line
    assert "holds no document" in _one_error_line(nothing)
    assert "--overwrite" in _one_error_line(exists)
    assert not output.exists() and not Path(f"{output}{writer.STAGING_SUFFIX}").exists()
    assert _files(one_worker) == before
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".log"]  # Beam's log is removed after a user error


def test_overwrite_replaces_a_dataset(corpus, tmp_path):
    output = tmp_path / "out"
    old = beam_pipeline.prepare_with_beam([str(corpus[0] / "*.jsonl.*")], str(output), validation_fraction=FRACTION,
                                          pipeline_args=IN_MEMORY)
    with pytest.raises(FileExistsError, match="--overwrite"):
        beam_pipeline.prepare_with_beam(_globs(corpus[0]), str(output), validation_fraction=FRACTION,
                                        pipeline_args=IN_MEMORY)
    assert read_manifest(str(output)).fingerprint == old.fingerprint
    new = beam_pipeline.prepare_with_beam(_globs(corpus[0]), str(output), validation_fraction=FRACTION,
                                          overwrite=True, pipeline_args=IN_MEMORY)
    assert new.fingerprint != old.fingerprint and read_manifest(str(output)).fingerprint == new.fingerprint
    assert len(old.inputs) == 2 and len(new.inputs) == 4 and sorted(_decoded(output)) == sorted(corpus[1])


def test_user_errors_before_and_inside_the_pipeline(corpus, tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        beam_pipeline.prepare_with_beam([str(tmp_path / "none*.jsonl")], str(tmp_path / "out"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format"):
        beam_pipeline.prepare_with_beam([str(tmp_path / "x.csv")], str(tmp_path / "out"))
    # A later file without the field fails inside a worker: the launcher re-raises the worker's own message.
    (tmp_path / "z.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"^\S+z.jsonl line 1 has no field 'text' \(its fields: \['body'\]\)"):
        beam_pipeline.prepare_with_beam([str(corpus[0] / "a.jsonl"), str(tmp_path / "z.jsonl")],
                                        str(tmp_path / "out"), validation_fraction=FRACTION, pipeline_args=IN_MEMORY)
    assert not (tmp_path / "out").exists() and not (tmp_path / f"out{writer.STAGING_SUFFIX}").exists()
