"""Training checkpoints with orbax (``orbax.checkpoint.experimental.v1``, the v1 API in orbax-checkpoint 0.12).

Layout: ``WORKDIR/checkpoints/<step>/`` with three checkpointables:

* ``params``  the model parameters (flat dict ``"a/b/c" -> array``; see ``flatten``),
* ``train``   the rest of the train state: optimizer state, step, skipped-step counters, RNG key data,
* ``meta``    JSON: step, the grain data-iterator state, the ModelConfig (``ModelConfig.to_dict``) and the name of the
              compact vocabulary file (``WORKDIR/compact_vocab.json``, see ``qwen35_jax.data.text_dataset``; ids the
              model sees are compact ids when it exists).

Saves are asynchronous (orbax writes into a temporary directory and renames it when complete, so a crash never
leaves a half-written ``<step>`` directory); the next save or ``wait()`` finalises the previous one, after which all
but the newest ``keep`` complete checkpoints are deleted. ``restore_latest`` tries the newest checkpoint first; a
checkpoint that cannot be read completely (truncated / corrupt files) is reported with a warning, renamed to
``<step>.unreadable-<n>`` (kept for inspection, never deleted) and the previous one is used. ``check_workdir`` runs
before it: a workdir whose newest checkpoint holds another model (a rerun with a changed ``config.model``) raises
``WorkdirConfigMismatchError`` naming the differing fields, and nothing is renamed or written.

  config, params = load_params("runs/demo")            # newest readable checkpoint of a workdir
  config, params = load_params("runs/demo", step=200)  # or a given step; also accepts .../checkpoints[/<step>]
  model = nnx.merge(nnx.graphdef(build_model(config, Runtime.local(), abstract=True)), params)
  model, meta = train.restore.restore_model("runs/demo", runtime)   # the same, read onto a mesh
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.text_dataset import VOCAB_FILE
from qwen35_jax.parallel.rules import state_shardings
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.workdir import (  # noqa: F401 - the experiment config helpers are re-exported here
    ABSENT,
    CHECKPOINT_DIR,
    checkpoint_steps,
    flat_items,
    load_experiment_config,
    save_experiment_config,
    set_aside,
)

MAX_SHOWN = 8  # differing fields named in a WorkdirConfigMismatchError
log = logging.getLogger(__name__)


def flatten(tree: Any) -> dict[str, Any]:
    """``{"a/b/0": leaf}`` for every leaf of ``tree`` (a plain dict of arrays is what orbax stores most simply)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        flat[key] = leaf
    return flat


def unflatten(template: Any, flat: dict[str, Any]) -> Any:
    """Inverse of ``flatten`` with ``template``'s tree structure."""
    keys = list(flatten(template))
    treedef = jax.tree.structure(template)
    return jax.tree.unflatten(treedef, [flat[k] for k in keys])


def _abstract(tree: Any) -> dict[str, Any]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))
            for k, v in flatten(tree).items()}


def checkpoint_root(path: str | os.PathLike) -> str:
    """``WORKDIR/checkpoints`` for a workdir, or ``path`` itself if it already is a checkpoints folder; absolute
    (orbax refuses relative checkpoint paths, and ``make demo`` passes ``--workdir runs/demo``)."""
    path = os.path.abspath(os.fspath(path))
    return path if os.path.basename(os.path.normpath(path)) == CHECKPOINT_DIR else os.path.join(path, CHECKPOINT_DIR)


class WorkdirConfigMismatchError(ValueError):
    """The workdir's newest checkpoint was trained with another model config: this run cannot resume it (and
    nothing in the workdir was changed)."""


def _show(value: Any) -> str:
    return "(absent)" if value == ABSENT else repr(value)


def model_config_differences(saved: Mapping[str, Any], current: ModelConfig) -> list[str]:
    """``"field: checkpoint X, this run Y"`` for each field where a checkpoint's ``meta["model_config"]`` and
    ``current`` differ (fields added to ModelConfig since the checkpoint count with their defaults)."""
    try:
        saved = ModelConfig.from_dict(saved).to_dict()
    except (TypeError, ValueError):  # unknown or invalid fields: compare as stored
        saved = dict(saved)
    old, new = (flat_items(json.loads(json.dumps(d))) for d in (saved, current.to_dict()))
    return [f"{k}: checkpoint {_show(old.get(k, ABSENT))}, this run {_show(new.get(k, ABSENT))}"
            for k in sorted(old.keys() | new.keys()) if old.get(k, ABSENT) != new.get(k, ABSENT)]


def check_workdir(workdir: str | os.PathLike, model_config: ModelConfig,
                  check_data: Callable[[Any], None] | None = None) -> None:
    """Raise ``WorkdirConfigMismatchError`` if the newest checkpoint of ``workdir`` whose metadata reads was trained
    with a model config other than ``model_config``, and let ``check_data`` (the data iterator's ``check_state``)
    refuse its data position (e.g. another dataset). Reads only the metadata (no arrays) and changes nothing;
    checkpoints whose metadata cannot be read are skipped (``Checkpoints.restore_latest`` then sets them aside)."""
    directory = checkpoint_root(workdir)
    for step in reversed(checkpoint_steps(directory)):
        try:
            meta = ocp.load_checkpointables(os.path.join(directory, str(step)), {"meta": None})["meta"]
            saved = dict(meta["model_config"])
        except Exception:  # noqa: BLE001 - unreadable: left to restore_latest's fallback
            continue
        differences = model_config_differences(saved, model_config)
        if differences:
            shown = differences[:MAX_SHOWN] + ([f"... {len(differences) - MAX_SHOWN} more"]
                                               if len(differences) > MAX_SHOWN else [])
            raise WorkdirConfigMismatchError(
                f"{os.path.join(directory, str(step))} was trained with another model config ({'; '.join(shown)}); "
                "use a new --workdir for this model, or rerun with the checkpoint's model settings to resume it")
        if check_data is not None and "data_iterator" in meta:
            check_data(meta["data_iterator"])
        return


