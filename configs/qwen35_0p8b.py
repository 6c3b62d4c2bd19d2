"""Qwen3.5-0.8B (dense, tied head, small vision tower).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_0p8b.py:VARIANT``; default ``cpu``):
  cpu      the real architecture and 248,320-id vocabulary on this CPU (2 x 128 tokens a step, fp32
           weights, bf16 moments: ~11 GB); 3 steps take a few minutes on 2 cores
  gpu      one GPU (or FSDP over the local GPUs): bf16, 1 x 4,096 tokens a step (tools/gpu_check_gdn.sh times it
           with the chunked and the Triton gated delta rule)
  v5p-4    v5p:2x2x1, fsdp 4

Launch:
  python -m experiments.train --config configs/qwen35_0p8b.py:cpu --workdir runs/qwen35_0p8b_cpu --config.train.steps=3
  python -m experiments.generate --workdir runs/qwen35_0p8b_cpu --prompt "To be, or not to be"
  python -m experiments.train --config configs/qwen35_0p8b.py:v5p-4 --workdir $RUN_DIR   # on the pod
  python -m tools.aot_compile --config configs/qwen35_0p8b.py:v5p-4   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_0p8b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import cpu_recipe, gpu_recipe, pod_recipe, select_variant

NAME, PRESET = "qwen35_0p8b", "qwen35_0p8b"
VARIANTS = {
    "cpu": lambda: cpu_recipe(NAME + ":cpu", PRESET),
    "gpu": lambda: gpu_recipe(NAME + ":gpu", PRESET),
    "v5p-4": lambda: pod_recipe(NAME + ":v5p-4", PRESET, "v5p:2x2x1", 4, {"fsdp": 4}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "cpu")
