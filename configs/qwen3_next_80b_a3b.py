"""Qwen3-Next-80B-A3B (text-only MoE, grouped GDN projections, 1-D RoPE).

Parameter count (exact checkpoint total, spec §4):
  python -m tools.param_count --config configs/qwen3_next_80b_a3b.py
Model overrides from the command line, e.g. a bf16 copy:
  python -m tools.param_count --config configs/qwen3_next_80b_a3b.py --config.model.param_dtype=bfloat16
"""

import ml_collections

from qwen35_jax.presets import preset


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "qwen3_next_80b_a3b"
    config.model = ml_collections.ConfigDict(preset("qwen3_next_80b_a3b"))
    return config
