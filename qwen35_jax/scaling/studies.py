"""The scaling studies' experiment configs and sweeps (``configs/scaling/*.py``), sized for 2 CPU cores.

* ``lr_transfer``: learning rates a factor 2 apart x widths 64 … 512 of the hybrid, SP and µP, 2 seeds: does the
  best learning rate move with width?
* ``wsd``: cosine runs at 3 lengths against one wsd run and decay branches from its stable phase at the same lengths
  (20 % cooldowns);
* ``isoflop``: for each compute budget, ladder rungs trained on D = C / (FLOPs per token) tokens
  (``experiments.isoflop`` runs it, fits N_opt(C) and L(N, D), then trains the extrapolation point).

Every run: Shakespeare through the prepared-data reader (``qwen35_jax.data.prepared``; the corpus is prepared into each
workdir once), a compact vocabulary of the 2,048 most frequent ids, 128 tokens x 8 rows per step, fp32, no MTP.
Model shapes come from ``qwen35_jax.scaling.ladder``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from qwen35_jax.config import ModelConfig
from qwen35_jax.scaling.ladder import model_shape, rung_config, steps_for_budget
from qwen35_jax.train.ablations import Sweep
from qwen35_jax.train.config_schema import validate_config
from qwen35_jax.train.recipes import experiment

VOCAB = 2048  # compact vocabulary size (data.compact_vocab_max_size): the LM head's width in FLOPs
SEQ_LEN, BATCH = 128, 8
BASE_WIDTH = 64  # µP's base (model.mup_base_width) and the smallest width of the learning-rate study


def base_config(name: str, width: int = 64, layers: int = 4, ffn: str = "dense", *, seq_len: int = SEQ_LEN,
                **train: Any) -> ml_collections.ConfigDict:
    """One ladder rung's experiment config (see the module docstring); ``train`` overrides ``config.train``."""
    return experiment(
        name, "qwen35_0p8b",
        model={**model_shape(width, layers, ffn), "vocab_size": 248320, "tie_word_embeddings": False, "vision": None,
               "mtp_num_hidden_layers": 0, "dtype": "float32", "param_dtype": "float32", "gdn_impl": "chunked",
               "parametrization": "sp", "mup_base_width": BASE_WIDTH},
        data={"corpora": "shakespeare", "seq_len": seq_len, "batch_size": BATCH, "compact_vocab": True,
              "compact_vocab_max_size": VOCAB},
        train={"steps": 400, "learning_rate": 3e-3, "warmup_steps": 40, "log_every": 20, "eval_batches": 8, **train},
        checkpoint={"every": 10_000, "keep": 1})


def shape_overrides(width: int, layers: int, ffn: str = "dense") -> dict[str, Any]:
    """``model.*`` overrides of a sweep arm that trains rung (width, layers)."""
    return {f"model.{k}": v for k, v in model_shape(width, layers, ffn).items() if k != "mrope_section"}


# ------------------------------------------------------------------------------------------------ learning rates
LR_WIDTHS = (64, 128, 256, 512)
LEARNING_RATES = (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)
LR_STEPS, LR_SEQ_LEN = 100, 64  # 100 steps of 8 x 64 tokens: the width-512 runs cost ~5e12 FLOPs each


def lr_transfer_sweep() -> Sweep:
    """parametrisation x width x learning rate, 4 layers, 100 steps (arms ``<sp|mup>_w<width>_lr<lr>``)."""
    arms = {f"{p}_w{w}_lr{lr:g}": {**shape_overrides(w, 4), "model.parametrization": p, "train.learning_rate": lr}
            for p in ("sp", "mup") for w in LR_WIDTHS for lr in LEARNING_RATES}
    return Sweep(arms, seeds=(0, 1), axis_label="learning rate")


# ------------------------------------------------------------------------------------------------ wsd vs cosine
WSD_LENGTHS = (200, 400, 800)  # steps (x 1,024 tokens)
COOLDOWN = 0.2


def wsd_sweep() -> Sweep:
    """Cosine at each length; one wsd run of the longest length keeping its checkpoints at the other lengths' branch
    points; wsd branches that cool down from them (``{sweep_workdir}`` is the sweep's folder: ``experiments.sweep``
    fills it in)."""
    arms: dict[str, dict[str, Any]] = {f"cosine_{n}": {"train.schedule": "cosine", "train.steps": n}
                                       for n in WSD_LENGTHS}
    longest = WSD_LENGTHS[-1]
    branch_points = tuple(round(n * (1 - COOLDOWN)) for n in WSD_LENGTHS[:-1])
    arms[f"wsd_{longest}"] = {"train.schedule": "wsd", "train.steps": longest, "train.decay_fraction": COOLDOWN,
                              "checkpoint.keep_steps": branch_points}
    for n, start in zip(WSD_LENGTHS[:-1], branch_points, strict=True):
        arms[f"wsd_branch_{n}"] = {"train.schedule": "wsd", "train.steps": n, "train.decay_fraction": COOLDOWN,
                                   "train.branch_from": f"{{sweep_workdir}}/wsd_{longest}/checkpoints/{start}"}
    # Muon (hidden matrices; AdamW for the rest) on the longest cosine run, at Muon's usual peak of 0.02.
    arms[f"muon_cosine_{longest}"] = {"train.schedule": "cosine", "train.steps": longest, "train.optimizer": "muon",
                                      "train.muon_learning_rate": 0.02}
    # One seed, the config's: each point's workdir is its arm's name, which the branches' paths name.
    return Sweep(arms, seeds=(), axis_label="schedule and length")


# ------------------------------------------------------------------------------------------------ isoFLOP
ISOFLOP_BUDGETS = (1e11, 3e11, 1e12)  # training FLOPs per run
ISOFLOP_RUNGS = ((32, 4), (32, 8), (64, 4), (64, 8), (96, 8))
EXTRAPOLATION_FACTOR = 4  # the check point's budget, x the largest fitted one


def flops_model(width: int, layers: int, ffn: str = "dense") -> ModelConfig:
    """The ModelConfig a rung trains (the compact vocabulary's size in place of the full one): FLOPs and counts."""
    model = validate_config(base_config("flops", width, layers, ffn))
    return rung_config(model.replace(vocab_size=VOCAB), width, layers, ffn)


def budget_arm(flops: float, width: int, layers: int, ffn: str = "dense") -> dict[str, Any]:
    """Overrides of the run of rung (width, layers) that spends ``flops``: its steps and a 10 % warmup."""
    steps = steps_for_budget(flops_model(width, layers, ffn), flops, seq_len=SEQ_LEN, batch_size=BATCH)
    if steps < 10:
        raise ValueError(f"budget {flops:.3g} FLOPs gives rung w{width}_l{layers} only {steps} steps; raise the "
                         "budget or drop the rung")
    return {**shape_overrides(width, layers, ffn), "train.steps": steps, "train.warmup_steps": max(1, steps // 10),
            "checkpoint.every": steps}


def budget_name(flops: float) -> str:
    return f"C{flops:.0e}".replace("+", "")


def isoflop_sweep(budgets: tuple[float, ...] = ISOFLOP_BUDGETS,
                  rungs: tuple[tuple[int, int], ...] = ISOFLOP_RUNGS) -> Sweep:
    """One arm per (budget, rung): ``C1e12_w64_l4`` ..."""
    arms = {f"{budget_name(c)}_w{w}_l{n}": budget_arm(c, w, n) for c in budgets for w, n in rungs}
    return Sweep(arms, seeds=(0,), axis_label="non-embedding parameters")
