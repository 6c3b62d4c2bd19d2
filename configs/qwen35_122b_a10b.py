"""Qwen3.5-122B-A10B (MoE: 256 experts, top-8, shared expert).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_122b_a10b.py:VARIANT``; default ``v5p-128``):
  v5p-128  v5p:4x4x8, fsdp 16 x expert 8

Launch:
  python -m experiments.train --config configs/qwen35_122b_a10b.py:v5p-128 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_122b_a10b.py:v5p-128   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_122b_a10b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_122b_a10b", "qwen35_122b_a10b"
VARIANTS = {
    "v5p-128": lambda: pod_recipe(NAME + ":v5p-128", PRESET, "v5p:4x4x8", 128, {"fsdp": 16, "expert": 8}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-128")
