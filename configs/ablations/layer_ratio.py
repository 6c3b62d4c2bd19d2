"""Ablation: how many Gated DeltaNet layers per full-attention layer (Qwen3.5: 3 : 1).

  python -m experiments.sweep --config configs/ablations/layer_ratio.py --workdir runs/ablations/layer_ratio
  python -m experiments.sweep --config configs/ablations/layer_ratio.py:0p8b --workdir $RUN_DIR   # TPU / GPU

Arms (``model.full_attention_interval``: every N-th layer is full attention, 0 = none): all attention, 1 : 1,
3 : 1, 7 : 1 and all GDN, each with seeds 0, 1, 2; base and sizes in ``qwen35_jax.train.ablations``. The 8 layers
of the CPU size (24 of the 0.8B) divide by every interval. What it probes: a systematic study of hybrid linear
attention (arXiv 2507.06457) finds LM loss nearly flat across ratios while recall improves with more full attention.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.ablations import Sweep, ablation_config

ARMS = {
    "all_attention": {"model.full_attention_interval": 1},
    "gdn1_attn1": {"model.full_attention_interval": 2},
    "gdn3_attn1": {"model.full_attention_interval": 4},
    "gdn7_attn1": {"model.full_attention_interval": 8},
    "all_gdn": {"model.full_attention_interval": 0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return ablation_config("layer_ratio", arg)


def get_sweep(arg: str | None = None) -> Sweep:
    return Sweep(ARMS, axis_label="GDN : full-attention layers")
