"""``experiments.train`` on a prepared dataset (``prepared:DIR``): two processes x 4 CPU devices give the losses of
one process x 8 devices, process 0 alone prepares the shared workdir's cache and writes the metrics, and a resume
against a different dataset is refused with one line naming both."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from qwen35_jax.data.corpora import load_corpus
from qwen35_jax.data.prepared import SplitRule, prepare_documents
from qwen35_jax.data.tokenizer import get_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 5


def prepare(directory, corpus="shakespeare"):
    texts = list(load_corpus(corpus).documents.values())
    return prepare_documents(texts, str(directory), rule=SplitRule(0.05, 0), shards={"train": 3, "validation": 1},
                             inputs=[{"corpus": corpus}], text_field="text", tokenizer=get_tokenizer())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(workdir, corpora, *extra):
    return [sys.executable, "-m", "experiments.train", "--config", "configs/tiny.py:test", "--workdir", str(workdir),
            f"--config.data.corpora={corpora}", f"--config.train.steps={STEPS}", "--config.data.batch_size=8",
            "--config.checkpoint.every=5", *extra]


def environment(devices, cache):
    return dict(os.environ, JAX_PLATFORMS="cpu", QWEN35_JAX_CACHE=str(cache),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare(root / "shakespeare")
    return root


@pytest.mark.slow
def test_two_processes_equal_one_and_a_resume_on_other_data_is_refused(prepared, tmp_path):
    corpora = f"prepared:{prepared / 'shakespeare'},wiki_es"  # a prepared dataset and the workdir cache of another
    one = tmp_path / "one"
    result = subprocess.run(train_command(one, corpora), cwd=ROOT, env=environment(8, tmp_path / "xla"),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    two, port = tmp_path / "two", _free_port()
    flags = ["--config.multihost.enabled=True", f"--config.multihost.coordinator_address=127.0.0.1:{port}",
             "--config.multihost.num_processes=2", "--config.multihost.cpu_collectives=gloo"]
    processes = [subprocess.Popen(train_command(two, corpora, *flags, f"--config.multihost.process_id={i}"),
                                  cwd=ROOT, env=environment(4, tmp_path / "xla"), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n\n".join(logs)[-6000:]
    expected, got = losses(one), losses(two)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-5)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "done" for r in records) == 1  # one writer
    step = next(r for r in records if r.get("step") == STEPS and "loss" in r)
    assert set(step) >= {"tokens/shakespeare", "tokens/wiki_es"}
    assert step["tokens/shakespeare"] + step["tokens/wiki_es"] == STEPS * 8 * 32
    assert len(os.listdir(two / "prepared")) == 1  # wiki_es prepared once, by process 0

    other = tmp_path / "other" / "shakespeare"
    prepare(other, corpus="wiki_fr")
    again = subprocess.run(train_command(one, f"prepared:{other},wiki_es", f"--config.train.steps={STEPS + 2}"),
                           cwd=ROOT, env=environment(8, tmp_path / "xla"), capture_output=True, text=True,
                           timeout=900)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and lines[-1].startswith("error: ") and "trained on datasets" in lines[-1]
    assert "this run reads" in lines[-1] and len(losses(one)) == STEPS  # nothing trained
