"""AOT-compile the trainer's own training step for a TPU topology on this CPU host (libtpu) and report per-chip memory.

  python -m tools.aot_compile --config configs/qwen35_397b_a17b.py:v5p-64
  python -m tools.aot_compile --config configs/qwen35_35b_a3b.py:v5p-32 --config.train.loss_chunk=512
  python -m tools.aot_compile --sweep [--sweep_configs=configs/qwen35_35b_a3b.py:v5p-32,...]

Everything comes from the experiment config: the topology (``hardware.topology``, or ``--topology``), the mesh and
MoE dispatch (``mesh``), dtypes, remat, GDN kernel, loss chunk and optimizer (``model`` / ``train``), the global
batch (``data.batch_size`` sequences of ``data.seq_len`` tokens). The step is exactly the one ``experiments.train``
jits: ``train.trainer.build_trainer`` (abstract) → ``Trainer.step_for`` → ``train.step.make_train_step``, lowered
with ShapeDtypeStructs carrying the topology's NamedShardings, so nothing is allocated.

Printed: mesh, per-chip memory from the compiler (arguments, outputs, aliased, temporaries, generated code), compile
time, the compiler's FLOP count and time estimate, and an MFU estimate. XLA's cost analysis counts a while-loop body
once: one scanned block and one LM-head chunk. Nearly all FLOPs live in those two loops, so the scan-corrected
estimate is ``head + scan iterations · (compiler FLOPs − head / chunks)`` with the head's 6·tokens·H·V FLOPs per
chip, and the step time is the compiler's time estimate scaled by the same factor. MFU (estimate) = model FLOPs
(``train.flops``) / (chips · peak bf16 FLOP/s · that step time). The last line reads e.g.
``per-chip total: 61.20 GiB of 88.5 GiB HBM (fits)``. ``XLA_FLAGS=--xla_dump_to=DIR`` also makes the compiler write
``*memory-usage-report.txt`` (the largest buffers). ``--sweep`` prints one Markdown row per config variant (the
README's table); a variant that fails gets a "failed" row and one ``error: ...`` line on stderr (its traceback when
the failure is not a user error, or with ``QWEN35_JAX_DEBUG=1``). Otherwise a bad config, override or topology ends
the program with one ``error: ...`` line (``qwen35_jax.train.cli``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling needs no TPU; ignore libtpu's TPU lockfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from qwen35_jax.model.build import validate_model  # noqa: E402
from qwen35_jax.parallel.mesh import MeshConfig, build_mesh  # noqa: E402
from qwen35_jax.parallel.runtime import Runtime  # noqa: E402
from qwen35_jax.parallel.sharding import sequence_shards  # noqa: E402
from qwen35_jax.train.cli import define_experiment_config, report_user_error, run  # noqa: E402
from qwen35_jax.train.config_schema import fill_defaults, validate_config  # noqa: E402
from qwen35_jax.train.flops import GIB, Accelerator, accelerator_for_topology, training_flops_per_token  # noqa: E402
from qwen35_jax.train.recipes import load_config_file  # noqa: E402
from qwen35_jax.train.trainer import abstract_text_batch, build_trainer  # noqa: E402
from tools.hlo_collectives import collective_bytes, format_table  # noqa: E402

# The variants the README's AOT table is built from (``--sweep``).
SWEEP_CONFIGS = ("configs/qwen35_397b_a17b.py:v5p-64", "configs/qwen35_397b_a17b.py:v5p-256",
                 "configs/qwen35_35b_a3b.py:v5p-32", "configs/qwen35_35b_a3b.py:v6e-64",
                 "configs/qwen35_397b_a17b.py:v5p-256-262k", "configs/qwen35_35b_a3b.py:v5p-64-262k")

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _CONFIG = define_experiment_config("config", "Experiment config, e.g. "
                                            "configs/qwen35_397b_a17b.py:v5p-64.")
    _TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology (default: the config's hardware.topology), "
                                    "e.g. v5p:8x8x4, v5e:16x16, v6e:8x8.")
    _SWEEP = flags.DEFINE_bool("sweep", False, "Compile every config of --sweep_configs and print a Markdown table.")
    _SWEEP_CONFIGS = flags.DEFINE_list("sweep_configs", list(SWEEP_CONFIGS), "Config variants for --sweep.")
    _HLO_OUT = flags.DEFINE_string("hlo_out", None, "Also write the compiled (optimized) HLO text to this file.")


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    topology: str
    mesh: dict[str, int]
    recipe: str  # dispatch, loss chunk, GDN, remat, dtypes
    memory: object  # the compiler's CompiledMemoryStats
    compile_seconds: float
    compiler_flops: float  # per chip, each scan body counted once
    compiler_seconds: float  # likewise
    head_flops: float  # per chip
    head_pieces: int  # the LM head runs in a scan over this many chunks
    scan_iterations: int  # iterations of the decoder's block scan
    model_flops: float  # per step, all chips
    chip: Accelerator
    chips: int
    sequence_shards: int = 1  # > 1: context parallel (numerics §11)
    sequences: int = 0  # the global batch: data.batch_size sequences ...
    seq_len: int = 0  # ... of data.seq_len tokens
    collectives: dict = dataclasses.field(default_factory=dict)  # (source, op) -> bytes per chip per step

    @property
    def total_bytes(self) -> int:
        m = self.memory
        return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
                + m.generated_code_size_in_bytes)

    @property
    def fits(self) -> bool:
        return self.total_bytes / GIB <= self.chip.hbm_gib

    @property
    def scan_factor(self) -> float:
        """Executed / compiler-counted FLOPs when every scanned block is counted (see the module docstring)."""
        loop = max(self.compiler_flops - self.head_flops / self.head_pieces, 0.0)
        return (self.head_flops + self.scan_iterations * loop) / self.compiler_flops

    @property
    def step_seconds(self) -> float:
        return self.compiler_seconds * self.scan_factor

    @property
    def mfu(self) -> float | None:
        """None when the compiler gave no usable time estimate: libtpu's v6e cost model returns negative times, and
        with the sequence split the flash attention's key-block loops have data-dependent trip counts, which the cost
        model counts once (the estimate would flatter the step)."""
        if not self.step_seconds > 0 or self.sequence_shards > 1:
            return None
        return self.model_flops / (self.chips * self.chip.peak_flops * self.step_seconds)

    @property
    def tokens_per_step(self) -> int:
        return self.sequences * self.seq_len

    @property
    def tokens_per_chip_second(self) -> float | None:
        """Tokens per second per chip at the step-time estimate (None where the MFU estimate is None)."""
        return None if self.mfu is None else self.tokens_per_step / self.chips / self.step_seconds

    def batch_text(self) -> str:
        return f"{self.sequences:,} × {self.seq_len:,} tokens"

    def mesh_text(self) -> str:
        return " × ".join(f"{k} {v}" for k, v in self.mesh.items() if v > 1) or "single chip"

    def verdict(self) -> str:
        return (f"per-chip total: {self.total_bytes / GIB:.2f} GiB of {self.chip.hbm_gib:.1f} GiB HBM "
                f"({'fits' if self.fits else 'does not fit'})")


def recipe_text(config: ml_collections.ConfigDict, mesh: MeshConfig) -> str:
    model, train = config.model, config.train
    dispatch = f"{mesh.expert_dispatch} {mesh.capacity_factor:g}×" if model.get("num_experts", 0) else "dense"
    return (f"{dispatch}, loss chunk {train.loss_chunk}, {model.gdn_impl}, remat {model.remat_policy}, "
            f"{model.param_dtype} weights / {train.moment_dtype} moments")


def compile_config(config: ml_collections.ConfigDict, topology: str | None = None,
                   hlo_out: str | None = None) -> Report:
    """Lower and compile the trainer's step for ``config`` on ``topology`` (default ``config.hardware.topology``);
    ``hlo_out``: also write the optimized HLO text there."""
    from jax.experimental import topologies

    model_config = validate_config(config)
    config = fill_defaults(config)
    topology = topology or config.hardware.topology
    if not topology:
        raise ValueError("config.hardware.topology is empty: pass --topology (e.g. v5p:4x4x4) or use a pod variant "
                         "such as configs/qwen35_397b_a17b.py:v5p-64")
    chip = accelerator_for_topology(topology)
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    mesh_config = MeshConfig.from_config(config.get("mesh"))
    mesh = build_mesh(mesh_config, devices)
    runtime = Runtime.for_mesh(mesh, mesh_config, backend="tpu")
    validate_model(model_config, runtime)
    trainer = build_trainer(config, model_config, mesh, mesh_config, backend="tpu", abstract=True)
    batch = abstract_text_batch(config, trainer.batch_sharding)
    poison = jax.ShapeDtypeStruct((), jnp.bool_, sharding=NamedSharding(mesh, PartitionSpec()))
    start = time.perf_counter()
    compiled = trainer.step_for(batch).lower(trainer.state, batch, poison).compile()
    seconds = time.perf_counter() - start
    hlo = compiled.as_text()
    if hlo_out:
        with open(hlo_out, "w", encoding="utf-8") as f:
            f.write(hlo)
    cost = compiled.cost_analysis()
    seq, chips, accum = config.data.seq_len, len(devices), config.train.grad_accum_steps
    chunk = config.train.loss_chunk
    return Report(name=config.name or "model", topology=topology, mesh=dict(mesh.shape),
                  recipe=recipe_text(config, mesh_config),
                  memory=compiled.memory_analysis(), compile_seconds=seconds,
                  # The compiler counts one micro-batch of the gradient-accumulation scan: scale it to all of them.
                  compiler_flops=float(cost.get("flops", 0.0)) * accum,
                  compiler_seconds=float(cost.get("optimal_seconds", float("nan"))) * accum,
                  head_flops=6.0 * config.data.batch_size * seq * model_config.hidden_size * model_config.vocab_size
                  / chips,
                  head_pieces=seq // chunk if 0 < chunk < seq else 1,
                  scan_iterations=-(-model_config.num_blocks // model_config.scan_unroll),
                  model_flops=training_flops_per_token(model_config, seq, config.train.mtp_depth
                                                         if config.train.mtp_loss_weight > 0 else 0)
                  * config.data.batch_size * seq,
                  chip=chip, chips=chips, sequence_shards=sequence_shards(runtime),
                  collectives=collective_bytes(hlo), sequences=config.data.batch_size, seq_len=seq)


def describe(report: Report) -> str:
    m = report.memory
    lines = [
        f"{report.name} on {report.topology} ({report.chips} chips), mesh {report.mesh_text()}",
        f"  recipe                  {report.recipe}",
        f"  batch                   {report.batch_text()} = {report.tokens_per_step:,} tokens per step, "
        f"{report.tokens_per_step / report.chips:,.0f} per chip",
        f"  compile time            {report.compile_seconds:10.1f} s",
        f"  arguments               {m.argument_size_in_bytes / GIB:10.2f} GiB per chip",
        f"  outputs                 {m.output_size_in_bytes / GIB:10.2f} GiB (aliased with arguments: "
        f"{m.alias_size_in_bytes / GIB:.2f} GiB)",
        f"  temporaries             {m.temp_size_in_bytes / GIB:10.2f} GiB",
        f"  generated code          {m.generated_code_size_in_bytes / GIB:10.2f} GiB",
        f"  compiler FLOPs          {report.compiler_flops:10.3e} per chip (each scan body once)",
        f"  compiler time estimate  {report.compiler_seconds:10.3f} s (each scan body once)",
        f"  executed FLOPs (est.)   {report.compiler_flops * report.scan_factor:10.3e} per chip per step "
        f"({report.scan_iterations} block-scan iterations)",
        f"  step time (estimate)    {report.step_seconds:10.3f} s",
        f"  model FLOPs             {report.model_flops / report.chips:10.3e} per chip per step",
        "  MFU (estimate)          " + ("n/a (no usable compiler time estimate)" if report.mfu is None
                                         else f"{100 * report.mfu:10.1f} %"),
        f"  step time at peak       {report.model_flops / (report.chips * report.chip.peak_flops):10.3f} s "
        "(model FLOPs / peak: the bound an MFU of 100 % would reach)",
        "  tokens per chip         " + ("n/a per second (no usable step-time estimate)"
                                         if report.tokens_per_chip_second is None
                                         else f"{report.tokens_per_chip_second:10,.0f} per second at the step-time "
                                         "estimate"),
        "  collectives (GiB per chip per step: tools/hlo_collectives.py, loop trips counted):",
        *("    " + row for row in format_table(report.collectives).splitlines()),
    ]
    return "\n".join(lines)


TABLE_HEADER = ("| config | topology (chips) | mesh | batch (sequences × tokens) | tokens per chip | recipe | "
                "arguments | temporaries | per-chip total | compile | MFU (est.) | tokens/s per chip (est.) |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(report: Report) -> str:
    m = report.memory
    mfu = "n/a" if report.mfu is None else f"{100 * report.mfu:.1f} %"
    rate = "n/a" if report.tokens_per_chip_second is None else f"{report.tokens_per_chip_second:,.0f}"
    return (f"| `{report.name}` | {report.topology} ({report.chips}) | {report.mesh_text()} | {report.batch_text()} | "
            f"{report.tokens_per_step / report.chips:,.0f} | {report.recipe} | "
            f"{m.argument_size_in_bytes / GIB:.2f} GiB | {m.temp_size_in_bytes / GIB:.2f} GiB | "
            f"**{report.total_bytes / GIB:.2f} GiB** of {report.chip.hbm_gib:.1f} "
            f"({'fits' if report.fits else 'does not fit'}) | {report.compile_seconds:.0f} s | {mfu} | {rate} |")


def sweep(specs: list[str]) -> None:
    print(TABLE_HEADER, flush=True)
    for spec in specs:
        try:
            print(table_row(compile_config(load_config_file(spec))), flush=True)
        except Exception as error:  # one failed compile (e.g. out of HBM) must not end the sweep
            if report_user_error(error) is None:  # one line for a user error, else the traceback
                traceback.print_exc(file=sys.stderr)
            print(f"| `{spec}` | failed: {type(error).__name__}: {str(error).splitlines()[0][:200]} |", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.a.b=value")
    if _SWEEP.value:
        sweep(_SWEEP_CONFIGS.value)
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (or --sweep), e.g. --config configs/qwen35_397b_a17b.py:v5p-64")
    report = compile_config(_CONFIG.value, _TOPOLOGY.value, _HLO_OUT.value)
    print(describe(report))
    print(report.verdict())


if __name__ == "__main__":
    run(main, compilation_cache=False)  # the TPU executables compiled here are never run on this host
