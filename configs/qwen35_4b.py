"""Qwen3.5-4B (dense, tied head, medium vision tower).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_4b.py:VARIANT``; default ``v5p-8``):
  v5p-8    v5p:2x2x2, fsdp 8

Launch:
  python -m experiments.train --config configs/qwen35_4b.py:v5p-8 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_4b.py:v5p-8   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_4b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_4b", "qwen35_4b"
VARIANTS = {
    "v5p-8": lambda: pod_recipe(NAME + ":v5p-8", PRESET, "v5p:2x2x2", 8, {"fsdp": 8}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-8")
