"""provenance.json: every field filled from this checkout, one start appended per (re)start, an unreadable file set
aside rather than lost, and an explicit "unknown" commit outside a git checkout."""

import json
import re
import shutil
import subprocess

import pytest

from qwen35_jax.train import provenance
from qwen35_jax.train.provenance import PROVENANCE_FILE, collect_provenance, load_provenance, record_provenance

FIELDS = {"time_utc", "hostname", "python", "jax", "jaxlib", "flax", "optax", "orbax_checkpoint", "grain", "numpy",
          "commit", "dirty", "platform", "device_kind", "device_count", "process_count", "command"}


def is_git_checkout() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=provenance.REPO_ROOT, capture_output=True).returncode == 0


def test_collect_fills_every_field():
    start = collect_provenance(["train", "--workdir", "a b"])
    assert set(start) == FIELDS
    for name in ("python", "jax", "jaxlib", "flax", "optax", "orbax_checkpoint", "grain", "numpy", "hostname",
                 "platform", "device_kind"):
        assert isinstance(start[name], str) and start[name] and start[name] != "not installed", name
    assert start["device_count"] >= 1 and start["process_count"] == 1
    assert start["command"].endswith("train --workdir 'a b'")  # shell-quoted, after the interpreter
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", start["time_utc"])
    if not is_git_checkout():
        pytest.skip("the project is not a git checkout here")
    assert re.fullmatch(r"[0-9a-f]{40}", start["commit"]) and isinstance(start["dirty"], bool)


def test_record_appends_and_sets_aside_an_unreadable_file(tmp_path):
    assert load_provenance(tmp_path) == []
    first = record_provenance(tmp_path, ["first"])
    second = record_provenance(tmp_path, ["second"])
    starts = load_provenance(tmp_path)
    assert starts == [first, second] and starts[1]["command"].endswith(" second")
    assert not list(tmp_path.glob("*.tmp"))

    (tmp_path / PROVENANCE_FILE).write_text('{"starts": [{"jax"')  # truncated
    third = record_provenance(tmp_path, ["third"])
    assert load_provenance(tmp_path) == [third]
    assert (tmp_path / f"{PROVENANCE_FILE}.unreadable-0").read_text() == '{"starts": [{"jax"'
    assert json.loads((tmp_path / PROVENANCE_FILE).read_text()) == {"starts": [third]}


def test_not_a_git_checkout_says_unknown(tmp_path, monkeypatch):
    start = collect_provenance([], repo_root=str(tmp_path))
    assert start["commit"] == "unknown: not a git checkout" and start["dirty"] is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert provenance.git_state(str(tmp_path)) == ("unknown: git is not installed", None)
