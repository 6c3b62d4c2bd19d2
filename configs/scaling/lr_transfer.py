"""Scaling study: does the best learning rate transfer across widths? SP against µP (model.parametrization).

  python -m experiments.sweep --config configs/scaling/lr_transfer.py --workdir runs/scaling/lr_transfer
  python -m experiments.lr_transfer --workdir runs/scaling/lr_transfer      # table + plot of the best rates

Arms ``<sp|mup>_w<width>_lr<rate>``: widths 64, 128, 256, 512 (4 layers: 3 GDN + 1 gated attention, heads of 16,
dense SwiGLU) x 6 learning rates a factor 2 apart x SP / µP (base width 64), seeds 0 and 1, 150 steps of 1,024
tokens (cosine, 15 warmup steps); see qwen35_jax.scaling.studies. A sweep resumes unfinished points, so it may be
run in parts.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.scaling.studies import LR_STEPS, base_config, lr_transfer_sweep
from qwen35_jax.train.ablations import Sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return base_config("scaling/lr_transfer", steps=LR_STEPS, warmup_steps=LR_STEPS // 10)


def get_sweep(arg: str | None = None) -> Sweep:
    del arg
    return lr_transfer_sweep()
