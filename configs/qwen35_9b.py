"""Qwen3.5-9B (dense, untied head, large vision tower).

Variants (``get_config(arg)``, pick one with ``configs/qwen35_9b.py:VARIANT``; default ``v5p-16``):
  v5p-16    v5p:2x2x4, fsdp 16
  gpu-2x8   2 nodes x 8 GPUs (SLURM or any launcher starting one process per node), fsdp over the 16 GPUs, bf16,
            16 x 4,096 tokens a step, a prepared dataset (--config.data.corpora=prepared:/shared/...)

Launch:
  python -m experiments.train --config configs/qwen35_9b.py:v5p-16 --workdir $RUN_DIR   # on the pod
  WORKDIR=/shared/runs/9b sbatch tools/slurm_train.sbatch configs/qwen35_9b.py:gpu-2x8 \
      --config.data.corpora=prepared:/shared/prepared/web                                  # a SLURM GPU cluster
  python -m tools.aot_compile --config configs/qwen35_9b.py:v5p-16   # per-chip memory, on this host
  python -m tools.param_count --config configs/qwen35_9b.py
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.recipes import gpu_recipe, pod_recipe, select_variant

NAME, PRESET = "qwen35_9b", "qwen35_9b"
VARIANTS = {
    "v5p-16": lambda: pod_recipe(NAME + ":v5p-16", PRESET, "v5p:2x2x4", 16, {"fsdp": 16}),
    "gpu-2x8": lambda: gpu_recipe(NAME + ":gpu-2x8", PRESET, batch_size=16, nodes=2),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return select_variant(f"configs/{NAME}.py", VARIANTS, arg, "v5p-16")
