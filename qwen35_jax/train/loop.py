"""The training loop behind ``python -m experiments.train``: config → data → sharded model → steps → checkpoints.

  records = train_and_evaluate(config, workdir)

Same code on CPU, GPU and TPU: the model and batches live on the mesh of ``config.mesh`` (a 1-device mesh by
default; see ``qwen35_jax.parallel``), each process feeds its rows of the global batch (``parallel.multihost``).
A rerun of the same command resumes from the newest readable checkpoint in ``WORKDIR/checkpoints`` with the data
iterator, optimizer and RNG state, so on CPU the losses after a resume equal an uninterrupted run's bit for bit.
SIGTERM saves a checkpoint and returns cleanly; Ctrl-C saves one and raises ``TrainingInterrupted`` (a
KeyboardInterrupt), a second Ctrl-C stops at once without saving. Both print one line naming the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from qwen35_jax.model.build import validate_model
from qwen35_jax.parallel import MeshConfig, build_mesh, multihost
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.param_count import non_embedding_count
from qwen35_jax.train.branch import check_branch
from qwen35_jax.train.checkpoint import Checkpoints, check_workdir, restore_checkpoint, save_experiment_config
from qwen35_jax.train.config_schema import fill_defaults, validate_config
from qwen35_jax.train.data_sources import DATA_SOURCES, DataSource
from qwen35_jax.train.flops import peak_flops_per_device, training_flops_per_token
from qwen35_jax.train.metrics import CURVES_FILE, MetricsLog, Progress, plot_curves
from qwen35_jax.train.provenance import record_provenance
from qwen35_jax.train.step import all_finite, mean_nll
from qwen35_jax.train.trainer import batch_sharding, build_trainer, field_sharding

log = logging.getLogger(__name__)
Batch = dict[str, np.ndarray]


def setup_mesh(config: ml_collections.ConfigDict) -> tuple[MeshConfig, Mesh, NamedSharding]:
    """Validate the config (``config_schema``) and build the mesh and the batch sharding: every check that needs
    no data or model (unknown keys, types, values, batch vs data-parallel size) fails here with a ValueError."""
    validate_config(config)
    config = fill_defaults(config)
    multihost.initialize(config.get("multihost"))
    mesh_config = MeshConfig.from_config(config.get("mesh"))
    mesh = build_mesh(mesh_config)
    return mesh_config, mesh, batch_sharding(mesh, mesh_config, config)


def to_global(batch: Batch, sharding: NamedSharding, global_rows: int) -> dict[str, jax.Array]:
    return {k: multihost.global_batch(v, field_sharding(v, sharding), (global_rows, *v.shape[1:]))
            for k, v in batch.items()}


def _local(batch: Batch, sharding: NamedSharding) -> Batch:
    rows = multihost.process_rows(sharding, batch["input_ids"].shape)
    return {k: v[rows] for k, v in batch.items()}


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train_and_evaluate`` after a Ctrl-C once the checkpoint is saved; the message says where it is
    and that rerunning the same command resumes (``qwen35_jax.train.cli`` prints it as the program's last line)."""


class _Stop:
    """SIGTERM or a first Ctrl-C (SIGINT) asks the loop to save a checkpoint and stop at the next step boundary; a
    second Ctrl-C raises KeyboardInterrupt at once, without saving. A SIGINT the process ignores stays ignored."""

    def __init__(self) -> None:
        self.signal_name: str | None = None  # "SIGTERM" / "SIGINT" once a stop is requested
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> _Stop:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                if signum == signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # e.g. started in the background by a non-interactive shell
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: no signal handling
                break
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.signal_name == "SIGINT":  # the second Ctrl-C: stop now, without saving
                signal.signal(signal.SIGINT, self._previous.pop(signal.SIGINT))
                raise KeyboardInterrupt
            with contextlib.suppress(RuntimeError, OSError):  # a handler may interrupt a write to stderr
                print("Ctrl-C: saving a checkpoint at the next step boundary (Ctrl-C again to stop without saving)",
                      file=sys.stderr, flush=True)
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """Run (or resume) the training; returns the metric records (also in ``workdir/metrics.jsonl``)."""
    model_config = validate_config(config)
    mesh_config, mesh, sharding = setup_mesh(config)
    config = fill_defaults(config)
    data_cfg = config.data
    run_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)

    source = DATA_SOURCES[data_cfg.kind](config, model_config, workdir)
    try:
        return _train(config, workdir, source, mesh_config, mesh, sharding, run_start)
    finally:
        if source.close is not None:  # the input pipeline's worker processes
            source.close()


