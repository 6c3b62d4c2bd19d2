"""Scaling study: does the best learning rate transfer across widths? SP against µP (model.parametrization).

  python -m experiments.sweep --config configs/scaling/lr_transfer.py --workdir runs/scaling/lr_transfer
  python -m experiments.lr_transfer --workdir runs/scaling/lr_transfer    # table + plot of the best rates

Arms ``<sp|mup>_w<width>_lr<rate>``: widths 64, 128, 256, 512 (4 layers: 3 GDN + 1 gated attention, heads of 16,
dense SwiGLU) x 5 learning rates a factor 2 apart (1e-3 … 1.6e-2) x SP / µP (base width 64), seeds 0 and 1: 80
points of 100 steps of 8 x 64 tokens (cosine, 10 warmup steps); see qwen35_jax.scaling.studies. The 20 width-512
points dominate (~5e12 FLOPs each); a sweep resumes unfinished points, so it may be run in parts.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.scaling.studies import LR_SEQ_LEN, LR_STEPS, base_config, lr_transfer_sweep
from qwen35_jax.train.ablations import Sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return base_config("scaling/lr_transfer", seq_len=LR_SEQ_LEN, steps=LR_STEPS, warmup_steps=LR_STEPS // 10)


def get_sweep(arg: str | None = None) -> Sweep:
    del arg
    return lr_transfer_sweep()
