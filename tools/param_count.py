"""Print total / active / text / vision / MTP parameter counts of a config, from the model definition.

python -m tools.param_count --config configs/qwen35_397b_a17b.py
python -m tools.param_count --config configs/qwen35_9b.py --config.model.num_hidden_layers=16

A bad config file or override ends with one ``error: ...`` line (``QWEN35_JAX_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

from absl import app

from qwen35_jax.config import ModelConfig
from qwen35_jax.param_count import format_counts
from qwen35_jax.train.cli import define_experiment_config, run

# Flags exist only when this file runs as a program: importing it defines none (see tests/test_cli_modules.py).
if __name__ == "__main__":
    _CONFIG = define_experiment_config("config", "Experiment config file (configs/*.py).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    experiment = _CONFIG.value
    if experiment is None:
        raise app.UsageError("--config is required, e.g. --config configs/qwen35_9b.py")
    config = ModelConfig.from_dict(experiment.model.to_dict())
    print(format_counts(experiment.get("name", "model"), config))


if __name__ == "__main__":
    run(main, compilation_cache=False)
