"""Crash-safety of ``python -m experiments.train`` on the tiny test config (subprocesses, shared compile cache).

One uninterrupted reference run (with a forced NaN at step 3; Shakespeare read as a prepared dataset from the
workdir cache, the same reader as `prepared:DIR`; batches from one grain worker process); one run SIGKILLed after a
checkpoint exists and rerun with the same command (batches read in-process): its per-step losses equal the
reference's bit for bit; then the newest checkpoint's files are
truncated and the same command resumes from the previous checkpoint with a warning naming the bad one.
"""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEPS = 10
ARGS = ["--config", "configs/tiny.py:test", f"--config.train.steps={STEPS}", "--config.train.debug_nan_steps=(3,)"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu", QWEN35_JAX_CACHE=str(tmp_path_factory.mktemp("xla_cache")))
    env.pop("XLA_FLAGS", None)  # one CPU device, not the 8 virtual ones of conftest.py
    return env


def command(workdir, *extra):
    return [sys.executable, "-m", "experiments.train", *ARGS, "--workdir", str(workdir), *extra]


def run(workdir, env, *extra):
    result = subprocess.run(command(workdir, *extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def records_of(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def losses(workdir):
    """Per-step training loss as its JSON text (exact; NaN included), the last record of each step winning."""
    out = {}
    with open(workdir / "metrics.jsonl") as f:
        for line in f:
            record = json.loads(line)
            if "loss" in record:
                out[record["step"]] = json.dumps(record["loss"])
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("reference")
    run(workdir, env, "--config.data.workers=1")  # a spawned data worker (prepared.workers: no jax in it)
    return workdir


def test_nan_step_is_skipped_and_counted(reference):
    records = records_of(reference)
    by_step = {r["step"]: r for r in records if "loss" in r}
    assert sorted(by_step) == list(range(1, STEPS + 1))
    assert math.isnan(by_step[3]["loss"]) and by_step[3]["finite"] is False and by_step[3]["skipped"] == 1
    assert all(math.isfinite(by_step[s]["loss"]) for s in by_step if s != 3)
    assert by_step[2]["skipped"] == 0 and by_step[STEPS]["skipped"] == 1
    done = [r for r in records if r.get("event") == "done"]
    assert done and done[0]["skipped"] == 1
    val = [r["val_loss/shakespeare"] for r in records if "val_loss/shakespeare" in r]
    assert len(val) == 2 and val[1] < val[0]
    assert (reference / "curves.png").stat().st_size > 1000
    assert any(p.name.startswith("events.out.tfevents") for p in (reference / "tensorboard").iterdir())
    # keep=2: only the two newest complete checkpoints remain
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir() if p.name.isdigit()) == [8, 10]
    from qwen35_jax.train.checkpoint import load_experiment_config

    saved = load_experiment_config(reference)  # the whole experiment config, overrides included
    assert saved.train.steps == STEPS and saved.train.debug_nan_steps == (3,) and saved.model.hidden_size == 32


def test_sigkill_resume_then_corrupt_checkpoint(reference, tmp_path, env):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = workdir / "checkpoints" / "2"
    deadline = time.time() + 900
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert first.exists(), "the run ended before writing its first checkpoint"
    records = records_of(workdir)
    assert not any(r.get("event") == "done" for r in records), "killed too late: the run had already finished"

    resumed = run(workdir, env)
    assert "resumed from checkpoint step" in resumed.stdout
    assert losses(workdir) == losses(reference)  # bit for bit, NaN step included

    # Truncate every file of the newest checkpoint: the same command falls back to the previous one and says so.
    newest = workdir / "checkpoints" / str(STEPS)
    for path in newest.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = run(workdir, env)
    assert f"checkpoints/{STEPS} is incomplete or unreadable" in again.stderr
    assert "resumed from checkpoint step 8" in again.stdout
    assert (workdir / "checkpoints" / f"{STEPS}.unreadable-0").is_dir()  # kept, not deleted
    assert (workdir / "checkpoints" / str(STEPS)).is_dir()  # saved again at the end
    assert losses(workdir) == losses(reference)


def test_eval_and_load_params(reference, env):
    result = subprocess.run([sys.executable, "-m", "experiments.eval", *ARGS[:2], "--workdir", str(reference)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint step {STEPS}" in result.stdout
    evaluated = json.loads((reference / f"eval_step{STEPS}.json").read_text())["shakespeare"]
    trained = [r for r in records_of(reference) if "val_loss/shakespeare" in r][-1]
    assert evaluated["loss"] == pytest.approx(trained["val_loss/shakespeare"], abs=1e-5)
    assert evaluated["perplexity"] == pytest.approx(math.exp(evaluated["loss"]))

    from qwen35_jax.train.checkpoint import load_params, vocab_path

    config, params = load_params(reference, step=8)
    assert config.vocab_size == 256 and config.hidden_size == 32
    assert params["embed_tokens"].shape == (256, 32)
    assert vocab_path(reference / "checkpoints" / "8") == str(reference / "compact_vocab.json")
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
        load_params(reference, step=7)


def _continuations(stdout):
    return [line for line in stdout.splitlines() if line.startswith(("===", "To be", "Nay"))]


def test_generate_from_the_workdir_on_its_saved_mesh(reference, env):
    """experiments.generate --workdir builds the model on the mesh of the experiment config the run saved (fsdp = all
    devices): on 2 devices the batch and parameters are sharded and the greedy continuations equal 1 device's."""
    command = [sys.executable, "-m", "experiments.generate", "--workdir", str(reference), "--prompt", "To be, or not",
               "--prompt", "Nay, answer me", "--max_new_tokens", "6", "--no_stop"]
    single = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    two = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    sharded = subprocess.run(command, cwd=ROOT, env=two, capture_output=True, text=True, timeout=600)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "mesh: one device" in single.stdout and "mesh: fsdp=2" in sharded.stdout
    assert len(_continuations(single.stdout)) == 4
    assert _continuations(sharded.stdout) == _continuations(single.stdout)
