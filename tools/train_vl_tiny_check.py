"""STOP-GAP: train the tiny VL captioning config with a plain optax loop, then rank held-out captions.

  python -m tools.train_vl_tiny_check --workdir /tmp/vl_check [--config configs/vl_tiny.py] [--steps 1500]
                                      [--minutes 8] [--digits_csv PATH]

Exists only until ``data.kind = "captions"`` is wired into ``experiments.train`` (then use that plus
``experiments.caption_rank``). No checkpoints, no resume, single device. Reuses ``prepare_caption_data``, the
project's optimizer (``qwen35_jax.train.optimizer.make_optimizer``: AdamW, warmup + cosine, clipping, decay mask),
``masked_cross_entropy`` and ``experiments.caption_rank.evaluate_ranking``. The step is ``jax.jit`` with params and
optimizer state donated; the image grid is a static value (closed over), mRoPE positions come with the batch.

Prints the caption loss every ``train.log_every`` steps, the held-out caption loss per source at the start and the
end, the ranking (top-1 among ``data.num_candidates`` and mean rank, beside chance) of the untrained and the trained
model, and the run time; writes them to ``WORKDIR/vl_check.json``. ``--minutes`` stops training early (wall clock).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from experiments.caption_rank import evaluate_ranking, format_results
from qwen35_jax.config import ModelConfig
from qwen35_jax.data.captions import Batch, prepare_caption_data
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train.losses import masked_cross_entropy, token_nll
from qwen35_jax.train.optimizer import make_optimizer

MODEL_FIELDS = ("input_ids", "segment_ids", "positions", "pixel_values")


def load_config(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("vl_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--config {path} is not a Python config file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def build_steps(graphdef: nnx.GraphDef, tx: Any, grid: np.ndarray) -> tuple[Any, Any]:
    """(train_step(params, opt_state, batch) -> (params, opt_state, loss), eval_step(params, batch) -> (sum, n))."""

    def forward(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
        model = nnx.merge(graphdef, params)
        return model(batch["input_ids"], segment_ids=batch["segment_ids"], positions=batch["positions"],
                     pixel_values=batch["pixel_values"], image_grid_thw=grid).logits

    def loss_fn(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
        return masked_cross_entropy(forward(params, batch), batch["targets"], batch["loss_mask"])

    def train_step(params: nnx.State, opt_state: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_step(params: nnx.State, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        mask = batch["loss_mask"].astype(jnp.float32)
        return jnp.sum(token_nll(forward(params, batch), batch["targets"]) * mask), jnp.sum(mask)

    return jax.jit(train_step, donate_argnums=(0, 1)), eval_step


def device_batch(batch: Batch) -> dict[str, np.ndarray]:
    return {k: batch[k] for k in (*MODEL_FIELDS, "targets", "loss_mask")}


def validation_losses(eval_step: Any, params: nnx.State, validation: dict[str, list[Batch]]) -> dict[str, float]:
    out = {}
    for name, batches in validation.items():
        total = count = 0.0
        for batch in batches:
            s, n = eval_step(params, device_batch(batch))
            total, count = total + float(s), count + float(n)
        out[name] = total / max(count, 1.0)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="output folder (caption_cache/, compact_vocab.json, json)")
    parser.add_argument("--config", default="configs/vl_tiny.py")
    parser.add_argument("--steps", type=int, default=0, help="default: config.train.steps")
    parser.add_argument("--minutes", type=float, default=0.0, help="stop training after this wall time (0: no limit)")
    parser.add_argument("--digits_csv", default=None, help="override config.data.digits_csv")
    parser.add_argument("--sources", default=None, help="override config.data.sources, e.g. emoji")
    parser.add_argument("--no_rank_at_start", action="store_true", help="skip ranking the untrained model")
    args = parser.parse_args(argv)

    run_start = time.perf_counter()
    config = load_config(args.config)
    if args.steps:
        config.train.steps = args.steps
        config.train.warmup_steps = min(config.train.warmup_steps, args.steps // 10)
    if args.digits_csv is not None:
        config.data.digits_csv = args.digits_csv
    if args.sources is not None:
        config.data.sources = args.sources
    model_config = ModelConfig.from_dict(config.model.to_dict())  # validated before the data is built
    data = prepare_caption_data(config.data, args.workdir)
    model_config = model_config.replace(**data.model_overrides())
    print(f"data: {data.train_pairs} training pairs, vocab {data.vocab_size}, held-out "
          f"{ {k: len(v) for k, v in data.validation.items()} } batches, seq_len {data.layout.seq_len} "
          f"({time.perf_counter() - run_start:.0f} s)", flush=True)

    model = Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    del model
    print(f"params: {sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)):,}", flush=True)
    tx, _ = make_optimizer(config.train, params)
    opt_state = tx.init(params)
    first = next(data.train)
    train_step, eval_step = build_steps(graphdef, tx, np.asarray(first["image_grid_thw"]))

    record: dict[str, Any] = {"config": args.config, "train_pairs": data.train_pairs, "vocab_size": data.vocab_size}
    record["val_loss_start"] = validation_losses(eval_step, params, data.validation)
    print("val loss (start):", record["val_loss_start"], flush=True)
    if not args.no_rank_at_start:
        record["rank_start"] = evaluate_ranking(model_config, params, data)
        print("ranking, untrained model:\n" + format_results(record["rank_start"]), flush=True)

    train_start = time.perf_counter()
    losses, batch, step = [], first, 0
    for step in range(1, config.train.steps + 1):
        params, opt_state, loss = train_step(params, opt_state, device_batch(batch))
        if step == 1:
            record["compile_s"] = round(time.perf_counter() - train_start, 1)
        if step % config.train.log_every == 0 or step == 1 or step == config.train.steps:
            losses.append((step, float(loss)))
            print(f"step {step} loss {losses[-1][1]:.4f} ({time.perf_counter() - train_start:.0f} s)", flush=True)
        if args.minutes and time.perf_counter() - train_start > 60 * args.minutes:
            losses.append((step, float(loss)))
            print(f"stopping at step {step}: --minutes {args.minutes} reached", flush=True)
            break
        batch = next(data.train)
    record.update(steps=step, train_s=round(time.perf_counter() - train_start, 1), losses=losses)
    record["val_loss_end"] = validation_losses(eval_step, params, data.validation)
    print("val loss (end):", record["val_loss_end"], flush=True)
    record["rank_end"] = evaluate_ranking(model_config, params, data)
    print("ranking, trained model:\n" + format_results(record["rank_end"]), flush=True)
    record["total_s"] = round(time.perf_counter() - run_start, 1)
    with open(os.path.join(args.workdir, "vl_check.json"), "w") as f:
        json.dump(record, f, indent=2)
    print(f"done in {record['total_s']} s (training {record['train_s']} s, {step} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
