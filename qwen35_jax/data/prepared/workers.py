"""Light data workers: grain's ``mp_prefetch`` workers (``data.workers`` > 0) without jax.

grain starts each worker with multiprocessing's *spawn*: a fresh interpreter re-imports the program's main module
under the name ``__mp_main__``, then unpickles grain's worker function and our stream (numpy and file reads only).
Nothing a worker runs needs jax, but ``import grain`` imports it for optional profiler hooks (inside ``try: ...
except ImportError``), and a main module such as ``experiments.train`` imports the whole model stack: measured on
the input pipeline alone, 188 MiB of resident memory per worker with jax, 54 MiB without (``tools/bench_data.py``).

A program whose stream may use workers starts its main module with::

    from qwen35_jax.data.prepared.workers import enter_data_worker

    if not enter_data_worker(__name__):
        ...  # the program's own (heavy) imports

In a spawned child, ``enter_data_worker`` makes ``import jax`` fail at once (grain then runs without its profiler
hooks, which only serve ``jax.profiler`` traces of the workers) and tells the module to skip its imports. This module
imports only the standard library.
"""

from __future__ import annotations

import logging
import sys

SPAWNED_MAIN = "__mp_main__"  # multiprocessing's name for the parent's main module re-imported in a spawned child
_GRAIN_PROFILER_WARNING = "Failed to load jax profiler"


def _not_the_profiler_warning(record: logging.LogRecord) -> bool:
    return _GRAIN_PROFILER_WARNING not in record.getMessage()


def enter_data_worker(module_name: str) -> bool:
    """True (and jax kept out of this process) when ``module_name`` is a main module re-imported by a spawned
    child; False in the program itself. See the module docstring."""
    if module_name != SPAWNED_MAIN:
        return False
    sys.modules.setdefault("jax", None)  # `import jax` now raises ImportError instead of loading ~125 MiB
    logging.getLogger("absl").addFilter(_not_the_profiler_warning)  # grain's expected one-line warning
    return True
