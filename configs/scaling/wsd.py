"""Scaling study: a warmup-stable-decay run with decay branches against cosine runs of the same lengths.

  python -m experiments.sweep --config configs/scaling/wsd.py --workdir runs/scaling/wsd

Arms: ``cosine_200``, ``cosine_400``, ``cosine_800`` (steps of 1,024 tokens); ``wsd_800`` (stable at the peak,
then a linear cooldown over the last 20 %), keeping its checkpoints at steps 160 and 320; ``wsd_branch_200`` and
``wsd_branch_400``: 20 % cooldowns started from those checkpoints (``train.branch_from``), so one wsd run gives the
loss at all three lengths; ``muon_cosine_800``: the 800-step cosine run with Muon for the hidden matrices (peak 0.02)
and AdamW for the rest. The width-64, 4-layer rung of qwen35_jax.scaling.studies, 20 warmup steps everywhere.
The points run in the listed order (a branch needs its source's checkpoint).
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.scaling.studies import base_config, wsd_sweep
from qwen35_jax.train.ablations import Sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return base_config("scaling/wsd", warmup_steps=20, min_lr_ratio=0.0)


def get_sweep(arg: str | None = None) -> Sweep:
    del arg
    return wsd_sweep()
