"""Minimal single-device training loop: packed text -> Qwen3.5 causal LM -> AdamW.

  python -m experiments.train --config configs/tiny.py[:args] --workdir DIR [--config.train.steps=100 ...]

Prints step, loss and tokens/s every ``train.log_every`` steps and the held-out loss per corpus at the start and
the end (and every ``train.eval_every`` steps if > 0); writes every record to ``DIR/metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from qwen35_jax.config import ModelConfig
from qwen35_jax.data import fixed_batches, pack_documents, parse_corpora, prepare_text_data, shuffled_batches
from qwen35_jax.data.packing import Batch
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.train import masked_cross_entropy, token_nll

_CONFIG = config_flags.DEFINE_config_file("config", None, "Python config file with get_config().")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: metrics.jsonl, compact_vocab.json, token cache.")
METRICS_FILE = "metrics.jsonl"


def _require(ok: bool, field: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r} is invalid: {fix}")


def validate_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """Check every field the loop uses before any data is tokenised or anything compiled; returns the model
    config (its vocab_size is replaced later when a compact vocabulary is built)."""
    data, train = config.data, config.train
    parse_corpora(data.corpora)
    for name in ("seq_len", "batch_size"):
        _require(data[name] >= 1, f"data.{name}", data[name], "must be >= 1")
    _require(0 < data.validation_fraction < 1, "data.validation_fraction", data.validation_fraction,
             "must be in (0, 1), e.g. 0.05")
    _require(data.compact_vocab_max_size == 0 or data.compact_vocab_max_size >= 3, "data.compact_vocab_max_size",
             data.compact_vocab_max_size, "use 0 (no cap) or a size >= 3")
    for name in ("steps", "log_every", "eval_batches"):
        _require(train[name] >= 1, f"train.{name}", train[name], "must be >= 1")
    _require(0 <= train.warmup_steps <= train.steps, "train.warmup_steps", train.warmup_steps,
             f"must be in [0, train.steps={train.steps}]")
    _require(train.eval_every >= 0, "train.eval_every", train.eval_every, "use 0 (start and end only) or >= 1")
    _require(train.learning_rate > 0, "train.learning_rate", train.learning_rate, "must be > 0, e.g. 3e-3")
    _require(0 <= train.min_lr_ratio <= 1, "train.min_lr_ratio", train.min_lr_ratio, "must be in [0, 1]")
    _require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "must be >= 0")
    _require(train.grad_clip_norm > 0, "train.grad_clip_norm", train.grad_clip_norm, "must be > 0, e.g. 1.0")
    return ModelConfig.from_dict(config.model.to_dict())


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with linear warmup + cosine decay and global-norm clipping; no weight decay on vectors (norms)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
        decay_steps=train.steps, end_value=train.learning_rate * train.min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip_norm),
        optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay, mask=_matrices),
    )


def _matrices(params: Any) -> Any:
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def _loss(model: Qwen35ForCausalLM, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = model(batch["input_ids"], segment_ids=batch["segment_ids"])
    ce = masked_cross_entropy(out.logits, batch["targets"], batch["loss_mask"])
    loss = ce + model.config.router_aux_loss_coef * out.aux_loss
    return loss, {"ce": ce, "aux_loss": out.aux_loss}


@nnx.jit(donate_argnums=(0, 1))
def train_step(model: Qwen35ForCausalLM, optimizer: nnx.Optimizer, batch: Batch) -> dict[str, jax.Array]:
    (loss, metrics), grads = nnx.value_and_grad(_loss, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}


@nnx.jit
def _eval_step(model: Qwen35ForCausalLM, batch: Batch) -> tuple[jax.Array, jax.Array]:
    nll = token_nll(model(batch["input_ids"], segment_ids=batch["segment_ids"]).logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    return jnp.sum(nll * mask), jnp.sum(mask)


def evaluate(model: Qwen35ForCausalLM, batches: list[Batch]) -> float:
    """Mean next-token NLL (nats) over every unmasked target of ``batches``."""
    total, count = 0.0, 0.0
    for batch in batches:
        nll_sum, n = _eval_step(model, batch)
        total, count = total + float(nll_sum), count + float(n)
    return total / max(count, 1.0)


class MetricsLog:
    """Print records, keep them, and append them as JSON lines to ``workdir/metrics.jsonl`` (truncated first)."""

    def __init__(self, workdir: str) -> None:
        self.records: list[dict[str, Any]] = []
        self._path = os.path.join(workdir, METRICS_FILE)
        open(self._path, "w").close()

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
              flush=True)
        with open(self._path, "a") as f:
            f.write(json.dumps(record) + "\n")


def build_data(config: ml_collections.ConfigDict, model_config: ModelConfig, workdir: str,
               ) -> tuple[ModelConfig, Iterator[Batch], dict[str, list[Batch]], int]:
    """Tokenised corpora as (model config with the data's vocab_size, endless training batches, validation batches
    per corpus, number of training tokens)."""
    data_cfg = config.data
    data = prepare_text_data(
        data_cfg.corpora, workdir=workdir, validation_fraction=data_cfg.validation_fraction,
        split_seed=data_cfg.split_seed, compact_vocab=data_cfg.compact_vocab,
        compact_vocab_max_size=data_cfg.compact_vocab_max_size or None)
    if data.vocab is not None:
        model_config = model_config.replace(vocab_size=data.vocab_size)
    elif model_config.vocab_size < data.vocab_size:
        raise ValueError(f"config.model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
                         f"{data.vocab_size} ids; set it to {data.vocab_size} or use data.compact_vocab=True")
    train = shuffled_batches(data.train, data_cfg.seq_len, data_cfg.batch_size, seed=data_cfg.seed)
    validation = {name: fixed_batches(pack_documents(docs, data_cfg.seq_len, drop_remainder=False),
                                      data_cfg.batch_size, config.train.eval_batches)
                  for name, docs in data.validation.items()}
    return model_config, train, validation, sum(len(d) for d in data.train)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Run the whole training; returns the metric records (also written to ``workdir/metrics.jsonl``)."""
    model_config = validate_config(config)
    train_cfg = config.train
    os.makedirs(workdir, exist_ok=True)
    log = MetricsLog(workdir)
    run_start = time.perf_counter()

    model_config, train_batches, validation, train_tokens = build_data(config, model_config, workdir)
    log.write({"event": "data", "train_tokens": train_tokens, "vocab_size": model_config.vocab_size,
               "seconds": round(time.perf_counter() - run_start, 2)})

    begin = time.perf_counter()
    model = Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(config.seed))
    optimizer = nnx.Optimizer(model, make_optimizer(train_cfg), wrt=nnx.Param)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    log.write({"event": "model", "params": num_params, "seconds": round(time.perf_counter() - begin, 2)})

    def validate(step: int) -> None:
        begin = time.perf_counter()
        losses = {f"val_loss/{name}": evaluate(model, batches) for name, batches in validation.items()}
        log.write({"step": step, **losses, "seconds": round(time.perf_counter() - begin, 2)})

    validate(0)
    tokens_per_step = config.data.seq_len * config.data.batch_size
    last_time, last_step = time.perf_counter(), 0
    for step in range(1, train_cfg.steps + 1):
        metrics = train_step(model, optimizer, next(train_batches))
        if step == 1:  # the first step includes compilation: time it apart from the throughput
            jax.block_until_ready(metrics)
            log.write({"event": "compile", "seconds": round(time.perf_counter() - last_time, 2)})
            last_time, last_step = time.perf_counter(), 1
        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            record = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
            now = time.perf_counter()
            if step > last_step:
                record["tokens_per_s"] = round(tokens_per_step * (step - last_step) / (now - last_time), 1)
            log.write(record)
            last_time, last_step = now, step
        if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step != train_cfg.steps:
            validate(step)
            last_time, last_step = time.perf_counter(), step  # keep evaluation out of the throughput
    validate(train_cfg.steps)
    log.write({"event": "done", "seconds": round(time.perf_counter() - run_start, 1)})
    return log.records


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise app.UsageError("both --config (e.g. configs/tiny.py) and --workdir (e.g. runs/demo) are required")
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
