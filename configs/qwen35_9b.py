"""Qwen3.5-9B (dense, untied head, large vision tower).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_9b.py:VARIANT``; default ``v5p-16``):
  v5p-16   v5p:2x2x4, fsdp 16

Launch:
  python -m experiments.train --config configs/qwen35_9b.py:v5p-16 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_9b.py:v5p-16   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_9b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_9b", "qwen35_9b"
VARIANTS = {
    "v5p-16": lambda: pod_recipe(NAME + ":v5p-16", PRESET, "v5p:2x2x4", 16, {"fsdp": 16}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-16")
