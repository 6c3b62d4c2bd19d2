"""Multi-process runs: ``jax.distributed`` start-up from config / environment, per-process batches, logging once.

``config.multihost`` (all optional)::

    enabled               False: single process (nothing to do). True: call jax.distributed.initialize
    coordinator_address   "host:port" of process 0; None: $JAX_COORDINATOR_ADDRESS or the cluster's auto-detection
    num_processes         None: $JAX_NUM_PROCESSES or auto-detection (TPU pods, SLURM, ...)
    process_id            None: $JAX_PROCESS_ID or auto-detection
    cpu_collectives       e.g. "gloo" for multi-process CPU runs (tests); None leaves JAX's default
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

FIELDS = ("enabled", "coordinator_address", "num_processes", "process_id", "cpu_collectives")
_ENV = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}

log = logging.getLogger(__name__)


def config_section() -> ml_collections.ConfigDict:
    """The whole ``multihost`` section with its defaults, for a config file to declare, so that every field can be
    set on the command line (``--config.multihost.enabled=True --config.multihost.process_id=1 ...``)."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict({"enabled": False, "coordinator_address": placeholder(str),
                                      "num_processes": placeholder(int), "process_id": placeholder(int),
                                      "cpu_collectives": placeholder(str)})


def initialize(section: Mapping[str, Any] | None) -> None:
    """Start ``jax.distributed`` as ``config.multihost`` says; must run before anything touches a device."""
    values = dict(section.items()) if section is not None else {}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"config.multihost has unknown field(s) {unknown}; valid fields: {FIELDS}")
    if not values.get("enabled", False) or jax.distributed.is_initialized():
        return
    kwargs = {}
    for name in ("num_processes", "process_id"):
        value = values.get(name)
        if value is None and os.environ.get(_ENV[name]):
            value = int(os.environ[_ENV[name]])
        if value is not None:
            kwargs[name] = int(value)
    if "num_processes" in kwargs and not 0 <= kwargs.get("process_id", 0) < kwargs["num_processes"]:
        raise ValueError(f"config.multihost.process_id={kwargs.get('process_id')} is invalid: must be in "
                         f"[0, num_processes={kwargs['num_processes']})")
    if values.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", values["cpu_collectives"])
        # Processes on CPUs compile without JAX's persistent cache: runs of two processes x 4 devices that loaded
        # executables from a cache shared with earlier runs hung in their first collective or wrote each other's
        # checkpoint files (seen here, intermittently); with the cache off they were correct every time.
        jax.config.update("jax_enable_compilation_cache", False)
    jax.distributed.initialize(values.get("coordinator_address"), **kwargs)


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The rows (leading-axis slice) of a global batch that this process's devices hold under ``sharding``."""
    rows = set()
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        start, stop, _ = index[0].indices(global_shape[0])
        rows.update(range(start, stop))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo:
        raise ValueError(f"this process's devices hold non-contiguous batch rows under {sharding.spec}; order the "
                         "mesh so each process owns a contiguous block of the batch axes")
    return slice(lo, hi)


def global_batch(local: np.ndarray, sharding: NamedSharding, global_shape: tuple[int, ...]) -> jax.Array:
    """Assemble one global array from every process's rows (``local`` = ``batch[process_rows(...)]``)."""
    expected = process_rows(sharding, global_shape)
    if local.shape[0] != expected.stop - expected.start:
        raise ValueError(f"process {jax.process_index()} passed {local.shape[0]} rows but owns rows "
                         f"[{expected.start}, {expected.stop}) of the global batch {global_shape}")
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def log_once(message: str, *args: Any) -> None:
    """Log from process 0 only (every process runs the same program; one copy of each line is enough)."""
    if jax.process_index() == 0:
        log.info(message, *args)
