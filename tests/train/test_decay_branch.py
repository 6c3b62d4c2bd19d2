"""Decay branches (``train.branch_from``): a branch continues its source run exactly, cools down on its own
schedule in its own workdir, and a source it would not continue is refused before anything is loaded."""

import importlib.util
import json
import pathlib

import pytest

from qwen35_jax.train.loop import train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[2]


def wsd_config(steps, **train):
    spec = importlib.util.spec_from_file_location("tiny_config", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    config.data.batch_size = 8  # the 8 virtual CPU devices of conftest.py
    config.train.update(steps=steps, warmup_steps=2, log_every=1, **train)
    config.train.schedule = "wsd"
    config.train.decay_steps = 2
    config.checkpoint.update(every=100, keep=1)
    return config


def losses(records):
    return {r["step"]: json.dumps(r["loss"]) for r in records if "loss" in r}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("branch") / "main"
    config = wsd_config(8)
    config.checkpoint.keep_steps = (4,)
    records = train_and_evaluate(config, str(workdir))
    return workdir, records


def test_keep_steps_survive_keep(source):
    workdir, _ = source
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 8]


def test_shorter_branch_cools_down_from_the_stable_phase(source, tmp_path):
    workdir, records = source
    config = wsd_config(6)
    config.train.branch_from = str(workdir / "checkpoints" / "4")
    branch = train_and_evaluate(config, str(tmp_path / "short"))
    steps = sorted(losses(branch))
    assert steps == [5, 6]
    assert next(r for r in branch if r.get("event") == "branch")["from_step"] == 4
    # The losses of steps 5 and 6 come from parameters updated at the peak learning rate in both runs (this run's
    # cooldown lowers it from the update of step 6 on): bit for bit the source's, so the branch continued the
    # source's parameters, optimizer state, RNG and data position.
    assert losses(branch) == {s: v for s, v in losses(records).items() if s in (5, 6)}
    assert any(r.get("event") == "done" and r["step"] == 6 for r in branch)
    assert (tmp_path / "short" / "checkpoints" / "6").is_dir()


@pytest.mark.parametrize(("change", "words"), [
    ({"schedule": "cosine"}, "learning rates differ at step 3"),
    ({"learning_rate": 5e-3}, "learning rates differ at step 1"),
    ({"optimizer": "muon"}, "other optimizer settings: train.optimizer='adamw' there, 'muon' here"),
])
def test_a_source_it_would_not_continue_is_refused(source, tmp_path, change, words):
    workdir, _ = source
    config = wsd_config(6)
    config.train.update(branch_from=str(workdir / "checkpoints" / "4"), **change)
    with pytest.raises(ValueError, match=words):
        train_and_evaluate(config, str(tmp_path / "refused"))
    assert not (tmp_path / "refused" / "checkpoints").exists()
