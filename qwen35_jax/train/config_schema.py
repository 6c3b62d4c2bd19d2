"""The experiment config's training sections, their defaults and up-front validation.

``validate_config(config)`` fills missing fields with ``DEFAULTS``, rejects unknown fields, wrong types and bad
values with a ``ValueError`` naming ``config.<section>.<field>`` and the fix, and returns the ModelConfig — all
before any data is tokenised or anything compiled. (Unknown *command-line* overrides are rejected earlier by
ml_collections' ``config_flags``, whose message names the key.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.captions import CaptionDataConfig
from qwen35_jax.data.mqar import parse_settings
from qwen35_jax.data.text_dataset import parse_corpora, parse_weights, source_name
from qwen35_jax.train.optimizer import DECAY_SHAPES, OPTIMIZERS, SCHEDULES, decay_steps

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "kind": "text",  # data source; see qwen35_jax.train.data_sources.DATA_SOURCES
        # comma-separated: prepared:<dir or URL> (tools.prepare_data), shakespeare, wiki_en, wiki_fr, wiki_es,
        # files:<glob> (qwen35_jax.data.text_dataset)
        "corpora": "shakespeare",
        "weights": "",  # mixture "name=w,...", by source name (a prepared dir's base name); "": by training tokens
        "workers": 0,  # grain worker processes building training batches (0: threads of the training process)
        "seq_len": 256,
        "batch_size": 8,  # global batch (all processes, all micro-batches)
        "seed": 0,  # shuffling
        "split_seed": 0,  # which documents are held out
        "validation_fraction": 0.05,
        "compact_vocab": True,
        "compact_vocab_max_size": 0,
        # Multi-query associative recall (qwen35_jax.data.mqar): keys and values are the 2 x mqar_symbols highest
        # non-special ids of the vocabulary; chance accuracy = 1 / mqar_symbols.
        "mqar_fraction": 0.0,  # share of each training batch's rows replaced by MQAR rows (0: none)
        "mqar_train_pairs": (4, 8, 16),  # key-value pairs of a training MQAR row: one of these, drawn per row
        "mqar_symbols": 64,
        "mqar_eval": "",  # "<length>x<pairs>,...", e.g. "64x4,128x8": scored after training ("": none)
        "mqar_eval_examples": 256,  # sequences per evaluation setting
    },
    "train": {
        "steps": 100,
        "learning_rate": 3e-3,
        "warmup_steps": 10,
        "min_lr_ratio": 0.1,  # the schedule ends at learning_rate * min_lr_ratio (cosine, wsd)
        "schedule": "cosine",  # cosine | wsd | constant (qwen35_jax.train.optimizer; numerics §12.3)
        "decay_fraction": 0.2,  # wsd: the cooldown's share of train.steps (when decay_steps is 0)
        "decay_steps": 0,  # wsd: the cooldown's length in steps (0: decay_fraction x steps)
        "decay_shape": "linear",  # wsd's cooldown: linear | 1-sqrt
        # A decay branch: start from this checkpoint step directory of another run (e.g. "runs/wsd/checkpoints/800")
        # — params, optimizer state, step and data position — when this workdir has no checkpoint yet. The two
        # schedules must agree up to that step (a stable-phase checkpoint of a wsd or constant run).
        "branch_from": "",
        "optimizer": "adamw",  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
        "muon_learning_rate": 0.0,  # Muon's peak learning rate (0: learning_rate); the schedule's shape is shared
        "muon_momentum": 0.95,
        "muon_consistent_rms": 0.0,  # > 0 (e.g. 0.2): scale updates to AdamW's RMS; 0: sqrt(fan_out / fan_in)
        "weight_decay": 0.1,
        "decay_embeddings": False,
        "b1": 0.9,
        "b2": 0.95,
        "grad_clip_norm": 1.0,
        "grad_accum_steps": 1,
        "moment_dtype": "float32",  # AdamW moments: float32 | bfloat16 (pods; the 0.8B on a CPU)
        "loss_chunk": 0,  # LM head + cross-entropy over this many positions at a time (0: the whole sequence)
        "z_loss": 0.0,
        "aux_loss_coef": -1.0,  # < 0: the model's router_aux_loss_coef
        # > 0: add weight x the MTP head's mean cross-entropy over mtp_depth chained steps (numerics §2.9, §10; needs
        # model.mtp_num_hidden_layers >= 1). Its logits are computed whole, whatever train.loss_chunk says.
        "mtp_loss_weight": 0.0,
        "mtp_depth": 1,
        "log_every": 10,
        "eval_every": 0,  # 0: validate only at the start and the end
        "eval_batches": 4,
        "max_nonfinite_in_a_row": 10,
        "debug_nan_steps": (),  # steps whose loss is forced to NaN (tests of the skip logic)
        "peak_flops_per_device": 0.0,  # 0: known accelerators by device kind; needed for MFU on CPU
    },
    "checkpoint": {
        "every": 50,  # steps between saves (plus one at the end and on SIGTERM)
        "keep": 3,
        "keep_steps": (),  # steps also saved and never deleted, e.g. a wsd run's branch points (80, 160)
    },
    "hardware": {
        # The TPU topology the config is written for, e.g. "v5p:4x4x4": ``tools.aot_compile`` compiles for it by
        # default. Training runs on the devices JAX sees whatever this says ("": no particular topology).
        "topology": "",
    },
}
SECTIONS = ("seed", "name", "model", "data", "train", "checkpoint", "mesh", "multihost", "hardware")
MOMENT_DTYPES = ("float32", "bfloat16")

# config.data's fields depend on its kind: text corpora (DEFAULTS["data"]) or image captions (CaptionDataConfig).
DATA_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": DEFAULTS["data"],
    "captions": {"kind": "captions", **{f.name: f.default for f in dataclasses.fields(CaptionDataConfig)}},
}
DATA_KINDS = tuple(DATA_DEFAULTS)


def _require(ok: bool, field: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"config.{field}={value!r} is invalid: {fix}")


def _check_type(field: str, value: Any, default: Any) -> None:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, type(default))
    _require(ok, field, value, f"must be of type {type(default).__name__} (like the default {default!r})")


def add_missing_fields(config: ml_collections.ConfigDict) -> None:
    """Add, in place, every field of ``DEFAULTS`` (for the data section: of its kind) that ``config`` does not set,
    leaving what it sets untouched (typed placeholders, references); nothing is checked here (``validate_config``
    does that). Lets the command line override a field the config file does not spell out."""
    for section, defaults in DEFAULTS.items():
        if section not in config:
            config[section] = ml_collections.ConfigDict()
        if section == "data":
            defaults = DATA_DEFAULTS.get(config.data.get("kind", "text"), defaults)
        for name, value in defaults.items():
            if name not in config[section]:
                config[section][name] = value


def fill_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every section of ``DEFAULTS`` complete; unknown fields and types rejected."""
    unknown = sorted(set(config.keys()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"config has unknown top-level field(s) {unknown}; valid fields: {SECTIONS}")
    config = ml_collections.ConfigDict(config.to_dict())
    for section, defaults in DEFAULTS.items():
        values = dict(config.get(section, {}))
        kind_note = ""
        if section == "data":
            kind = values.get("kind", "text")
            _require(kind in DATA_DEFAULTS, "data.kind", kind, f"choose one of {DATA_KINDS}")
            defaults, kind_note = DATA_DEFAULTS[kind], f" for data.kind={kind!r}"
        bad = sorted(set(values) - set(defaults))
        if bad:
            raise ValueError(f"config.{section} has unknown field(s) {bad}{kind_note}; valid fields: "
                             f"{sorted(defaults)}")
        for name, value in values.items():
            _check_type(f"{section}.{name}", value, defaults[name])
        merged = {**defaults, **values}
        config[section] = ml_collections.ConfigDict(
            {k: (float(v) if isinstance(defaults[k], float) else v) for k, v in merged.items()})
    if "seed" not in config:
        config.seed = 0
    if "name" not in config:
        config.name = ""
    return config


def _check_mqar(data: ml_collections.ConfigDict) -> None:
    """The MQAR fields of a text data section (their vocabulary fit is checked once the vocabulary is built)."""
    _require(0 <= data.mqar_fraction <= 1, "data.mqar_fraction", data.mqar_fraction,
             "must be in [0, 1] (0: no MQAR rows in training), e.g. 0.25")
    _require(data.mqar_symbols >= 1, "data.mqar_symbols", data.mqar_symbols, "must be >= 1, e.g. 64")
    _require(data.mqar_eval_examples >= 1, "data.mqar_eval_examples", data.mqar_eval_examples, "must be >= 1")
    settings: list[tuple[str, int, int]] = []
    if data.mqar_fraction > 0:
        _require(len(data.mqar_train_pairs) > 0, "data.mqar_train_pairs", data.mqar_train_pairs,
                 "name at least one number of pairs, e.g. (4, 8, 16)")
        settings += [("data.mqar_train_pairs", data.seq_len, p) for p in data.mqar_train_pairs]
    try:
        settings += [("data.mqar_eval", length, pairs) for length, pairs in parse_settings(data.mqar_eval)]
    except ValueError as error:
        _require(False, "data.mqar_eval", data.mqar_eval, str(error))
    for field, length, pairs in settings:
        value = data.mqar_train_pairs if field == "data.mqar_train_pairs" else data.mqar_eval
        _require(1 <= pairs <= data.mqar_symbols, field, value,
                 f"{pairs} pairs need 1 <= pairs <= data.mqar_symbols={data.mqar_symbols} (a row's keys are distinct)")
        _require(2 * pairs + 2 <= length, field, value,
                 f"{pairs} pairs and a query need 2 x pairs + 2 = {2 * pairs + 2} tokens, more than the length "
                 f"{length}" + (" (data.seq_len)" if field == "data.mqar_train_pairs" else ""))


def _check_schedule(train: ml_collections.ConfigDict) -> None:
    """The learning-rate schedule's fields (``qwen35_jax.train.optimizer.make_schedule``)."""
    _require(train.schedule in SCHEDULES, "train.schedule", train.schedule, f"choose one of {SCHEDULES}")
    _require(0 <= train.warmup_steps < train.steps, "train.warmup_steps", train.warmup_steps,
             f"must be in [0, train.steps={train.steps}) (the schedule needs at least one step after the warmup)")
    _require(train.decay_shape in DECAY_SHAPES, "train.decay_shape", train.decay_shape, f"choose one of {DECAY_SHAPES}")
    _require(0 < train.decay_fraction <= 1, "train.decay_fraction", train.decay_fraction,
             "must be in (0, 1], e.g. 0.2 (the last 20 % of the steps)")
    _require(train.decay_steps >= 0, "train.decay_steps", train.decay_steps, "use 0 (decay_fraction) or a step count")
    if train.schedule == "wsd":
        cooldown = decay_steps(train)
        _require(1 <= cooldown <= train.steps - train.warmup_steps, "train.decay_steps", train.decay_steps,
                 f"the cooldown of {cooldown} steps must fit after the warmup: 1 <= cooldown <= train.steps - "
                 f"train.warmup_steps = {train.steps - train.warmup_steps} (set train.decay_steps or "
                 "train.decay_fraction)")


def validate_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """Check every field the loop uses (see the module docstring); returns the model config (its vocab_size is
    replaced later when a compact vocabulary is built)."""
    if "model" not in config:
        raise ValueError("config.model is missing: the experiment config needs a model section (see configs/tiny.py)")
    config = fill_defaults(config)
    data, train, ckpt = config.data, config.train, config.checkpoint
    if data.kind == "captions":
        CaptionDataConfig.from_mapping(data)  # every field's value, named in the error
        sequence = config.get("mesh", {}).get("sequence", 1)
        _require(sequence == 1, "mesh.sequence", sequence, "must be 1 for image-caption data: context parallelism "
                 "(numerics §11) splits the text stack only, not the vision tower's patches and their merge into "
                 "the tokens; put the devices on fsdp instead")
    else:
        specs = parse_corpora(data.corpora)
        try:
            parse_weights(data.weights, [source_name(s) for s in specs])
        except ValueError as error:
            raise ValueError(f"config.{error}") from None
        _require(data.workers >= 0, "data.workers", data.workers, "use 0 (threads) or a number of worker processes")
        for name in ("seq_len", "batch_size"):
            _require(data[name] >= 1, f"data.{name}", data[name], "must be >= 1")
        _require(0 < data.validation_fraction < 1, "data.validation_fraction", data.validation_fraction,
                 "must be in (0, 1), e.g. 0.05")
        _require(data.compact_vocab_max_size == 0 or data.compact_vocab_max_size >= 3,
                 "data.compact_vocab_max_size", data.compact_vocab_max_size, "use 0 (no cap) or a size >= 3")
        _check_mqar(data)
    for name in ("steps", "log_every", "eval_batches", "grad_accum_steps", "max_nonfinite_in_a_row"):
        _require(train[name] >= 1, f"train.{name}", train[name], "must be >= 1")
    _check_schedule(train)
    _require(train.optimizer in OPTIMIZERS, "train.optimizer", train.optimizer, f"choose one of {OPTIMIZERS}")
    _require(train.muon_learning_rate >= 0, "train.muon_learning_rate", train.muon_learning_rate,
             "must be >= 0 (0: train.learning_rate), e.g. 0.02")
    _require(0 <= train.muon_momentum < 1, "train.muon_momentum", train.muon_momentum, "must be in [0, 1), e.g. 0.95")
    _require(train.muon_consistent_rms >= 0, "train.muon_consistent_rms", train.muon_consistent_rms,
             "use 0 (shape scaling) or e.g. 0.2 (AdamW's update RMS)")
    _require(train.eval_every >= 0, "train.eval_every", train.eval_every, "use 0 (start and end only) or >= 1")
    _require(train.learning_rate > 0, "train.learning_rate", train.learning_rate, "must be > 0, e.g. 3e-3")
    _require(0 <= train.min_lr_ratio <= 1, "train.min_lr_ratio", train.min_lr_ratio, "must be in [0, 1]")
    _require(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "must be >= 0")
    _require(train.grad_clip_norm > 0, "train.grad_clip_norm", train.grad_clip_norm, "must be > 0, e.g. 1.0")
    _require(train.moment_dtype in MOMENT_DTYPES, "train.moment_dtype", train.moment_dtype,
             f"choose one of {MOMENT_DTYPES}")
    _require(train.loss_chunk >= 0, "train.loss_chunk", train.loss_chunk, "use 0 (all positions at once) or a "
             "positive divisor of data.seq_len, e.g. 256")
    if data.kind == "text":
        _require(train.loss_chunk == 0 or data.seq_len % train.loss_chunk == 0, "train.loss_chunk",
                 train.loss_chunk, f"must divide data.seq_len={data.seq_len} (or be 0)")
    _require(train.z_loss >= 0, "train.z_loss", train.z_loss, "must be >= 0 (0 disables it; e.g. 1e-4)")
    _require(train.mtp_loss_weight >= 0, "train.mtp_loss_weight", train.mtp_loss_weight,
             "must be >= 0 (0 disables the MTP loss; e.g. 0.3)")
    _require(train.mtp_depth >= 1, "train.mtp_depth", train.mtp_depth, "must be >= 1 (chained MTP steps, e.g. 1)")
    _require(data.batch_size % train.grad_accum_steps == 0, "data.batch_size", data.batch_size,
             f"must be a multiple of train.grad_accum_steps={train.grad_accum_steps}")
    _require(ckpt.every >= 1, "checkpoint.every", ckpt.every, "must be >= 1")
    _require(ckpt.keep >= 1, "checkpoint.keep", ckpt.keep, "must be >= 1")
    _require(all(1 <= s <= train.steps for s in ckpt.keep_steps), "checkpoint.keep_steps", ckpt.keep_steps,
             f"every step must be in [1, train.steps={train.steps}]")
    try:
        model_config = ModelConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model is invalid: {error}") from error
    _require(train.muon_consistent_rms == 0 or model_config.parametrization == "sp" or train.optimizer != "muon",
             "train.muon_consistent_rms", train.muon_consistent_rms, "must be 0 under model.parametrization='mup': "
             "the consistent-RMS scale grows with width, the shape scale keeps Muon's updates µP (numerics §12.4)")
    _require(train.mtp_loss_weight == 0 or model_config.mtp_num_hidden_layers >= 1, "train.mtp_loss_weight",
             train.mtp_loss_weight, "needs an MTP head: set model.mtp_num_hidden_layers=1 (or train.mtp_loss_weight=0)")
    return model_config
