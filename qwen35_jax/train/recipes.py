"""Experiment configs for the released sizes: one preset, one hardware recipe.

``configs/qwen35_*.py`` call these to build complete experiment configs (model, data, train, checkpoint, mesh,
hardware) accepted by ``experiments.train`` / ``eval`` / ``generate`` and ``tools.aot_compile``:

* ``cpu_recipe``: the real architecture and the real 248,320-id vocabulary on the local CPU devices, short
  sequences, fp32 master weights with bf16 AdamW moments (so the 0.8B fits a 24 GiB machine), LM head in chunks;
* ``gpu_recipe``: the local GPU(s), or the GPUs of several nodes (one process per node), bf16 weights and moments,
  4,096-token sequences;
* ``pod_recipe``: a TPU topology (``hardware.topology``) with its mesh, bf16 weights and moments with fp32
  gradients, full per-layer remat, the Pallas TPU gated delta rule, ragged expert dispatch, LM head in chunks,
  ``batch_per_chip`` sequences of ``seq_len`` tokens per chip; ``multihost.enabled`` (every host of the slice runs
  the same command and ``jax.distributed`` finds the others); a prepared dataset (``POD_CORPORA``) read by 2 grain
  workers per host.

``select_variant`` implements the big_vision-style ``get_config(arg)``: ``configs/x.py:variant``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import ml_collections

from qwen35_jax.parallel.multihost import config_section as multihost_section
from qwen35_jax.presets import preset
from qwen35_jax.train.config_schema import DEFAULTS

# The pod variants' training data: a dataset prepared once by tools.prepare_data where every host can read it (README
# "Data at scale"); replace it with yours: --config.data.corpora=prepared:gs://<bucket>/<dataset>[,prepared:...].
POD_CORPORA = "prepared:gs://your-bucket/qwen35/pretrain"


def experiment(name: str, preset_name: str, *, model: Mapping[str, Any] = (), data: Mapping[str, Any] = (),
               train: Mapping[str, Any] = (), checkpoint: Mapping[str, Any] = (), mesh: Mapping[str, Any] = (),
               topology: str = "", multihost: bool = False) -> ml_collections.ConfigDict:
    """A complete experiment config: the preset's model with ``model`` overrides, every other section from the
    schema's defaults with the given overrides."""
    config = ml_collections.ConfigDict()
    config.name = name
    config.seed = 0
    config.model = ml_collections.ConfigDict({**preset(preset_name), **dict(model)})
    config.data = ml_collections.ConfigDict({**DEFAULTS["data"], "compact_vocab": False, **dict(data)})
    config.train = ml_collections.ConfigDict({**DEFAULTS["train"], **dict(train)})
    config.checkpoint = ml_collections.ConfigDict({**DEFAULTS["checkpoint"], **dict(checkpoint)})
    config.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "sequence": 1, "expert": 1, "tensor": 1,
                                             **dict(mesh)})
    config.hardware = ml_collections.ConfigDict({"topology": topology})
    # jax.distributed with the cluster's auto-detection (a TPU slice's hosts find each other); every field can be set
    # on the command line (parallel/multihost)
    config.multihost = multihost_section()
    config.multihost.enabled = multihost
    return config


def cpu_recipe(name: str, preset_name: str, *, seq_len: int = 128, batch_size: int = 2,
               loss_chunk: int = 64) -> ml_collections.ConfigDict:
    """The real model on this machine's CPU devices (see the module docstring)."""
    return experiment(
        name, preset_name,
        model={"dtype": "float32", "param_dtype": "float32", "remat_policy": "full", "gdn_impl": "chunked"},
        data={"corpora": "shakespeare", "seq_len": seq_len, "batch_size": batch_size},
        train={"steps": 100, "learning_rate": 3e-4, "warmup_steps": 2, "moment_dtype": "bfloat16",
               "loss_chunk": loss_chunk, "log_every": 1, "eval_batches": 1},
        checkpoint={"every": 50, "keep": 2})


