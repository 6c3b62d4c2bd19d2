"""Qwen3.5-27B (dense, untied head, large vision tower).

Parameter count (exact checkpoint total, spec §4):
  python -m tools.param_count --config configs/qwen35_27b.py
Model overrides from the command line, e.g. a bf16 copy:
  python -m tools.param_count --config configs/qwen35_27b.py --config.model.param_dtype=bfloat16
"""

import ml_collections

from qwen35_jax.presets import preset


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.name = "qwen35_27b"
    config.model = ml_collections.ConfigDict(preset("qwen35_27b"))
    return config
