"""What a training workdir remembers about its run: the experiment config (``experiment_config.json``).

  save_experiment_config(workdir, config)     # at each (re)start of experiments.train
  config = load_experiment_config(workdir)    # ml_collections.ConfigDict, or None for an older workdir

``WORKDIR/experiment_config.json`` describes the run whose checkpoints are in ``WORKDIR/checkpoints``: it is written
when absent or when the workdir has no checkpoint yet (a fresh start; a different old file is then replaced with a
warning). A resumed run whose config differs (e.g. more ``train.steps`` or another ``mesh``) keeps the first file,
warns naming the differing keys and writes nothing; a different model never gets this far (``checkpoint.check_workdir``
stops the run first).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "experiment_config.json"  # not config.json: that name marks a transformers directory
ABSENT = "<absent>"
log = logging.getLogger(__name__)


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints (``<step>/`` directories) in a checkpoints folder, oldest first."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory)
                  if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def set_aside(path: str) -> str:
    """Rename an unreadable ``path`` to ``<path>.unreadable-<n>`` (kept for inspection, never deleted); the new name."""
    n = 0
    while os.path.exists(f"{path}.unreadable-{n}"):
        n += 1
    os.rename(path, f"{path}.unreadable-{n}")
    return f"{path}.unreadable-{n}"


def flat_items(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of nested mappings (JSON-like values)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat_items(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))  # tuples become lists, as in the file


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            values = json.load(f)
        return values if isinstance(values, dict) else None
    except (OSError, ValueError):
        return None


def save_experiment_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> bool:
    """Write ``WORKDIR/experiment_config.json`` if absent, or if the workdir has no checkpoint yet; otherwise keep
    the existing file (see the module docstring). Returns whether it was written. Only process 0 writes."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    values = _as_json(config)
    if jax.process_index() != 0:
        return False
    if os.path.exists(path):
        old = _read(path)
        if old == values:
            return False
        if old is None:
            log.warning("%s is unreadable; writing this run's config over it", path)
        else:
            new, before = flat_items(values), flat_items(old)
            changed = sorted(k for k in new.keys() | before.keys() if new.get(k, ABSENT) != before.get(k, ABSENT))
            if checkpoint_steps(os.path.join(os.fspath(workdir), CHECKPOINT_DIR)):
                log.warning("this run's config differs from %s in %s; keeping the file of the run that wrote the "
                            "checkpoints", path, ", ".join(changed))
                return False
            log.warning("%s (of an earlier start without checkpoints) differs in %s; replacing it", path,
                        ", ".join(changed))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return True


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_experiment_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
    """The experiment config saved in ``WORKDIR/experiment_config.json`` (JSON lists back as tuples, as config files
    write them); None when there is none (runs from before it was saved). ``workdir`` may also be its checkpoints
    folder or one step directory of it."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.basename(path).isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINT_DIR:
        path = os.path.dirname(path)
    if os.path.basename(path) == CHECKPOINT_DIR:
        path = os.path.dirname(path)
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        return None
    with open(file) as f:
        return ml_collections.ConfigDict(_tuples(json.load(f)))
