"""Every program reports a user error as one ``error: ...`` line on stderr with a non-zero status (the traceback only
with ``QWEN35_JAX_DEBUG=1``), and Ctrl-C during training saves a checkpoint that a rerun resumes from.

The error cases run the real programs as subprocesses and fail before anything is compiled or loaded."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from qwen35_jax.train import cli
from qwen35_jax.train.config_schema import validate_config
from qwen35_jax.train.loop import TrainingInterrupted

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config", "configs/tiny.py:test"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = dict(os.environ, JAX_PLATFORMS="cpu", QWEN35_JAX_CACHE=str(tmp_path_factory.mktemp("xla_cache")))
    env.pop("XLA_FLAGS", None)  # one CPU device, not the 8 virtual ones of conftest.py
    env.pop(cli.DEBUG_ENV, None)
    return env


def program(module, *args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_error_line(result, *words, status=None):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    assert result.returncode == status if status is not None else result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("module, args, words, status", [
    ("experiments.train", ["--config", "configs/nope.py", "--workdir", "{w}"],
     ["configs/nope.py", "does not exist"], 2),
    ("experiments.train", ["--config", "configs/nope.py", "--workdir", "{w}", "--config.train.steps=3"],
     ["configs/nope.py", "does not exist"], 2),
    ("experiments.train", [*TINY, "--workdir", "{w}", "--config.train.stepz=3"],
     ["--config.train.stepz", "'train.stepz' does not exist"], 2),
    ("experiments.train", [*TINY, "--workdir", "{w}", "--config.train.steps=abc"],
     ["--config.train.steps=abc", "expected int"], 2),
    ("experiments.train", [*TINY, "--workdir", "{w}", "--config.train.steps=0"],
     ["config.train.steps=0 is invalid"], 1),
    ("experiments.train", [*TINY, "--workdir", "{w}", "--config.mesh.fsdp=3"], ["config.mesh", "devices"], 1),
    ("experiments.train", [*TINY], ["--workdir", "--help"], 2),
    ("experiments.eval", [*TINY, "--workdir", "{w}"], ["no checkpoint in", "train first"], 1),
    ("experiments.generate", ["--workdir", "{w}", "--prompt", "To be"], ["no checkpoint in", "train first"], 1),
    ("experiments.caption_rank", [*TINY, "--workdir", "{w}"], ["kind='captions'"], 1),
    ("experiments.sweep", [*TINY, "--workdir", "{w}", "--sweep", "model.num_experts"], ["--sweep entry"], 1),
    ("experiments.sweep", [*TINY, "--workdir", "{w}", "--sweep", "model.num_expertz=2,4"],
     ["sweep point(s) num_expertz-2, num_expertz-4", "'model.num_expertz' does not exist", "nothing was trained"], 2),
    ("experiments.sweep", [*TINY, "--workdir", "{w}", "--sweep", "model.num_experts=4,four", "--dry_run"],
     ["sweep point(s) num_experts-four", "expected int"], 2),
    ("experiments.sweep", [*TINY, "--workdir", "{w}", "--sweep", "model.num_attention_heads=3,4"],
     ["sweep point(s) num_attention_heads-3", "num_attention_heads=3 is invalid"], 2),
    ("tools.convert_hf", ["export", "--ckpt", "{w}/missing", "--out", "{w}/out"], ["missing", "no checkpoint"], 1),
    ("tools.convert_hf", ["export", "--ckpt", "{w}"], ["--out"], 2),
    ("tools.param_count", ["--config", "configs/nope.py"], ["does not exist"], 2),
])
def test_user_error_is_one_line(module, args, words, status, tmp_path, env):
    result = program(module, *[a.format(w=tmp_path) for a in args], env=env)
    assert_one_error_line(result, *words, status=status)
    assert not os.listdir(tmp_path)  # failed before writing anything


def test_debug_switch_shows_the_traceback(tmp_path, env):
    result = program("experiments.train", *TINY, "--workdir", tmp_path, "--config.train.steps=0",
                     env=dict(env, **{cli.DEBUG_ENV: "1"}))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ValueError: config.train.steps=0 is invalid" in result.stderr
    assert "error: " not in result.stderr


def test_which_exceptions_are_user_errors():
    with pytest.raises(ValueError) as ours:
        validate_config(__import__("ml_collections").ConfigDict({"model": {}, "train": {"steps": 0}}))
    line, status = cli.user_error_line(ours.value)
    assert line.startswith("error: config.") and line.endswith(cli.TRACEBACK_HINT) and status == 1
    with pytest.raises(ValueError) as numpy_error:
        np.array_split(np.zeros(3), 0)
    assert cli.user_error_line(numpy_error.value)[0].startswith("error: numpy: number sections must be")
    assert cli.user_error_line(FileExistsError(17, "File exists", "out"))[0].startswith("error: File exists: 'out'")
    oom = RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes.\nmore")
    assert "out of device memory" in cli.user_error_line(oom)[0]
    assert cli.user_error_line(KeyboardInterrupt()) == ("error: interrupted", 130)
    assert cli.user_error_line(TrainingInterrupted("stopped at step 3 (Ctrl-C); ...")) == (
        "stopped at step 3 (Ctrl-C); ...", 130)
    for bug in (AttributeError("x"), IndexError("y"), KeyError("z")):
        assert cli.user_error_line(bug) is None
    with pytest.raises(TypeError) as library_type_error:
        len(3)
    assert cli.user_error_line(library_type_error.value) is None  # raised outside the project: a bug


def _records(workdir):
    path = workdir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(tmp_path, env):
    command = [sys.executable, "-m", "experiments.train", *TINY, "--workdir", str(tmp_path),
               "--config.train.steps=200", "--config.checkpoint.every=1000"]
    # A new session, signalled as a group: what a terminal's Ctrl-C does.
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            # a terminal's Ctrl-C reaches a program whose SIGINT is live; a CI job started in the
                            # background inherits SIGINT ignored, which the trainer (rightly) keeps ignoring
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and not any("loss" in r for r in _records(tmp_path)):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    assert "Ctrl-C: saving a checkpoint at the next step boundary" in err
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and 1 <= steps[0] < 200
    stop = steps[0]
    assert err.strip().splitlines()[-1] == (f"stopped at step {stop} (Ctrl-C); checkpoint: {tmp_path}/checkpoints/"
                                            f"{stop}; rerun the same command to resume")
    assert _records(tmp_path)[-1] == {"event": "preempted", "step": stop, "signal": "SIGINT"}

    rerun = subprocess.run([*command[:-2], f"--config.train.steps={stop + 2}"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from checkpoint step {stop}" in rerun.stdout
    records = _records(tmp_path)
    resumed = records.index({"event": "resume", "from_step": stop})
    assert [r["step"] for r in records[resumed:] if "loss" in r] == [stop + 1, stop + 2]
    assert records[-1]["event"] == "done" and records[-1]["step"] == stop + 2


def test_fields_a_config_file_leaves_out_can_be_overridden():
    """configs/tiny.py spells out no train.schedule or checkpoint.keep_steps: the defaults are filled in before the
    command line's overrides apply, and a misspelt key is still refused."""
    config = cli.load_config_with_overrides("configs/tiny.py", ["train.schedule=wsd", "checkpoint.keep_steps=(4,8)"])
    assert config.train.schedule == "wsd" and tuple(config.checkpoint.keep_steps) == (4, 8)
    assert config.train.learning_rate == 3e-3  # the file's own value
    with pytest.raises(cli.CommandLineError, match="train.schedul"):
        cli.load_config_with_overrides("configs/tiny.py", ["train.schedul=wsd"])
    # The file's typed placeholders (multihost.*: None until set) keep their types, so they stay overridable.
    config = cli.load_config_with_overrides("configs/tiny.py", ["multihost.coordinator_address=127.0.0.1:1234",
                                                                "multihost.process_id=1"])
    assert config.multihost.coordinator_address == "127.0.0.1:1234" and config.multihost.process_id == 1
