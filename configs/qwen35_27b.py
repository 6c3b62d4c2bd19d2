"""Qwen3.5-27B (dense, untied head, large vision tower).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_27b.py:VARIANT``; default ``v5p-64``):
  v5p-64   v5p:4x4x4, fsdp 64

Launch:
  python -m experiments.train --config configs/qwen35_27b.py:v5p-64 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_27b.py:v5p-64   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_27b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_27b", "qwen35_27b"
VARIANTS = {
    "v5p-64": lambda: pod_recipe(NAME + ":v5p-64", PRESET, "v5p:4x4x4", 64, {"fsdp": 64}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-64")
