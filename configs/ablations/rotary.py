"""Ablation: the fraction of each full-attention head rotated by RoPE (Qwen3.5: 0.25).

  python -m experiments.sweep --config configs/ablations/rotary.py --workdir runs/ablations/rotary

Arms (``model.partial_rotary_factor``): 0 (NoPE: position comes only from the causal mask and the GDN layers),
0.25, 1.0; seeds 0, 1, 2 on the base of ``qwen35_jax.train.ablations`` (``:0p8b`` for the 0.8B shape). What it
probes: Kimi Linear's full-attention layers use NoPE next to its linear layers; Qwen3.5 rotates a quarter.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.ablations import Sweep, ablation_config

ARMS = {
    "nope": {"model.partial_rotary_factor": 0.0},
    "rotary_0.25": {"model.partial_rotary_factor": 0.25},
    "rotary_1.0": {"model.partial_rotary_factor": 1.0},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return ablation_config("rotary", arg)


def get_sweep(arg: str | None = None) -> Sweep:
    return Sweep(ARMS, axis_label="rotary fraction of the head dimension")
