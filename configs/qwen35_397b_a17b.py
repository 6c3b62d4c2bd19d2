"""Qwen3.5-397B-A17B (MoE: 512 experts, top-10, shared expert).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_397b_a17b.py:VARIANT``; default ``v5p-64``):
  v5p-64   v5p:4x4x4, expert 64 (every chip owns 8 experts)
  v5p-256  v5p:8x8x4, fsdp 32 x expert 8
  v5p-256-262k  v5p:8x8x4, 4 sequences of 262,144 tokens, each split over 64 chips (sequence 64 x expert 4)

Launch:
  python -m experiments.train --config configs/qwen35_397b_a17b.py:v5p-64 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_397b_a17b.py:v5p-64   # per-chip memory, on this host
  python -m experiments.train --config configs/qwen35_397b_a17b.py:v5p-256 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_397b_a17b.py:v5p-256   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_397b_a17b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_397b_a17b", "qwen35_397b_a17b"
VARIANTS = {
    "v5p-64": lambda: pod_recipe(NAME + ":v5p-64", PRESET, "v5p:4x4x4", 64, {"expert": 64}),
    "v5p-256": lambda: pod_recipe(NAME + ":v5p-256", PRESET, "v5p:8x8x4", 256, {"fsdp": 32, "expert": 8}),
    "v5p-256-262k": lambda: pod_recipe(NAME + ":v5p-256-262k", PRESET, "v5p:8x8x4", 256,
                                       {"sequence": 64, "expert": 4}, seq_len=262_144),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-64")
