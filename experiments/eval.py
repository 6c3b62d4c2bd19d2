"""Validation loss, perplexity and bits per byte per corpus of a trained checkpoint, and its MQAR recall accuracy.

  python -m experiments.eval --config configs/tiny.py --workdir runs/demo [--step 30] [--batches 0]

Reads the newest readable checkpoint (or ``--step``) of ``WORKDIR/checkpoints``: the model is rebuilt from the
ModelConfig stored in the checkpoint, on the mesh of the config's ``mesh`` section (as in training; a run trained on
several processes is evaluated in this one process on its local devices unless ``--multihost`` starts
``jax.distributed``); the validation windows come from the config's ``data`` section (the same prepared datasets,
held-out split and compact vocabulary as training). ``--batches 0`` evaluates every validation row; the default uses
``config.train.eval_batches`` batches like the training loop. The MQAR settings of ``data.mqar_eval`` are scored on
their fixed evaluation rows (``qwen35_jax.train.probes``). Prints the tables and writes ``WORKDIR/eval_step<N>.json``:
per corpus its loss, perplexity, tokens, bits_per_byte and bytes, plus the flat keys of a training run's final
``probes`` record (``bpb/<corpus>``, ``mqar/<L>x<P>``, ``mqar_chance``). A missing checkpoint, a bad config or flag
ends with one ``error: ...`` line (``QWEN35_JAX_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
from absl import app, flags
from flax import nnx

from qwen35_jax.train.cli import define_experiment_config, run
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.data_sources import text_data
from qwen35_jax.train.probes import bits_per_byte, build_probes, mqar_scores, nll_sum
from qwen35_jax.train.restore import restore_model, runtime_from_config
from qwen35_jax.train.step import make_eval_step

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _CONFIG = define_experiment_config("config", "The experiment config the checkpoint was trained with.")
    _WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (holds checkpoints/ and the prepared data).")
    _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    _MULTIHOST = flags.DEFINE_bool("multihost", False, "Start jax.distributed as config.multihost says and evaluate "
                                   "on every process (a cluster); default: this one process on its local devices.")
    _BATCHES = flags.DEFINE_integer("batches", None, "Validation batches per corpus (0: all; default: "
                                    "config.train.eval_batches).")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        batches: int | None = None, distributed: bool = False) -> dict[str, dict[str, float]]:
    """``{corpus: {"loss": nats, "perplexity": ..., "tokens": n, "bits_per_byte": ..., "bytes": n}}`` plus
    ``{"_probes": {flat probe keys}, "_step": {"step": step}}`` for a checkpoint."""
    validate_config(config)
    config = fill_defaults(config)
    runtime = runtime_from_config(config, distributed=distributed)  # config.mesh, as in training
    model, meta = restore_model(workdir, runtime, step)
    model_config = model.config
    data_cfg = config.data
    data = text_data(config, workdir)
    if data.vocab_size != model_config.vocab_size:
        raise ValueError(f"the data's vocabulary has {data.vocab_size} ids but the checkpoint's model has "
                         f"{model_config.vocab_size}: evaluate with the config (data section) used for training")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    eval_step = make_eval_step(graphdef, rest, loss_chunk=config.train.loss_chunk)
    limit = config.train.eval_batches if batches is None else batches
    probes = build_probes(data_cfg, data, limit or None)
    results: dict[str, dict[str, float]] = {}
    for name, val_batches in probes.validation.items():
        nats, tokens = nll_sum(eval_step, params, val_batches)
        loss = nats / max(tokens, 1.0)
        results[name] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": int(tokens),
                         "bits_per_byte": bits_per_byte(nats, probes.validation_bytes[name]),
                         "bytes": probes.validation_bytes[name]}
    # The flat keys of the training run's final "probes" record (bpb/<corpus>, mqar/<L>x<P>, mqar_chance).
    flat = {f"bpb/{name}": r["bits_per_byte"] for name, r in results.items()}
    results["_probes"] = {**flat, **mqar_scores(probes, graphdef, rest, params, config.train.loss_chunk)}
    results["_step"] = {"step": int(meta["step"])}
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("both --config (e.g. configs/tiny.py) and --workdir (e.g. runs/demo) are required")
    results = evaluate_checkpoint(_CONFIG.value, _WORKDIR.value, _STEP.value, _BATCHES.value, _MULTIHOST.value)
    step = results.pop("_step")["step"]
    flat = results.pop("_probes")
    print(f"checkpoint step {step} in {_WORKDIR.value}")
    print(f"{'corpus':<28} {'loss (nats)':>12} {'perplexity':>12} {'bits/byte':>10} {'tokens':>10}")
    for name, r in results.items():
        print(f"{name:<28} {r['loss']:>12.4f} {r['perplexity']:>12.2f} {r['bits_per_byte']:>10.4f} {r['tokens']:>10,}")
    settings = {k[len("mqar/"):]: v for k, v in flat.items() if k.startswith("mqar/")}
    if settings:
        print(f"\n{'MQAR (length x pairs)':<28} {'accuracy':>12} {'chance':>12}")
        for name, accuracy in settings.items():
            print(f"{name:<28} {accuracy:>12.4f} {flat['mqar_chance']:>12.4f}")
    with open(os.path.join(_WORKDIR.value, f"eval_step{step}.json"), "w") as f:
        json.dump({"step": step, **results, **flat}, f, indent=1)


if __name__ == "__main__":
    run(main)
