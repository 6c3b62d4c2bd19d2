"""Probes of a trained text model: held-out bits per byte per corpus and in-context recall (MQAR) accuracy.

  probes = build_probes(config.data, data, max_batches=config.train.eval_batches)    # host-side sets, built once
  record = run_probes(probes, graphdef, rest, params, eval_step, loss_chunk=config.train.loss_chunk)
  # {"bpb/shakespeare": 2.1, "mqar/64x4": 0.93, "mqar/128x8": 0.41, "mqar_chance": 0.015625}

The same functions score the end of a training run (``data_sources.text_source``'s ``final_eval``) and a checkpoint
(``experiments.eval``).

Bits per byte of a corpus = Σ NLL (nats) of the loss-masked targets of its validation batches (the batches of the
training loop's ``val_loss``: the first held-out windows of the source's prepared dataset, in order) / (ln 2 · Σ UTF-8
bytes of those targets). A target's bytes are those of its real Qwen3.5 token (``QwenTokenizer.token_byte_lengths``),
read from the real-id windows: a target that is ``<unk>`` in a
capped compact vocabulary counts the bytes of the token it replaced, so the denominator is the held-out text's byte
count whatever the vocabulary (the model then only pays for predicting ``<unk>``, not for which token: a heavily
capped vocabulary flatters bits per byte). The end-of-text token closing each document counts 0 bytes (it is not
text) but its NLL counts.

MQAR accuracy of a setting ``<L>x<P>`` (``data.mqar_eval``): ``data.mqar_eval_examples`` rows of ``L`` tokens with
``P`` pairs (``qwen35_jax.data.mqar``), drawn from ``[EVAL_STREAM, L, P]``: a fixed set, the same for every run with
the same vocabulary and ``data.mqar_symbols``, whatever ``data.seed`` (training rows come from another stream). The
fraction of answer positions where the argmax over the whole vocabulary is the paired value; chance is
``1 / data.mqar_symbols``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.mqar import (
    EVAL_STREAM,
    SymbolBands,
    answer_positions,
    mqar_rows,
    parse_settings,
    setting_name,
)
from qwen35_jax.data.packing import FIELDS, PackedRows, fixed_batches
from qwen35_jax.data.prepared.dataset import TokenWindows, window_row
from qwen35_jax.data.text_dataset import TextData
from qwen35_jax.data.tokenizer import get_tokenizer
from qwen35_jax.data.vocab import UNK_ID
from qwen35_jax.model.build import build_model
from qwen35_jax.parallel.mesh import MeshConfig
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.step import StaticInputs, model_inputs, pooled_ratio

Batch = dict[str, np.ndarray]


def text_bands(data: TextData, symbols: int) -> SymbolBands:
    """The MQAR key / value bands of a text run: the ``2 * symbols`` highest model-space ids that are neither a
    special token (end-of-text ...) nor ``<unk>``."""
    specials = np.asarray(sorted(get_tokenizer().special_tokens.values()))
    exclude = set(specials.tolist()) if data.vocab is None else {UNK_ID, *data.vocab.to_compact(specials).tolist()}
    return SymbolBands.last_ids(data.vocab_size, symbols, exclude)


def validation_rows(windows: TokenWindows, to_model: np.ndarray | None, batch_size: int,
                    max_batches: int | None) -> tuple[PackedRows, int]:
    """The first ``max_batches`` batches' worth of held-out windows (``None``: all of them) as rows in model ids,
    and the UTF-8 bytes of their loss-masked targets, counted on the real ids (module docstring)."""
    count = len(windows) if max_batches is None else min(len(windows), max_batches * batch_size)
    if count < 1:
        raise ValueError(f"{windows.dataset.directory} has no held-out tokens to evaluate on; prepare it with a "
                         "larger validation fraction")
    byte_lengths = get_tokenizer().token_byte_lengths
    rows, num_bytes = [], 0
    for index in range(count):
        window = windows.read(index)
        real = window_row(window, windows.eos_id)
        num_bytes += int(np.sum(byte_lengths[real["targets"]] * real["loss_mask"]))
        rows.append(real if to_model is None else window_row(window, windows.eos_id, to_model))
    stacked = PackedRows(**{name: np.stack([r[name] for r in rows]) for name in FIELDS})
    return stacked, num_bytes


def nll_sum(eval_step: Callable, params: nnx.State, batches: Sequence[Batch]) -> tuple[float, float]:
    """``(Σ NLL in nats, number of targets)`` over the loss-masked targets of ``batches`` (``step.make_eval_step``)."""
    total, count = 0.0, 0.0
    for batch in batches:
        nll, n = eval_step(params, batch)
        total, count = total + float(nll), count + float(n)
    return total, count


def bits_per_byte(nats: float, num_bytes: int) -> float:
    """``nats / (ln 2 · num_bytes)``; NaN when there are no bytes."""
    return nats / (math.log(2) * num_bytes) if num_bytes > 0 else math.nan


def make_answer_step(graphdef: nnx.GraphDef, rest: nnx.State, positions: np.ndarray, loss_chunk: int = 0,
                     static_inputs: StaticInputs | None = None) -> Callable[[nnx.State, Any], tuple[jax.Array, ...]]:
    """``(params, batch) -> (correct answers, answers)``: the LM head runs only at ``positions`` (the answer
    positions shared by every row of a setting), ``loss_chunk`` of them at a time (0: all), and a position counts
    where ``loss_mask`` is set. Jitted; one compilation per batch shape."""
    positions = np.asarray(positions)

    @jax.jit
    def answer_step(params: nnx.State, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        model = nnx.merge(graphdef, params, rest)
        out = model(batch["input_ids"], compute_logits=False, **model_inputs(batch, static_inputs))
        hidden = out.hidden_states[:, positions]
        targets, mask = batch["targets"][:, positions], batch["loss_mask"][:, positions]
        rows, count = targets.shape
        chunk = loss_chunk if 0 < loss_chunk < count else count
        pad = -count % chunk

        def split(a: jax.Array) -> jax.Array:  # [B, Q, ...] -> [Q / chunk, B, chunk, ...], padded with zeros
            a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
            return a.reshape(rows, -1, chunk, *a.shape[2:]).swapaxes(0, 1)

        def hits(xs: tuple[jax.Array, ...]) -> jax.Array:
            h, t, m = xs
            return jnp.sum((jnp.argmax(model.unembed(h), axis=-1) == t) & m)

        correct = jax.lax.map(hits, (split(hidden), split(targets), split(mask.astype(bool))))
        return jnp.sum(correct), jnp.sum(mask.astype(jnp.int32))

    return answer_step


def mqar_accuracy(answer_step: Callable, params: nnx.State, batches: Sequence[Batch]) -> float:
    """Fraction of correct answers over ``batches`` (``make_answer_step``)."""
    return pooled_ratio(answer_step, params, batches)


@dataclasses.dataclass(frozen=True)
class ProbeSets:
    """What ``run_probes`` scores, built once on the host (see ``build_probes``)."""

    validation: dict[str, list[Batch]]  # model-space batches per corpus (the loop's validation batches)
    validation_bytes: dict[str, int]  # UTF-8 bytes of their loss-masked targets
    mqar: dict[str, list[Batch]]  # batches per setting name "<L>x<P>"
    mqar_positions: dict[str, np.ndarray]  # answer positions per setting
    mqar_chance: float | None  # 1 / S; None without MQAR settings


def build_probes(data_cfg: ml_collections.ConfigDict, data: TextData, max_batches: int | None) -> ProbeSets:
    """Validation batches per source (``max_batches`` each; ``None``: all) with their byte counts, and the MQAR
    evaluation sets of ``data_cfg.mqar_eval`` in batches of ``data_cfg.batch_size`` rows."""
    seq_len, batch_size = data_cfg.seq_len, data_cfg.batch_size
    validation, num_bytes = {}, {}
    for name, windows in data.validation_windows(seq_len).items():
        rows, num_bytes[name] = validation_rows(windows, data.to_model, batch_size, max_batches)
        validation[name] = fixed_batches(rows, batch_size, -(-len(rows) // batch_size))
    settings = parse_settings(data_cfg.mqar_eval)
    mqar, positions, chance = {}, {}, None
    if settings:
        bands = text_bands(data, data_cfg.mqar_symbols)
        chance = bands.chance
        for length, pairs in settings:
            rows = mqar_rows(data_cfg.mqar_eval_examples, length, pairs, bands, seed=[EVAL_STREAM, length, pairs])
            name = setting_name(length, pairs)
            mqar[name] = fixed_batches(rows, batch_size, -(-len(rows) // batch_size))
            positions[name] = answer_positions(length, pairs)
    return ProbeSets(validation, num_bytes, mqar, positions, chance)


def model_graph(model_config: ModelConfig, params: nnx.State,
                mesh_config: MeshConfig | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """``(graphdef, rest)`` of the model for ``params``, built for the mesh the parameters live on (with the
    rules of ``mesh_config``), or for one device when they are not on a mesh."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, NamedSharding) and mesh_config is not None:
        runtime = Runtime.for_mesh(sharding.mesh, mesh_config)
    else:
        runtime = Runtime.local()
    graphdef, _, rest = nnx.split(build_model(model_config, runtime, abstract=True), nnx.Param, ...)
    return graphdef, rest


