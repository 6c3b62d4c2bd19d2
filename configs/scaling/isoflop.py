"""Scaling study: IsoFLOP profiles of the dense hybrid ladder, the compute-optimal frontier and L(N, D).

  python -m experiments.isoflop --workdir runs/scaling/isoflop          # sweep, fits, plots, extrapolation point
  python -m experiments.sweep --config configs/scaling/isoflop.py --workdir runs/scaling/isoflop   # the sweep only

Arms ``C<budget>_w<width>_l<layers>``: budgets 1e11, 3e11 and 1e12 training FLOPs x 5 rungs of
qwen35_jax.scaling.ladder (55 K to 0.97 M non-embedding parameters), each trained for D = C / (FLOPs per token)
tokens (cosine, 10 % warmup). experiments.isoflop then fits a parabola in log N per budget, N_opt(C) and D_opt(C),
and L(N, D) = E + A / N^alpha + B / D^beta with bootstrap intervals, and trains the rung nearest N_opt at 4x the
largest budget to compare the law's prediction with the measured loss.
"""

from __future__ import annotations

import ml_collections

from qwen35_jax.scaling.studies import base_config, isoflop_sweep
from qwen35_jax.train.ablations import Sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return base_config("scaling/isoflop")


def get_sweep(arg: str | None = None) -> Sweep:
    del arg
    return isoflop_sweep()