def _train(config: ml_collections.ConfigDict, workdir: str, source: DataSource, mesh_config: MeshConfig, mesh: Mesh,
           sharding: NamedSharding, run_start: float) -> list[dict[str, Any]]:
    """``train_and_evaluate`` once the config is validated, the mesh built and the data source open."""
    train_cfg, data_cfg = config.train, config.data
    model_config = source.model_config
    validate_model(model_config, Runtime.for_mesh(mesh, mesh_config))  # shapes only: every parameter shards evenly
    # another model's checkpoints or another dataset: stop before anything is built, renamed or written
    check_workdir(workdir, model_config, getattr(source.train, "check_state", None))
    checkpoints = Checkpoints(workdir, config.checkpoint.keep, tuple(config.checkpoint.keep_steps))
    branch = None  # (source checkpoint, meta) of a decay branch's first start
    if train_cfg.branch_from and not checkpoints.steps():
        branch = check_branch(config, model_config, getattr(source.train, "check_state", None))
    data_seconds = time.perf_counter() - run_start

    begin = time.perf_counter()
    trainer = build_trainer(config, model_config, mesh, mesh_config, static_inputs=source.static_inputs)
    params = trainer.state["params"]
    train_state = {k: v for k, v in trainer.state.items() if k != "params"}
    replicated = trainer.replicated
    restored = checkpoints.restore_latest(params, train_state)
    if branch is not None:
        restored = restore_checkpoint(branch[0], params, train_state)
    save_experiment_config(workdir, config)
    record_provenance(workdir)
    start_step = 0
    if restored is not None:
        params, train_state, meta = restored
        start_step = int(meta["step"])
        source.train.set_state(meta["data_iterator"])
        multihost.log_once("resuming from step %d (%s)", start_step, checkpoints.directory)
    state = {"params": params, **train_state}
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    init_seconds = time.perf_counter() - begin

    metrics = MetricsLog(workdir, resume_step=start_step if restored is not None else None)
    if branch is not None:
        print(f"branching from {branch[0]} (step {start_step})", flush=True)
        metrics.write({"event": "branch", "from_step": start_step, "checkpoint": os.path.abspath(branch[0])})
    elif restored is not None:
        print(f"resumed from checkpoint step {start_step} in {checkpoints.directory}", flush=True)
        metrics.write({"event": "resume", "from_step": start_step})
    metrics.write({"event": "data", "train_tokens": source.train_tokens, "vocab_size": model_config.vocab_size,
                   "seconds": round(data_seconds, 2)})
    metrics.write({"event": "model", "params": num_params, "non_embedding_params": non_embedding_count(params),
                   "devices": jax.device_count(), "mesh": dict(mesh.shape), "seconds": round(init_seconds, 2)})

    eval_step = trainer.eval_step()
    validation = {name: [to_global(_local(b, sharding), sharding, b["input_ids"].shape[0]) for b in batches]
                  for name, batches in source.validation.items()}

    def run_validation(step: int) -> None:
        begin = time.perf_counter()
        record: dict[str, Any] = {"step": step}
        for name, batches in validation.items():
            record[f"val_loss/{name}"] = mean_nll(eval_step, state["params"], batches)
            record[f"val_ppl/{name}"] = math.exp(min(record[f"val_loss/{name}"], 50.0))
        record["seconds"] = round(time.perf_counter() - begin, 2)
        metrics.write(record)

    def save(step: int) -> None:
        if not bool(all_finite(state)):
            log.warning("not saving step %d: the train state has non-finite values", step)
            return
        meta = {"step": step, "data_iterator": source.train.get_state(), "model_config": model_config.to_dict(),
                "vocab_file": source.vocab_file}
        checkpoints.save(step, state["params"], {k: v for k, v in state.items() if k != "params"}, meta)

    if start_step == 0:
        run_validation(0)
    train_step = None  # built at the first batch, whose fields give the batch shardings
    flops_per_token = training_flops_per_token(model_config, data_cfg.seq_len,
                                               train_cfg.mtp_depth if train_cfg.mtp_loss_weight > 0 else 0)
    peak = peak_flops_per_device(override=train_cfg.peak_flops_per_device)
    tokens_per_step = data_cfg.seq_len * data_cfg.batch_size
    nan_steps = set(train_cfg.debug_nan_steps)
    keep_steps = set(config.checkpoint.keep_steps)
    progress = Progress(train_cfg.steps, start_step)
    last_time, last_step = time.perf_counter(), start_step
    local_rows = data_cfg.batch_size // jax.process_count()
    saved_step = start_step if restored is not None else -1
    step = start_step
    pending: tuple[int, dict[str, jax.Array]] | None = None  # the last step whose non-finite count is unread

    def step_record(step: int, out: dict[str, jax.Array]) -> dict[str, Any]:
        values = jax.device_get(out)
        record = {"step": step, **{k: bool(v) if k == "finite" else int(v) if k.startswith("skipped") else float(v)
                                   for k, v in values.items()}}
        record["perplexity"] = math.exp(min(record["ce"], 50.0)) if math.isfinite(record["ce"]) else math.nan
        return record

    def is_log_step(step: int) -> bool:
        return step % train_cfg.log_every == 0 or step == train_cfg.steps

    def check_nonfinite(step: int, out: dict[str, jax.Array]) -> None:
        """Warn about (and record) a skipped step; stop after ``train.max_nonfinite_in_a_row`` in a row."""
        in_a_row = int(out["skipped_in_a_row"])
        if not in_a_row:
            return
        log.warning("step %d: non-finite loss or gradient; update skipped (%d in a row)", step, in_a_row)
        if not is_log_step(step):
            metrics.write(step_record(step, out), echo=False)
        if in_a_row >= train_cfg.max_nonfinite_in_a_row:
            metrics.write({"event": "stopped", "step": step, "reason": f"{in_a_row} non-finite steps in a row"})
            checkpoints.wait()
            metrics.close()
            raise FloatingPointError(
                f"stopped at step {step}: {in_a_row} consecutive steps had a non-finite loss or gradient "
                f"(train.max_nonfinite_in_a_row={train_cfg.max_nonfinite_in_a_row}); the last checkpoint is "
                f"{checkpoints.steps()[-1:] or 'none'}. Lower train.learning_rate, raise train.warmup_steps or "
                "check the data.")

    with _Stop() as stop:
        for step in range(start_step + 1, train_cfg.steps + 1):
            rows = next(source.train)
            batch = to_global(_local(rows, sharding) if source.train_is_global else rows, sharding,
                              local_rows * jax.process_count())
            if train_step is None:
                train_step = trainer.step_for(batch)
            state, out = train_step(state, batch, jax.device_put(np.asarray(step in nan_steps), replicated))
            if step == start_step + 1:  # the first step includes compilation: time it apart
                jax.block_until_ready(out)
                metrics.write({"event": "compile", "step": step, "seconds": round(time.perf_counter() - last_time, 2)})
                last_time, last_step = time.perf_counter(), step
            if pending is not None:  # read one step late: the host never waits for the step it just queued
                check_nonfinite(*pending)
            pending = (step, out)
            if is_log_step(step):
                record = step_record(step, out)
                now = time.perf_counter()
                per_step = (now - last_time) / (step - last_step) if step > last_step else None
                if per_step:
                    record["tokens_per_s"] = round(tokens_per_step / per_step, 1)
                    record["model_tflops_per_s"] = flops_per_token * record["tokens_per_s"] / 1e12
                    if peak:
                        record["mfu"] = flops_per_token * record["tokens_per_s"] / (peak * jax.device_count())
                if source.tokens_seen is not None:
                    record.update({f"tokens/{name}": n for name, n in source.tokens_seen(step).items()})
                metrics.write(record, echo=False)
                print(progress.line(step, record["loss"], record.get("tokens_per_s"), per_step), flush=True)
                last_time, last_step = now, step
            stopping = stop.requested  # read once: a signal may arrive between the save and the stop
            if step % config.checkpoint.every == 0 or step in keep_steps or stopping:
                check_nonfinite(*pending)  # a checkpoint's metrics are complete up to its step
                pending = None
                save(step)
                saved_step = step
            if stopping:
                checkpoints.wait()
                metrics.write({"event": "preempted", "step": step, "signal": stop.signal_name}, echo=False)
                metrics.close()
                newest = checkpoints.steps()[-1:]  # the step just saved, unless its state was non-finite
                saved = os.path.join(checkpoints.directory, str(newest[0])) if newest else "none"
                how = "Ctrl-C" if stop.signal_name == "SIGINT" else stop.signal_name
                message = f"stopped at step {step} ({how}); checkpoint: {saved}; rerun the same command to resume"
                if stop.signal_name == "SIGINT":
                    raise TrainingInterrupted(message)
                if jax.process_index() == 0:
                    print(message, flush=True)
                return metrics.records
            if train_cfg.eval_every and step % train_cfg.eval_every == 0 and step != train_cfg.steps:
                run_validation(step)
                last_time, last_step = time.perf_counter(), step
    if pending is not None:
        check_nonfinite(*pending)
    if saved_step != step:
        save(step)
    checkpoints.wait()
    run_validation(step)
    if source.final_eval is not None:
        name, evaluate = source.final_eval
        metrics.write({"event": name, "step": step, **evaluate(model_config, state["params"])}, echo=False)
    metrics.write({"event": "done", "step": step, "skipped": int(state["skipped"]),
                   "seconds": round(time.perf_counter() - run_start, 1)})
    if jax.process_index() == 0:
        plot_curves(metrics.records, os.path.join(workdir, CURVES_FILE), title=os.path.basename(workdir.rstrip("/")))
    metrics.close()
    return metrics.records


