"""Decay branches: a run that starts from a stable-phase checkpoint of another run and cools down in its own workdir
(numerics §12.3).

  python -m experiments.train --config configs/scaling/wsd.py --workdir runs/wsd/main            # steps 400, wsd
  python -m experiments.train --config configs/scaling/wsd.py --workdir runs/wsd/branch100 \\
      --config.train.branch_from=runs/wsd/main/checkpoints/80 --config.train.steps=100

The branch restores the source checkpoint's parameters, optimizer state, step counters, RNG and data position, so
it continues the source run exactly up to that step and differs only by its own schedule afterwards: one wsd run
and a few short cooldowns give the loss at several token budgets. ``check_branch`` refuses, before anything is
loaded, a source whose model, dataset, optimizer or learning rates up to the branch step differ from this run's (the
branch would not be a continuation of it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from qwen35_jax.config import ModelConfig
from qwen35_jax.train.checkpoint import load_meta, model_config_differences
from qwen35_jax.train.config_schema import fill_defaults
from qwen35_jax.train.optimizer import make_schedule
from qwen35_jax.train.workdir import load_experiment_config

log = logging.getLogger(__name__)
# Fields of config.train that shape the optimizer state or the updates before the branch point.
SAME_OPTIMIZER = ("optimizer", "moment_dtype", "b1", "b2", "weight_decay", "decay_embeddings", "grad_clip_norm",
                  "muon_momentum", "muon_learning_rate", "muon_consistent_rms")


def _refuse(message: str) -> None:
    raise ValueError(f"config.train.branch_from: {message}")


def schedules_agree(source: ml_collections.ConfigDict, branch: ml_collections.ConfigDict, step: int) -> int | None:
    """The first step < ``step`` at which the two train sections' learning rates differ, or None."""
    steps = np.arange(step)
    a, b = (np.asarray(make_schedule(train)(steps)) for train in (source, branch))
    differ = np.flatnonzero(~np.isclose(a, b, rtol=1e-6, atol=0.0))
    return int(differ[0]) if differ.size else None


def check_branch(config: ml_collections.ConfigDict, model_config: ModelConfig,
                 check_data: Callable[[Any], None] | None) -> tuple[str, dict[str, Any]]:
    """``(checkpoint directory, its meta)`` of ``config.train.branch_from`` once it is shown to be a continuation
    this run can start from (see the module docstring); raises ValueError naming what differs."""
    path = config.train.branch_from
    if not os.path.isdir(path):
        _refuse(f"{path!r} is not a directory; give a checkpoint step directory such as runs/wsd/checkpoints/80")
    try:
        directory, meta = load_meta(path)
    except FileNotFoundError as error:
        _refuse(str(error))
    step = int(meta["step"])
    if step >= config.train.steps:
        _refuse(f"the checkpoint is at step {step}, not before this run's train.steps={config.train.steps}")
    differences = model_config_differences(meta["model_config"], model_config)
    if differences:
        _refuse(f"{directory} holds another model ({'; '.join(differences[:8])})")
    if check_data is not None and "data_iterator" in meta:
        check_data(meta["data_iterator"])
    source = load_experiment_config(directory)
    if source is None:
        log.warning("%s has no experiment_config.json: cannot check that its learning rates up to step %d match "
                    "this run's", directory, step)
        return directory, meta
    source_train = fill_defaults(source).train
    changed = [f for f in SAME_OPTIMIZER if source_train[f] != config.train[f]]
    if changed:
        _refuse(f"{directory} was trained with other optimizer settings: " + ", ".join(
            f"train.{f}={source_train[f]!r} there, {config.train[f]!r} here" for f in changed))
    first = schedules_agree(source_train, config.train, step)
    if first is not None:
        _refuse(f"the learning rates differ at step {first} ({float(make_schedule(source_train)(first)):.3g} in "
                f"{directory}, {float(make_schedule(config.train)(first)):.3g} here); branch from a step inside "
                "both runs' stable phase, with the same learning_rate and warmup_steps")
    return directory, meta
