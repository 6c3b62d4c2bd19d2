"""The hybrid-design ablation study's base configs and sweep definitions (``configs/ablations/*.py``).

Every ablation file is an experiment config (``get_config(arg)``, trained by ``experiments.train``) that also
names its arms (``get_sweep(arg)``, run by ``experiments.sweep``): each arm is a few overrides of one shared base,
each trained with every seed of the sweep. Two sizes, chosen by the variant argument:

* ``cpu`` (default): sized so a 5-arm x 3-seed sweep finishes on 2 CPU cores well inside 90 minutes — 8 layers of
  hidden 64 (2 x [3 GDN + 1 attention] by default), dense SwiGLU FFN, a compact vocabulary capped at 2,048 ids,
  Shakespeare at 128 tokens x 16 rows, half of each batch's rows MQAR (``qwen35_jax.data.mqar``, 32 symbols, 4 or 8
  pairs), 400 steps (~1.5 min a run);
* ``0p8b``: Qwen3.5-0.8B's shape (24 layers, hidden 1024, the full 248,320-id vocabulary) for a TPU or GPU:
  the bundled corpora (English, French and Spanish Wikipedia, Shakespeare: bits per byte for each) at 2,048 tokens,
  bf16 compute, the same MQAR mix and probe.

Both keep Qwen3.5's choices as the base (3 GDN : 1 gated attention, output gate on, rotary on 25 % of the head
dimension, no MTP) and use plain 1-D rotary positions (``mrope_section=None``): for text every multimodal position
row is the same, so this equals the interleaved mRoPE exactly (numerics §2.3.1) and lets the rotary fraction vary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from qwen35_jax.train.recipes import experiment, select_variant

SEEDS = (0, 1, 2)
# MQAR (length x key-value pairs) settings scored after training; the shortest is the one the acceptance asks about.
MQAR_EVAL = "64x4,128x8,256x16"
# The knobs the arms override, at Qwen3.5's values (listed so every arm's override names an existing key).
QWEN35_KNOBS = {"full_attention_interval": 4, "attn_output_gate": True, "partial_rotary_factor": 0.25,
                "mrope_section": None, "mtp_num_hidden_layers": 0}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Named arms (config overrides as ``{"model.x": value}``), the seeds every arm trains with, and the label of
    the axis the arms vary along (plots)."""

    arms: Mapping[str, Mapping[str, Any]]
    seeds: tuple[int, ...] = SEEDS
    axis_label: str = ""


def _cpu(name: str) -> ml_collections.ConfigDict:
    return experiment(
        name, "qwen35_0p8b",
        model={**QWEN35_KNOBS, "vocab_size": 248320, "hidden_size": 64, "num_hidden_layers": 8,
               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 192,
               "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
               "linear_value_head_dim": 16, "tie_word_embeddings": False, "vision": None, "dtype": "float32",
               "param_dtype": "float32", "gdn_impl": "chunked"},
        data={"corpora": "shakespeare", "seq_len": 128, "batch_size": 16, "compact_vocab": True,
              "compact_vocab_max_size": 2048, "mqar_fraction": 0.5, "mqar_symbols": 32,
              "mqar_train_pairs": (4, 8), "mqar_eval": MQAR_EVAL},
        train={"steps": 400, "learning_rate": 3e-3, "warmup_steps": 40, "log_every": 10, "eval_batches": 8},
        checkpoint={"every": 400, "keep": 1})


def _tpu_0p8b(name: str) -> ml_collections.ConfigDict:
    return experiment(
        name, "qwen35_0p8b",
        model={**QWEN35_KNOBS, "vision": None, "dtype": "bfloat16",
               "param_dtype": "float32", "remat_policy": "full", "gdn_impl": "auto"},
        data={"corpora": "wiki_en,wiki_fr,wiki_es,shakespeare", "seq_len": 2048, "batch_size": 64,
              "compact_vocab": False, "mqar_fraction": 0.5, "mqar_symbols": 256, "mqar_train_pairs": (16, 64, 128),
              "mqar_eval": "256x16,1024x64,2048x128"},
        train={"steps": 5000, "learning_rate": 1e-3, "warmup_steps": 500, "loss_chunk": 512, "log_every": 50,
               "eval_every": 1000, "eval_batches": 16},
        checkpoint={"every": 1000, "keep": 2})


def ablation_config(study: str, arg: str | None) -> ml_collections.ConfigDict:
    """The base experiment config of ``configs/ablations/<study>.py:<arg>`` (``cpu`` or ``0p8b``)."""
    name = f"ablations/{study}"
    variants = {"cpu": lambda: _cpu(f"{name}:cpu"), "0p8b": lambda: _tpu_0p8b(f"{name}:0p8b")}
    return select_variant(f"configs/ablations/{study}.py", variants, arg, "cpu")
