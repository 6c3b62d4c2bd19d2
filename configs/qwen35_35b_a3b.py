"""Qwen3.5-35B-A3B (MoE: 256 experts, top-8, shared expert).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_35b_a3b.py:VARIANT``; default ``v5p-32``):
  v5p-32   v5p:4x4x2, fsdp 4 x expert 8
  v6e-64   v6e:8x8, fsdp 8 x expert 8
  v5p-64-262k   v5p:4x4x4, one 262,144-token sequence split over 64 chips (sequence 64; 4,096 tokens per chip)

Launch:
  python -m experiments.train --config configs/qwen35_35b_a3b.py:v5p-32 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_35b_a3b.py:v5p-32   # per-chip memory, on this host
  python -m experiments.train --config configs/qwen35_35b_a3b.py:v6e-64 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_35b_a3b.py:v6e-64   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_35b_a3b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import pod_recipe, select_variant

NAME, PRESET = "qwen35_35b_a3b", "qwen35_35b_a3b"
VARIANTS = {
    "v5p-32": lambda: pod_recipe(NAME + ":v5p-32", PRESET, "v5p:4x4x2", 32, {"fsdp": 4, "expert": 8}),
    "v6e-64": lambda: pod_recipe(NAME + ":v6e-64", PRESET, "v6e:8x8", 64, {"fsdp": 8, "expert": 8}),
    "v5p-64-262k": lambda: pod_recipe(NAME + ":v5p-64-262k", PRESET, "v5p:4x4x4", 64, {"sequence": 64},
                                      seq_len=262_144),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-32")