class Checkpoints:
    """Async save / keep-last-K / resume-from-newest-readable for one training run."""

    def __init__(self, workdir: str | os.PathLike, keep: int, keep_steps: tuple[int, ...] = ()) -> None:
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep={keep} is invalid: keep at least 1 checkpoint")
        self.directory = checkpoint_root(workdir)
        self.keep = keep
        self.keep_steps = frozenset(keep_steps)  # never deleted (e.g. the branch points of a wsd run)
        self._pending: Any = None

    def steps(self) -> list[int]:
        """Steps of the complete (renamed-into-place) checkpoints, oldest first."""
        return checkpoint_steps(self.directory)

    def save(self, step: int, params: Any, train: Any, meta: dict[str, Any]) -> None:
        """Start saving (returns once the arrays are copied off the devices). A step that already has a complete
        checkpoint is left alone (never overwritten)."""
        self.wait()
        path = os.path.join(self.directory, str(step))
        if os.path.exists(path):
            log.warning("checkpoint %s already exists; not overwriting it", path)
            return
        os.makedirs(self.directory, exist_ok=True)
        self._pending = ocp.save_checkpointables_async(
            path, {"params": flatten(params), "train": flatten(train), "meta": meta})

    def wait(self) -> None:
        """Finish the pending save, then delete all but the newest ``keep`` complete checkpoints."""
        if self._pending is None:
            return
        self._pending.result()
        self._pending = None
        for step in [s for s in self.steps() if s not in self.keep_steps][:-self.keep]:
            shutil.rmtree(os.path.join(self.directory, str(step)))

    def restore_latest(self, params: Any, train: Any) -> tuple[Any, Any, dict[str, Any]] | None:
        """``(params, train, meta)`` from the newest readable checkpoint, shaped/sharded like the given templates;
        None when there is none."""
        for step in reversed(self.steps()):
            path = os.path.join(self.directory, str(step))
            try:
                return restore_checkpoint(path, params, train)
            except Exception as error:  # noqa: BLE001 - any read failure means "not usable"; say why and go on
                moved = set_aside(path)
                log.warning("checkpoint %s is incomplete or unreadable (%s: %s); moved it to %s and trying the "
                            "previous checkpoint", path, type(error).__name__, str(error)[:300], moved)
        return None


def restore_checkpoint(path: str | os.PathLike, params: Any, train: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(params, train, meta)`` of the step directory ``path``, shaped/sharded like the given templates."""
    loaded = ocp.load_checkpointables(path, {"params": _abstract(params), "train": _abstract(train), "meta": None})
    return unflatten(params, loaded["params"]), unflatten(train, loaded["train"]), loaded["meta"]


def _resolve(path: str | os.PathLike, step: int | None) -> str:
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "meta")) and step is None:
        return path  # a step directory
    root = checkpoint_root(path)
    steps = checkpoint_steps(root)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {root}; train first (python -m experiments.train ...)")
    if step is None:
        return os.path.join(root, str(steps[-1]))
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {root}; available steps: {steps}")
    return os.path.join(root, str(step))


def load_meta(path: str | os.PathLike, step: int | None = None) -> tuple[str, dict[str, Any]]:
    """``(checkpoint directory, meta dict)`` of the newest (or ``step``) checkpoint under ``path``."""
    directory = _resolve(path, step)
    return directory, ocp.load_checkpointables(directory, {"meta": None})["meta"]


def load_params(path: str | os.PathLike, step: int | None = None,
                runtime: Runtime | None = None) -> tuple[ModelConfig, nnx.State]:
    """The ModelConfig and parameters (an ``nnx.State`` of ``nnx.Param``) saved by ``experiments.train``; ``path`` is
    a workdir, its ``checkpoints`` folder or one step directory. Without ``runtime`` the arrays are host NumPy
    arrays; with one that has a mesh, each parameter is read straight into its shards of the logical rules (no
    device holds the whole model). The compact vocabulary, if the run used one, is ``vocab_path(meta)``
    (``WORKDIR/compact_vocab.json``)."""
    directory, meta = load_meta(path, step)
    config = ModelConfig.from_dict(meta["model_config"])
    from qwen35_jax.model.build import build_model  # local: keeps this module light for the data tools

    abstract = nnx.state(build_model(config, runtime or Runtime.local(), abstract=True), nnx.Param)
    if runtime is None or runtime.mesh is None:
        shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    else:
        shardings = state_shardings(abstract, runtime.mesh, runtime.rules)
    template = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), abstract, shardings)
    loaded = ocp.load_checkpointables(directory, {"params": {k: v for k, v in flatten(template).items()}})
    host = runtime is None
    return config, unflatten(abstract, {k: np.asarray(v) if host else v for k, v in loaded["params"].items()})


def vocab_path(checkpoint_dir: str | os.PathLike) -> str | None:
    """The compact vocabulary file of the run a checkpoint belongs to (None if the run used real Qwen ids)."""
    workdir = os.path.dirname(os.path.dirname(os.path.normpath(os.fspath(checkpoint_dir))))
    path = os.path.join(workdir, VOCAB_FILE)
    return path if os.path.exists(path) else None
