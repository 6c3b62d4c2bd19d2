"""Ablation: the sigmoid output gate of the full-attention layers (Qwen3.5: on).

  python -m experiments.sweep --config configs/ablations/output_gate.py --workdir runs/ablations/output_gate

Arms (``model.attn_output_gate``): gated, ungated; seeds 0, 1, 2 on the 3 GDN : 1 attention base of
``qwen35_jax.train.ablations`` (``:0p8b`` for the 0.8B shape on a TPU / GPU). What it probes: Gated Attention
(arXiv 2505.06708) reports a lower loss and better stability with the gate.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.ablations import Sweep, ablation_config

ARMS = {
    "gated": {"model.attn_output_gate": True},
    "ungated": {"model.attn_output_gate": False},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return ablation_config("output_gate", arg)


def get_sweep(arg: str | None = None) -> Sweep:
    return Sweep(ARMS, axis_label="attention output gate")
