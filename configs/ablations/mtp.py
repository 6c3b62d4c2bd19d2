"""Ablation: a multi-token-prediction head trained next to the main head (Qwen3.5 ships one MTP layer).

  python -m experiments.sweep --config configs/ablations/mtp.py --workdir runs/ablations/mtp

Arms: no MTP head; one MTP layer predicting token t+2 with loss weight 0.3 (``train.mtp_loss_weight``; the
release recipe's weight is unpublished). Seeds 0, 1, 2 on the base of ``qwen35_jax.train.ablations`` (``:0p8b`` for
the 0.8B shape). The validation loss and bits per byte are the main head's in both arms.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.train.ablations import Sweep, ablation_config

ARMS = {
    "mtp0": {"model.mtp_num_hidden_layers": 0, "train.mtp_loss_weight": 0.0},
    "mtp1": {"model.mtp_num_hidden_layers": 1, "train.mtp_loss_weight": 0.3},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return ablation_config("mtp", arg)


def get_sweep(arg: str | None = None) -> Sweep:
    return Sweep(ARMS, axis_label="MTP depth")
