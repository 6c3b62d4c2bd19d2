"""Train (or resume) a Qwen3.5 model from an experiment config.

  python -m experiments.train --config configs/tiny.py[:variant] --workdir DIR [--config.train.steps=100 ...]

Rerunning the same command resumes from the newest readable checkpoint in ``DIR/checkpoints``; a rerun whose model
config differs from the checkpoints' exits with status 1 naming the fields, before anything is written or renamed.
Ctrl-C (or SIGTERM) saves a checkpoint at the next step boundary and exits with one line naming it (status 130 for
Ctrl-C, 0 for SIGTERM); a second Ctrl-C exits at once. A bad config, override or workdir ends with one
``error: ...`` line (``QWEN35_JAX_DEBUG=1`` shows the traceback; see ``qwen35_jax.train.cli``).
Writes ``DIR/experiment_config.json`` (the config, kept on resume), ``DIR/metrics.jsonl``, TensorBoard events in
``DIR/tensorboard``, ``DIR/curves.png`` at the end, bundled or ``files:`` corpora prepared once in ``DIR/prepared``
and the compact vocabulary ``DIR/compact_vocab.json``. See ``qwen35_jax.train.loop`` for the loop and
``qwen35_jax.train.config_schema`` for every config field.
"""

from __future__ import annotations

from qwen35_jax.data.prepared.workers import enter_data_worker

# grain's data workers (data.workers > 0) re-import this module: there it imports nothing more (no jax, no model).
if not enter_data_worker(__name__):
    from absl import app, flags

    from qwen35_jax.train.cli import define_experiment_config, run
    from qwen35_jax.train.config_schema import validate_config
    from qwen35_jax.train.loop import train_and_evaluate
    from qwen35_jax.train.metrics import METRICS_FILE

__all__ = ["METRICS_FILE", "train_and_evaluate", "validate_config"]

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _CONFIG = define_experiment_config("config", "Python config file with get_config().")
    _WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: checkpoints, metrics, prepared data, vocabulary.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("both --config (e.g. configs/tiny.py) and --workdir (e.g. runs/demo) are required")
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    run(main)