def gpu_recipe(name: str, preset_name: str, *, seq_len: int = 4096, batch_size: int = 1, loss_chunk: int = 256,
               nodes: int = 1) -> ml_collections.ConfigDict:
    """Training on GPUs, FSDP over all of them: bf16 weights and moments with fp32 gradients, full per-layer remat,
    ``batch_size`` sequences of ``seq_len`` tokens a step, the gated delta rule core ``auto`` picks for the GPU
    (``--config.model.gdn_impl`` overrides it). One node (``nodes=1``): the local GPUs and the bundled Shakespeare
    corpus. Several nodes: one process per node started by the cluster (``multihost.enabled``: jax.distributed finds
    the others, e.g. from SLURM's environment; tools/slurm_train.sbatch), FSDP across every GPU of every node, and a
    prepared dataset every node reads (``POD_CORPORA``)."""
    return experiment(
        name, preset_name, multihost=nodes > 1,
        model={"dtype": "bfloat16", "param_dtype": "bfloat16", "remat_policy": "full", "gdn_impl": "auto",
               "scan_unroll": 1},
        data={"corpora": POD_CORPORA if nodes > 1 else "shakespeare", "seq_len": seq_len, "batch_size": batch_size,
              "workers": 2 if nodes > 1 else 0},
        train={"steps": 1000, "learning_rate": 3e-4, "warmup_steps": 50, "moment_dtype": "bfloat16",
               "loss_chunk": loss_chunk, "log_every": 1, "eval_every": 500},
        checkpoint={"every": 500, "keep": 2})


def pod_recipe(name: str, preset_name: str, topology: str, chips: int, mesh: Mapping[str, int], *,
               seq_len: int = 4096, batch_per_chip: int = 1, loss_chunk: int = 256, expert_dispatch: str = "ragged",
               capacity_factor: float = 1.25) -> ml_collections.ConfigDict:
    """Pre-training on a TPU topology of ``chips`` chips (see the module docstring). Long context: ``seq_len`` above
    4,096 keeps 4,096 tokens per chip (``chips · 4096 / seq_len`` sequences) and expects ``mesh["sequence"]`` to
    split each sequence (context parallelism, numerics §11)."""
    batch_size = batch_per_chip * chips if seq_len <= 4096 else chips * 4096 // seq_len
    # Each LM-head chunk covers loss_chunk positions per chip: with the sequence split seq_len / 4096 ways the chunk
    # grows by that factor, so the loop (and the head weight's gather in it) runs as often as at 4,096 tokens.
    loss_chunk = loss_chunk * max(1, seq_len // 4096)
    return experiment(
        name, preset_name, topology=topology, multihost=True,
        model={"dtype": "bfloat16", "param_dtype": "bfloat16", "remat_policy": "full", "gdn_impl": "pallas_tpu",
               "scan_unroll": 1},
        data={"corpora": POD_CORPORA, "seq_len": seq_len, "batch_size": batch_size, "workers": 2},
        train={"steps": 10_000, "learning_rate": 3e-4, "warmup_steps": 500, "moment_dtype": "bfloat16",
               "loss_chunk": loss_chunk, "log_every": 10, "eval_every": 1000},
        checkpoint={"every": 500, "keep": 3},
        mesh={**dict(mesh), "expert_dispatch": expert_dispatch, "capacity_factor": capacity_factor})


def select_variant(path: str, variants: Mapping[str, Callable[[], ml_collections.ConfigDict]], arg: str | None,
                   default: str) -> ml_collections.ConfigDict:
    """``variants[arg or default]()``; an unknown name raises ValueError listing the valid ones."""
    name = arg or default
    if name not in variants:
        raise ValueError(f"{path}:{name} is unknown; choose one of {sorted(variants)} (e.g. {path}:{default})")
    return variants[name]()


def load_config_module(path: str) -> ModuleType:
    """The Python module of a config file (``configs/tiny.py``), executed fresh."""
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    if module_spec is None or not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist (expected e.g. configs/qwen35_0p8b.py:cpu)")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file named like on the command line: ``configs/qwen35_0p8b.py:cpu``."""
    path, _, arg = spec.partition(":")
    module = load_config_module(path)
    return module.get_config(arg) if arg else module.get_config()
