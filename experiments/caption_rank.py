"""Caption ranking of a trained vision-language model on held-out images.

  python -m experiments.caption_rank --config configs/vl_tiny.py --workdir runs/vl_tiny [--step N] [--batch_size 64]

Loads the newest (or ``--step``) checkpoint of ``--workdir`` (``qwen35_jax.train.checkpoint.load_params``), rebuilds
the caption data of ``config.data`` (cached renders, the same split and compact vocabulary as training), and scores
each held-out image against ``data.num_candidates`` captions (its own + others drawn with ``data.rank_seed``) by the
summed log-likelihood of the caption tokens. Prints per source the top-1 accuracy and the mean rank of the true
caption beside chance, and writes them to ``WORKDIR/caption_rank.json``. A second ranking ("PMI") subtracts each
caption's log-likelihood given a blank white image (``caption_priors``), removing the model's image-independent
preference for short or frequent captions.

The ranking itself lives in ``qwen35_jax.train.caption_ranking`` (``experiments.train`` also runs it at the end of
a captions run and logs it as the ``caption_rank`` event of ``metrics.jsonl``). A missing checkpoint, a non-captions
config or a bad flag ends with one ``error: ...`` line (``QWEN35_JAX_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import json
import os

from qwen35_jax.data.captions import prepare_caption_data
from qwen35_jax.train.caption_ranking import evaluate_ranking, format_results
from qwen35_jax.train.cli import define_experiment_config, run

RESULT_FILE = "caption_rank.json"


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    config = flags.FLAGS.config
    workdir = flags.FLAGS.workdir
    if config is None or not workdir:
        raise app.UsageError("both --config (e.g. configs/vl_tiny.py) and --workdir (a training run) are required")
    if config.data.get("kind") != "captions":
        raise ValueError(f"config.data.kind={config.data.get('kind')!r}: caption ranking needs kind='captions' "
                         "(e.g. configs/vl_tiny.py)")
    from qwen35_jax.train.checkpoint import load_params

    model_config, params = load_params(workdir, step=flags.FLAGS.step)
    data = prepare_caption_data(config.data, workdir)
    results = evaluate_ranking(model_config, params, data, flags.FLAGS.batch_size or None)
    print(format_results(results))
    with open(os.path.join(workdir, RESULT_FILE), "w") as f:
        json.dump(results, f, indent=2)


def _define_flags() -> None:
    from absl import flags

    define_experiment_config("config", "Python config file with get_config() (data.kind=captions).")
    flags.DEFINE_string("workdir", None, "Training run folder (checkpoints/, caption_cache/, compact_vocab.json).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_integer("batch_size", 0, "Rows per scoring batch (default: config.data.batch_size).")


if __name__ == "__main__":
    _define_flags()
    run(main)
