"""Caption ranking of a vision-language model on held-out images (``qwen35_jax.data.captions`` ranking sets).

  results = evaluate_ranking(model_config, params, data)   # {source: {"top1", "mean_rank", "pmi", ...}}
  print(format_results(results))

Each held-out image is scored against ``data.num_candidates`` captions (its own + others drawn with
``data.rank_seed``) by the summed log-likelihood of the caption tokens; a second ranking ("PMI") subtracts each
caption's log-likelihood given a blank white image (``caption_priors``), removing the model's image-independent
preference for short or frequent captions. Used by ``experiments.train`` at the end of a captions run and by
``experiments.caption_rank`` on a checkpoint.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.captions import (
    Batch,
    CaptionData,
    caption_priors,
    rank_metrics,
    score_candidates,
)
from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.losses import token_nll

MODEL_FIELDS = ("input_ids", "segment_ids", "positions", "pixel_values")


def caption_log_likelihood(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Per-row sum of ``log p(target)`` over ``loss_mask`` (jit-friendly): ``[B]`` fp32."""
    return -jnp.sum(token_nll(logits, targets) * loss_mask.astype(jnp.float32), axis=-1)


@functools.cache
def _scorer(model_config: ModelConfig, grid: tuple) -> Callable:
    """One compiled scorer per (model config, image grid): the grid is a static value of the vision tower."""
    graphdef = nnx.graphdef(build_model(model_config, Runtime.local(), abstract=True))
    grid_array = np.asarray(grid, np.int64)

    @jax.jit
    def score(params: nnx.State, inputs: dict[str, jax.Array], targets: jax.Array, loss_mask: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, params)
        out = model(inputs["input_ids"], segment_ids=inputs["segment_ids"], positions=inputs["positions"],
                    pixel_values=inputs["pixel_values"], image_grid_thw=grid_array)
        return caption_log_likelihood(out.logits, targets, loss_mask)

    return score


def make_log_likelihood(model_config: ModelConfig, params: nnx.State) -> Callable[[Batch], np.ndarray]:
    """``batch -> [B]`` summed log-likelihood of the loss-masked targets under the model with ``params``."""

    def log_likelihood(batch: Batch) -> np.ndarray:
        grid = tuple(map(tuple, np.asarray(batch["image_grid_thw"]).tolist()))
        inputs = {k: batch[k] for k in MODEL_FIELDS}
        return np.asarray(_scorer(model_config, grid)(params, inputs, batch["targets"], batch["loss_mask"]))

    return log_likelihood


def check_compatible(model_config: ModelConfig, data: CaptionData) -> None:
    """The checkpoint must have been trained on this data's vocabulary and special ids."""
    for field, value in data.model_overrides().items():
        if getattr(model_config, field) != value:
            raise ValueError(f"the checkpoint's ModelConfig.{field}={getattr(model_config, field)} differs from the "
                             f"caption data's {value}: rank with the config (data section) the model was trained with")


def evaluate_ranking(model_config: ModelConfig, params: nnx.State, data: CaptionData,
                     batch_size: int | None = None) -> dict[str, dict[str, Any]]:
    """Ranking metrics per source of ``data.ranking`` (see ``qwen35_jax.data.captions.rank_metrics``)."""
    check_compatible(model_config, data)
    log_likelihood = make_log_likelihood(model_config, params)
    results = {}
    for name, ranking in data.ranking.items():
        start = time.perf_counter()
        rows = batch_size or data.config.batch_size
        scores = score_candidates(ranking, data.layout, rows, log_likelihood)
        pmi = scores - caption_priors(ranking, data.layout, rows, log_likelihood)[ranking.candidates]
        results[name] = dict(rank_metrics(scores, ranking.true_index),
                             pmi={k: v for k, v in rank_metrics(pmi, ranking.true_index).items()
                                  if k in ("top1", "mean_rank")},
                             seconds=round(time.perf_counter() - start, 1))
    return results


def format_results(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'source':<8} {'images':>6} {'top-1':>7} {'chance':>7} {'mean rank':>9} {'chance':>7}   "
             f"{'PMI top-1':>9} {'PMI rank':>8}"]
    for name, r in results.items():
        lines.append(f"{name:<8} {r['images']:>6} {r['top1']:>7.3f} {r['chance_top1']:>7.3f} {r['mean_rank']:>9.2f} "
                     f"{r['chance_mean_rank']:>7.2f}   {r['pmi']['top1']:>9.3f} {r['pmi']['mean_rank']:>8.2f}")
    return "\n".join(lines)


def flat_results(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"rank/<source>/top1": ..., "rank/<source>/pmi_top1": ..., ...}``: one flat metrics record."""
    flat: dict[str, float] = {}
    for name, r in results.items():
        for key in ("top1", "chance_top1", "mean_rank", "chance_mean_rank", "images"):
            flat[f"rank/{name}/{key}"] = r[key]
        for key, value in r["pmi"].items():
            flat[f"rank/{name}/pmi_{key}"] = value
    return flat