def run_probes(probes: ProbeSets, graphdef: nnx.GraphDef, rest: nnx.State, params: nnx.State, eval_step: Callable,
               loss_chunk: int = 0) -> dict[str, float]:
    """One flat record: ``bpb/<corpus>`` per validation corpus, ``mqar/<L>x<P>`` per MQAR setting and
    ``mqar_chance`` (with MQAR settings)."""
    record = {f"bpb/{name}": bits_per_byte(nll_sum(eval_step, params, batches)[0], probes.validation_bytes[name])
              for name, batches in probes.validation.items()}
    return {**record, **mqar_scores(probes, graphdef, rest, params, loss_chunk)}


def mqar_scores(probes: ProbeSets, graphdef: nnx.GraphDef, rest: nnx.State, params: nnx.State,
                loss_chunk: int = 0) -> dict[str, float]:
    """``mqar/<L>x<P>`` accuracy per MQAR setting and ``mqar_chance`` (``{}`` without settings)."""
    record: dict[str, float] = {}
    for name, batches in probes.mqar.items():
        step = make_answer_step(graphdef, rest, probes.mqar_positions[name], loss_chunk)
        record[f"mqar/{name}"] = mqar_accuracy(step, params, batches)
    if probes.mqar_chance is not None:
        record["mqar_chance"] = probes.mqar_chance
    return record


def format_probes(record: dict[str, float]) -> str:
    """The probe record as two lines: bits per byte per corpus, MQAR accuracy per setting (with chance)."""
    lines = ["bits per byte: " + "  ".join(f"{k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("bpb/"))]
    mqar = [f"{k[5:]} {v:.3f}" for k, v in record.items() if k.startswith("mqar/")]
    if mqar:
        lines.append(f"MQAR accuracy (chance {record['mqar_chance']:.4f}): " + "  ".join(mqar))
    return "\n".join(lines)
