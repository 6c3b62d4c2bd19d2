"""What made a run: software versions, the project's git commit, the devices and the command line.

  start = record_provenance(workdir)     # at each (re)start of a training run; appends to WORKDIR/provenance.json
  starts = load_provenance(workdir)      # [{...}, ...], oldest first; [] when the file is absent

``WORKDIR/provenance.json`` is ``{"starts": [...]}`` with one flat dict per start of the run (a resumed run appends
its own, so a run resumed on other software shows both): ``time_utc``, ``hostname``, ``python`` and the versions of
jax, jaxlib, flax, optax, orbax-checkpoint (``orbax_checkpoint``), grain and numpy; ``commit`` and ``dirty`` (tracked
files modified) of the checkout that holds the ``qwen35_jax`` package — ``commit`` says ``"unknown: ..."`` and
``dirty`` is None when that is not a git checkout or git is missing; ``platform``, ``device_kind``,
``device_count``, ``process_count``; ``command`` (``sys.executable`` and the interpreter's arguments as given,
``sys.orig_argv``: ``-m experiments.train ...`` rather than ``sys.argv``'s file path; shell-quoted). Only process 0
writes; the write is atomic and an unreadable old file is renamed to ``provenance.json.unreadable-<n>``, never lost.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from typing import Any

import jax

from qwen35_jax.train.workdir import set_aside

PROVENANCE_FILE = "provenance.json"
# distribution name -> field name
PACKAGES = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax", "orbax-checkpoint": "orbax_checkpoint",
            "grain": "grain", "numpy": "numpy"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # parent of qwen35_jax/
GIT_TIMEOUT_S = 10.0
log = logging.getLogger(__name__)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(repo_root: str, *args: str) -> str:
    """stdout of ``git args`` run in ``repo_root``; raises OSError / SubprocessError when git fails or is missing."""
    result = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                            check=True)
    return result.stdout.strip()


def git_state(repo_root: str = REPO_ROOT) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the git checkout whose top level is ``repo_root``; ``("unknown: <why>", None)`` when
    it is not one (e.g. an installed package inside some other repository) or git is missing or fails."""
    try:
        top = _git(repo_root, "rev-parse", "--show-toplevel")
    except FileNotFoundError:
        return "unknown: git is not installed", None
    except subprocess.CalledProcessError as error:  # e.g. "not a git repository", "detected dubious ownership"
        message = (error.stderr or "").strip().splitlines()
        if not message or "not a git repository" in message[0]:
            return "unknown: not a git checkout", None
        return f"unknown: git failed ({message[0][:200]})", None
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown: git failed ({type(error).__name__})", None
    if os.path.realpath(top) != os.path.realpath(repo_root):
        return "unknown: not a git checkout", None
    try:
        commit = _git(repo_root, "rev-parse", "HEAD")
        dirty = bool(_git(repo_root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError) as error:
        return f"unknown: git failed ({type(error).__name__})", None
    return commit, dirty


def collect_provenance(argv: list[str] | None = None, repo_root: str = REPO_ROOT) -> dict[str, Any]:
    """This process's provenance (the fields of the module docstring); ``argv`` (the arguments after the interpreter)
    defaults to this process's."""
    commit, dirty = git_state(repo_root)
    devices = jax.devices()
    return {
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        **{field: _version(name) for name, field in PACKAGES.items()},
        "commit": commit,
        "dirty": dirty,
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "command": shlex.join([sys.executable, *(sys.orig_argv[1:] if argv is None else argv)]),
    }


def _read(path: str) -> list[dict[str, Any]] | None:
    """The starts in ``path``; [] when absent, None when unreadable."""
    try:
        with open(path) as f:
            starts = json.load(f)["starts"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return starts if isinstance(starts, list) and all(isinstance(s, dict) for s in starts) else None


def load_provenance(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """The run's starts, oldest first; [] when ``provenance.json`` is absent (or unreadable)."""
    return _read(os.path.join(os.fspath(workdir), PROVENANCE_FILE)) or []


def record_provenance(workdir: str | os.PathLike, argv: list[str] | None = None,
                      repo_root: str = REPO_ROOT) -> dict[str, Any]:
    """Append this start's provenance to ``WORKDIR/provenance.json`` (process 0 only); returns it."""
    start = collect_provenance(argv, repo_root)
    if jax.process_index() != 0:
        return start
    path = os.path.join(os.fspath(workdir), PROVENANCE_FILE)
    starts = _read(path)
    if starts is None:
        log.warning("%s is unreadable; moved it to %s and starting a new one", path, set_aside(path))
        starts = []
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"starts": [*starts, start]}, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return start
