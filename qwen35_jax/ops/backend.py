"""The backend that traced code targets: the default backend, or the one named by ``compile_target``.

Implementation choices that depend on the hardware (the gated delta rule's ``impl="auto"``, matmul shapes in
``model.params.dense``) ask ``target_backend()``, so AOT-compiling for TPU on a CPU host (``tools.aot_compile``)
traces what a TPU would run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

_target_backend: str | None = None  # set by ``compile_target``


@contextlib.contextmanager
def compile_target(backend: str) -> Iterator[None]:
    """Trace as if the default backend were ``backend`` (e.g. ``"tpu"`` while AOT-compiling on a CPU host)."""
    global _target_backend
    previous, _target_backend = _target_backend, backend
    try:
        yield
    finally:
        _target_backend = previous


def target_backend() -> str:
    """``jax.default_backend()``, unless a ``compile_target`` context names another backend."""
    return _target_backend or jax.default_backend()
