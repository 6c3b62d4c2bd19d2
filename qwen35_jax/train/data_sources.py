"""Data sources of the training loop, chosen by ``config.data.kind`` (``DATA_SOURCES``).

  source = DATA_SOURCES[config.data.kind](config, model_config, workdir)

A source gives the model config adjusted to its data (vocabulary size, special ids), an iterator of training
batches with ``get_state`` / ``set_state`` (checkpointed), validation batches per name, and optionally
``static_inputs`` (model arguments fixed per number of rows, see ``train.step``) and a ``final_eval`` run on the
trained parameters. Every batch is rows-first: each field has the batch as its leading axis.

  ``text``      windows of prepared text datasets (``qwen35_jax.data.text_dataset``, ``data.prepared.stream``):
                yields this process's rows of each global batch (``data.workers`` grain worker processes), a
                ``data.mqar_fraction`` of them MQAR rows (``qwen35_jax.data.mqar``), and ends with the probes of
                ``qwen35_jax.train.probes`` (bits per byte per corpus, MQAR accuracy per ``data.mqar_eval`` setting).
  ``captions``  image-caption rows of the tiny VL run (``qwen35_jax.data.captions``); yields global batches (the
                loop takes this process's rows), and ends with the held-out caption ranking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.data import prepare_text_data
from qwen35_jax.data.captions import CaptionBatches, prepare_caption_data
from qwen35_jax.data.mqar import MqarMixer
from qwen35_jax.data.text_dataset import VOCAB_FILE, TextData
from qwen35_jax.parallel.mesh import MeshConfig
from qwen35_jax.train.probes import build_probes, format_probes, model_graph, run_probes, text_bands
from qwen35_jax.train.step import make_eval_step

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class DataSource:
    """What a data source gives the loop (see the module docstring)."""

    model_config: ModelConfig
    train: Any  # iterator of batches with get_state() / set_state(state)
    validation: dict[str, list[Batch]]  # global batches per name
    train_tokens: int
    vocab_file: str | None = None  # the compact vocabulary saved in the workdir, if any
    train_is_global: bool = False  # True: ``train`` yields whole global batches, not this process's rows
    static_inputs: Callable[[int], dict[str, Any]] | None = None
    # (event name, (model_config, params) -> flat numeric record): run after the last step, logged with the event
    final_eval: tuple[str, Callable[[ModelConfig, nnx.State], dict[str, Any]]] | None = None
    tokens_seen: Callable[[int], dict[str, int]] | None = None  # steps -> training tokens per source so far
    close: Callable[[], None] | None = None  # stops the input pipeline's workers


def text_data(config: ml_collections.ConfigDict, workdir: str) -> TextData:
    """The run's text sources (``data.corpora``, ``data.weights``) with its compact vocabulary, if any."""
    data_cfg = config.data
    return prepare_text_data(
        data_cfg.corpora, workdir=workdir, validation_fraction=data_cfg.validation_fraction,
        split_seed=data_cfg.split_seed, compact_vocab=data_cfg.compact_vocab,
        compact_vocab_max_size=data_cfg.compact_vocab_max_size or None, weights=data_cfg.weights)


def text_source(config: ml_collections.ConfigDict, model_config: ModelConfig, workdir: str) -> DataSource:
    data_cfg = config.data
    data = text_data(config, workdir)
    if data.vocab is not None:
        model_config = model_config.replace(vocab_size=data.vocab_size)
    elif model_config.vocab_size < data.vocab_size:
        raise ValueError(f"config.model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
                         f"{data.vocab_size} ids; set it to {data.vocab_size} or use data.compact_vocab=True")
    process, processes = jax.process_index(), jax.process_count()
    local = data_cfg.batch_size // processes
    stream = data.train_stream(seq_len=data_cfg.seq_len, global_batch_size=data_cfg.batch_size, seed=data_cfg.seed,
                               rows=slice(process * local, (process + 1) * local))
    iterator = stream.iterator(data_cfg.workers)
    if data_cfg.mqar_fraction > 0:
        iterator = MqarMixer(iterator, fraction=data_cfg.mqar_fraction, seq_len=data_cfg.seq_len,
                             pairs=data_cfg.mqar_train_pairs, bands=text_bands(data, data_cfg.mqar_symbols),
                             seed=data_cfg.seed, process_index=process, process_count=processes)
    probe_sets = build_probes(data_cfg, data, config.train.eval_batches)
    mesh_config = MeshConfig.from_config(config.get("mesh"))

    def probes(model_config: ModelConfig, params: nnx.State) -> dict[str, Any]:
        graphdef, rest = model_graph(model_config, params, mesh_config)
        eval_step = make_eval_step(graphdef, rest, loss_chunk=config.train.loss_chunk)
        record = run_probes(probe_sets, graphdef, rest, params, eval_step, config.train.loss_chunk)
        if jax.process_index() == 0:
            print(format_probes(record), flush=True)
        return record

    return DataSource(model_config, iterator, probe_sets.validation, data.train_tokens,
                      vocab_file=VOCAB_FILE if data_cfg.compact_vocab else None, final_eval=("probes", probes),
                      tokens_seen=stream.tokens_per_source, close=iterator.close)


def rows_first(batch: Batch) -> Batch:
    """A ``make_batch`` batch in the loop's layout: ``positions [3, B, T] -> [B, 3, T]``, ``pixel_values
    [B·P, C] -> [B, P, C]``; ``image_grid_thw`` is dropped (it is a static input)."""
    rows = batch["input_ids"].shape[0]
    out = {k: v for k, v in batch.items() if k != "image_grid_thw"}
    out["positions"] = np.ascontiguousarray(np.swapaxes(batch["positions"], 0, 1))
    out["pixel_values"] = batch["pixel_values"].reshape(rows, -1, batch["pixel_values"].shape[-1])
    return out


class _RowsFirst(Iterator[Batch]):
    """``CaptionBatches`` yielding ``rows_first`` batches, with the same resumable state."""

    def __init__(self, batches: CaptionBatches) -> None:
        self._batches = batches

    def __next__(self) -> Batch:
        return rows_first(next(self._batches))

    def get_state(self) -> dict[str, int]:
        return self._batches.get_state()

    def set_state(self, state: dict[str, int]) -> None:
        self._batches.set_state(state)


def caption_source(config: ml_collections.ConfigDict, model_config: ModelConfig, workdir: str) -> DataSource:
    from qwen35_jax.train.caption_ranking import evaluate_ranking, flat_results, format_results

    if model_config.vision is None:
        raise ValueError("config.model.vision is missing: data.kind='captions' trains a vision-language model; "
                         "add a vision section (see configs/vl_tiny.py)")
    data = prepare_caption_data(config.data, workdir)
    model_config = model_config.replace(**data.model_overrides())
    grid = np.asarray(data.layout.grid, np.int64)
    validation = {name: [rows_first(b) for b in batches[:config.train.eval_batches]]
                  for name, batches in data.validation.items()}

    def ranking(model_config: ModelConfig, params: nnx.State) -> dict[str, Any]:
        results = evaluate_ranking(model_config, params, data)
        print(format_results(results), flush=True)
        return flat_results(results)

    return DataSource(model_config, _RowsFirst(data.train), validation, data.train_pairs * data.config.seq_len,
                      vocab_file=VOCAB_FILE, train_is_global=True,
                      static_inputs=lambda rows: {"image_grid_thw": np.tile(grid, (rows, 1))},
                      final_eval=("caption_rank", ranking))


DATA_SOURCES: dict[str, Callable[[ml_collections.ConfigDict, ModelConfig, str], DataSource]] = {
    "text": text_source, "captions": caption_source}
