"""Print total / active / text / vision / MTP parameter counts of a config, from the model definition.

python -m tools.param_count --config configs/qwen35_397b_a17b.py
python -m tools.param_count --config configs/qwen35_9b.py --config.model.num_hidden_layers=16
"""

from __future__ import annotations

from absl import app
from ml_collections import config_flags

from qwen35_jax.config import ModelConfig
from qwen35_jax.param_count import count_parameters
from qwen35_jax.presets import PUBLISHED_TOTALS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)


def format_counts(name: str, config: ModelConfig) -> str:
    counts = count_parameters(config)
    rows = [
        ("total (text + vision + MTP)", counts.total),
        ("text", counts.text),
        ("vision", counts.vision),
        ("MTP", counts.mtp),
        ("active text (incl. input embedding)", counts.active_text),
        ("active text (excl. input embedding)", counts.active_text_without_input_embedding),
    ]
    lines = [f"{name}:"] + [f"  {label:<38} {value:>19,}" for label, value in rows]
    published = PUBLISHED_TOTALS.get(name)
    if published is not None:
        verdict = "matches" if published == counts.total else f"DIFFERS by {counts.total - published:+,}"
        lines.append(f"  {'published checkpoint total':<38} {published:>19,}  ({verdict})")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    experiment = _CONFIG.value
    config = ModelConfig.from_dict(experiment.model.to_dict())
    print(format_counts(experiment.get("name", "model"), config))


if __name__ == "__main__":
    app.run(main)
