"""Multi-process runs of ``experiments.train`` on one machine, on a prepared dataset (``prepared:DIR``) plus a
bundled corpus prepared into the shared workdir's cache:

* two processes x 4 CPU devices started with ``--config.multihost.*`` flags only, and two started with the
  environment a one-node, two-task ``srun`` sets (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
  SLURM_LOCALID, SLURM_STEP_NUM_NODES; no address, count or id flags: jax.distributed's auto-detection), give the
  per-step losses of one process x 8 devices, with one metrics file, one checkpoint per saved step and the cache
  prepared once;
* ``experiments.eval`` and ``experiments.generate`` on the two-process workdir, in one process, give the losses and
  greedy tokens of the one-process workdir and say in one line that they do not start jax.distributed;
* a resume against a different dataset is refused with one line naming both.
"""

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
CONFIG = ["--config", "configs/tiny.py:test", "--config.data.batch_size=8"]


def prepare(directory, corpus="shakespeare"):
    texts = list(load_corpus(corpus).documents.values())
    return prepare_documents(texts, str(directory), rule=SplitRule(0.05, 0), shards={"train": 3, "validation": 1},
                             inputs=[{"corpus": corpus}], text_field="text", tokenizer=get_tokenizer())


def free_port(low: int = 0, high: int = 65535) -> int:
    """A port nobody listens on: any (``low`` 0) or the first free one in ``[low, high]``."""
    for port in range(low, high + 1) if low else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in [{low}, {high}]")


def environment(devices, cache, **extra):
    return dict(os.environ, JAX_PLATFORMS="cpu", QWEN35_JAX_CACHE=str(cache),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def train(workdir, corpora, *flags):
    return [sys.executable, "-m", "experiments.train", *CONFIG, "--workdir", str(workdir),
            f"--config.data.corpora={corpora}", f"--config.train.steps={STEPS}", "--config.checkpoint.every=5", *flags]


def run_processes(commands_and_envs):
    processes = [subprocess.Popen(c, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c, e in commands_and_envs]
    logs = [p.communicate(timeout=900)[0] for p in processes]
    assert all(p.returncode == 0 for p in processes), "\n\n".join(logs)[-6000:]
    return logs


def losses(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    prepare(root / "data" / "shakespeare")
    corpora = f"prepared:{root / 'data' / 'shakespeare'},wiki_es"
    cache = root / "xla"
    run_processes([(train(root / "one", corpora), environment(8, cache))])
    port = free_port()
    flags = ["--config.multihost.enabled=True", f"--config.multihost.coordinator_address=127.0.0.1:{port}",
             "--config.multihost.num_processes=2", "--config.multihost.cpu_collectives=gloo"]
    run_processes([(train(root / "flags", corpora, *flags, f"--config.multihost.process_id={i}"),
                    environment(4, cache)) for i in range(2)])
    return root, corpora


def slurm_run(root: pathlib.Path, corpora: str) -> None:
    """The two processes of a one-node, two-task ``srun``, found by jax.distributed's auto-detection alone."""
    if (root / "slurm").exists():
        return
    slurm_port = free_port(65535 - 2**12 + 1)  # jax derives the coordinator port from the job id into this range
    slurm = {"SLURM_JOB_ID": str(slurm_port - (65535 - 2**12 + 1) + 2**12 * 7), "SLURM_STEP_NODELIST": "localhost",
             "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "1"}
    auto = ["--config.multihost.enabled=True", "--config.multihost.cpu_collectives=gloo"]
    cache = root / "xla"  # the fixture's compilation cache
    run_processes([(train(root / "slurm", corpora, *auto),
                    environment(4, cache, **slurm, SLURM_PROCID=str(i), SLURM_LOCALID=str(i))) for i in range(2)])


@pytest.mark.slow
# The SLURM launch (~65 s) is the slow tier's: CI checks the explicit flags, which the auto-detection only fills in.
@pytest.mark.parametrize("name", ["flags", pytest.param("slurm", marks=pytest.mark.slowtier)])
def test_two_processes_train_like_one(runs, name):
    root, corpora = runs
    if name == "slurm":
        slurm_run(root, corpora)
    expected, got = losses(root / "one"), losses(root / name)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-5)
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "done" for r in records) == 1  # one writer
    assert not [p for p in (root / name).iterdir() if p.name.startswith("metrics") and p.name != "metrics.jsonl"]
    assert sorted(p.name for p in (root / name / "checkpoints").iterdir() if p.name.isdigit()) == [str(STEPS)]
    step = next(r for r in records if r.get("step") == STEPS and "loss" in r)
    assert step["tokens/shakespeare"] + step["tokens/wiki_es"] == STEPS * 8 * 32  # tokens per source
    assert len(os.listdir(root / name / "prepared")) == 1  # wiki_es prepared once, by process 0


@pytest.mark.slow
def test_eval_and_generate_of_a_two_process_run_in_one_process(runs):
    root, corpora = runs
    results, continuations = {}, {}
    for name in ("one", "flags"):
        evaluated = subprocess.run([sys.executable, "-m", "experiments.eval", *CONFIG, "--workdir", str(root / name),
                                    f"--config.data.corpora={corpora}", "--config.multihost.enabled=True"],
                                   cwd=ROOT, env=environment(8, root / "xla"), capture_output=True, text=True,
                                   timeout=600)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert "running in this one process on its 8 local device(s)" in evaluated.stdout
        results[name] = json.loads((root / name / f"eval_step{STEPS}.json").read_text())
        generated = subprocess.run([sys.executable, "-m", "experiments.generate", "--workdir", str(root / name),
                                    "--prompt", "To be, or not", "--max_new_tokens", "8", "--no_stop"], cwd=ROOT,
                                   env=environment(1, root / "xla"), capture_output=True, text=True, timeout=600)
        assert generated.returncode == 0, generated.stderr[-3000:]
        assert ("running in this one process" in generated.stdout) == (name == "flags")
        assert "<unk> (id 0) is masked before sampling" in generated.stdout
        continuations[name] = [line for line in generated.stdout.splitlines() if line.startswith("To be")]
    for source in ("shakespeare", "wiki_es"):
        assert results["flags"][source]["loss"] == pytest.approx(results["one"][source]["loss"], rel=1e-5)
    assert continuations["flags"] == continuations["one"] and len(continuations["one"]) == 1
    assert "<unk>" not in continuations["one"][0]


@pytest.mark.slow
def test_a_resume_on_another_dataset_is_refused(runs, tmp_path):
    root, _ = runs
    other = tmp_path / "shakespeare"
    prepare(other, corpus="wiki_fr")
    again = subprocess.run(train(root / "one", f"prepared:{other},wiki_es", f"--config.train.steps={STEPS + 2}"),
                           cwd=ROOT, env=environment(8, root / "xla"), capture_output=True, text=True, timeout=900)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and lines[-1].startswith("error: ") and "trained on datasets" in lines[-1]
    assert "this run reads" in lines[-1] and len(losses(root / "one")) == STEPS  # nothing trained
