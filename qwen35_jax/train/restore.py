"""A trained model back from its workdir, on the mesh of its experiment config (``experiments.eval`` / ``generate``).

  runtime = runtime_from_config(config)                   # config.mesh on the local devices
  model, meta = restore_model(workdir, runtime, step=None)

The model is built by the same constructor as in training (``model.build``) with the runtime of ``config.mesh``, and
the checkpoint's parameters are placed with the logical rules' shardings, so evaluation and decoding run the same
sharded kernels (expert dispatch, Pallas gated delta rule) as the training step.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.model.build import build_model, validate_model
from qwen35_jax.parallel import multihost
from qwen35_jax.parallel.mesh import MeshConfig, build_mesh
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.checkpoint import load_meta, load_params


def runtime_from_config(config: ml_collections.ConfigDict | None, *, distributed: bool = True) -> Runtime:
    """The runtime of ``config.mesh`` on the devices of every process (``config.multihost`` starts
    ``jax.distributed`` first, as in training); no config or no mesh: all devices on fsdp. ``distributed=False``
    (``experiments.eval`` / ``generate`` without ``--multihost``) stays in this one process on its local devices,
    whatever ``config.multihost`` says, and says so in one line when that differs from the config."""
    section = config.get("multihost") if config is not None else None
    if distributed:
        multihost.initialize(section)
    elif section is not None and section.get("enabled", False):
        print(f"note: config.multihost.enabled is set (a multi-process run); running in this one process on its "
              f"{jax.local_device_count()} local device(s) instead (pass --multihost to start jax.distributed)",
              flush=True)
    mesh_config = MeshConfig.from_config(config.get("mesh") if config is not None else None)
    return Runtime.for_mesh(build_mesh(mesh_config), mesh_config)


def restore_model(workdir: str | os.PathLike, runtime: Runtime, step: int | None = None,
                  dtype: str | None = None) -> tuple[Qwen35ForCausalLM, dict[str, Any]]:
    """The model of checkpoint ``step`` (default: the newest readable one) of ``workdir`` and the checkpoint's
    metadata; ``dtype`` overrides the compute dtype."""
    directory, meta = load_meta(workdir, step)
    validate_model(ModelConfig.from_dict(meta["model_config"]), runtime)  # before reading any array
    model_config, params = load_params(directory, runtime=runtime)  # read straight into the mesh's shards
    if dtype is not None:
        model_config = model_config.replace(dtype=dtype)
    graphdef, _, rest = nnx.split(build_model(model_config, runtime, abstract=True), nnx.Param, ...)
    return nnx.merge(graphdef, params, rest), meta
