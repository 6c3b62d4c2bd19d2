"""AOT-compile the full training step for a TPU topology on this CPU host (libtpu) and report per-chip memory.

  python -m tools.aot_compile --config configs/qwen35_397b_a17b.py --topology v5p:8x8x4 --mesh fsdp=32,expert=8 \
      --seq 4096 --batch-per-chip 1
  python -m tools.aot_compile --sweep [--sweep_sizes=qwen35_9b,qwen35_35b_a3b] [--sweep_topologies=v5p:4x4x4]

The step is forward, backward and an AdamW update with bf16 parameters and bf16 Adam moments, fp32 gradients (the
loss is differentiated with respect to an fp32 view of the bf16 parameters), full rematerialisation of every decoder
layer, ``--batch-per-chip`` sequences of ``--seq`` tokens per chip. The LM head and cross-entropy run per
``--loss_chunk`` positions under remat, so the [B, T, V] logits never exist at once. Nothing is allocated: the model,
the optimizer state and the batch are ShapeDtypeStructs with NamedShardings on the topology's abstract devices. The
mesh comes from ``config.mesh`` (if the config has one) with ``--mesh`` overriding single axes; without either, MoE
models get ``expert=8`` and every model ``fsdp`` = the remaining chips.

Printed: mesh, per-chip memory from the compiler (arguments, outputs, aliased, temporaries, generated code), compile
time, the compiler's FLOP count and time estimate, and an MFU estimate. XLA's cost analysis counts a while-loop body
once: one scanned block and one LM-head chunk. Nearly all FLOPs live in those two loops, so the scan-corrected
estimate is ``head + num_blocks · (compiler FLOPs − head / chunks)`` with the head's 6·tokens·H·V FLOPs per chip, and
the step time is the compiler's time estimate scaled by the same factor. MFU (estimate) = model FLOPs (6 · active
params · tokens + causal attention + GDN core) / (chips · peak bf16 FLOP/s · that step time). The last line reads
e.g. ``per-chip total: 61.20 GiB of 88.5 GiB HBM (fits)``. ``XLA_FLAGS=--xla_dump_to=DIR`` also makes the compiler
write ``*memory-usage-report.txt`` (the largest buffers).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling needs no TPU; ignore libtpu's TPU lockfile

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from qwen35_jax.config import FULL_ATTENTION, ModelConfig  # noqa: E402
from qwen35_jax.model import Qwen35ForCausalLM  # noqa: E402
from qwen35_jax.model.moe import load_balancing_loss  # noqa: E402
from qwen35_jax.ops.backend import compile_target  # noqa: E402
from qwen35_jax.parallel.mesh import MeshConfig, abstract_model, build_mesh, install_hooks, validate  # noqa: E402
from qwen35_jax.parallel.rules import MESH_AXES, spec_for, state_shardings  # noqa: E402
from qwen35_jax.param_count import count_parameters  # noqa: E402
from qwen35_jax.presets import PRESETS  # noqa: E402
from qwen35_jax.train.losses import token_nll  # noqa: E402

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    hbm_gib: float
    peak_flops: float  # bf16 FLOP/s


CHIPS = {"v5p": Chip(95e9 / GIB, 459e12), "v5e": Chip(16e9 / GIB, 197e12), "v6e": Chip(32e9 / GIB, 918e12)}
SWEEP_TOPOLOGIES = ("v5p:4x4x4", "v5p:8x8x4", "v6e:8x8")

# Flags exist only when this file runs as a program: importing it (tests, notebooks) defines none, so several
# command-line modules can be imported in one process.
if __name__ == "__main__":
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                              lock_config=False)
    _TOPOLOGY = flags.DEFINE_string("topology", "v5p:8x8x4", "TPU topology, e.g. v5p:8x8x4, v5e:16x16, v6e:8x8.")
    _MESH = flags.DEFINE_string("mesh", "", "Mesh axis overrides, e.g. fsdp=32,expert=8 (axes: data, fsdp, sequence, "
                                "expert, tensor; -1 = the remaining chips).")
    _SEQ = flags.DEFINE_integer("seq", 4096, "Tokens per sequence.")
    _BATCH = flags.DEFINE_integer("batch_per_chip", 1, "Sequences per chip (global batch = this x chips).")
    _LOSS_CHUNK = flags.DEFINE_integer("loss_chunk", 512, "Positions per LM-head / cross-entropy chunk.")
    _GDN_IMPL = flags.DEFINE_string("gdn_impl", "chunked", "Gated delta rule implementation: chunked (XLA) or "
                                    "pallas_tpu / auto (the Mosaic kernel in shard_map, as on a real TPU).")
    _BLOCK_Q = flags.DEFINE_integer("attention_block_q", None, "Queries per attention block (0: all at once); "
                                    "default: the config's ModelConfig.attention_block_q.")
    _DISPATCH = flags.DEFINE_string("dispatch", None, "Override config.mesh.expert_dispatch (dropless | ragged | "
                                    "capacity).")
    _CAPACITY = flags.DEFINE_float("capacity_factor", None, "Override config.mesh.capacity_factor.")
    _SWEEP = flags.DEFINE_bool("sweep", False, "Compile every released size on a few topologies and print a table.")
    _SWEEP_SIZES = flags.DEFINE_list("sweep_sizes", sorted(PRESETS), "Preset names for --sweep.")
    _SWEEP_TOPOLOGIES = flags.DEFINE_list("sweep_topologies", list(SWEEP_TOPOLOGIES), "Topologies for --sweep.")


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    topology: str
    mesh: dict[str, int]
    memory: object  # the compiler's CompiledMemoryStats
    compile_seconds: float
    compiler_flops: float  # per chip, scanned block counted once
    compiler_seconds: float  # likewise
    head_flops: float  # per chip
    head_pieces: int  # the LM head runs in a scan over this many chunks
    num_blocks: int
    model_flops: float  # per step, all chips
    chip: Chip
    chips: int

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
        return (self.head_flops + self.num_blocks * loop) / self.compiler_flops

    @property
    def step_seconds(self) -> float:
        return self.compiler_seconds * self.scan_factor

    @property
    def mfu(self) -> float | None:
        """None when the compiler gave no usable time estimate (libtpu's v6e cost model returns negative times)."""
        if not self.step_seconds > 0:
            return None
        return self.model_flops / (self.chips * self.chip.peak_flops * self.step_seconds)

    def verdict(self) -> str:
        return (f"per-chip total: {self.total_bytes / GIB:.2f} GiB of {self.chip.hbm_gib:.1f} GiB HBM "
                f"({'fits' if self.fits else 'does not fit'})")


def chip_for(topology: str) -> Chip:
    generation = topology.split(":")[0]
    if generation not in CHIPS:
        raise ValueError(f"--topology={topology!r}: unknown TPU generation {generation!r}; use one of {sorted(CHIPS)}")
    return CHIPS[generation]


def parse_mesh(text: str) -> dict[str, int]:
    fields = {}
    for item in filter(None, text.split(",")):
        name, _, size = item.partition("=")
        if name not in MESH_AXES or not size.lstrip("-").isdigit():
            raise ValueError(f"--mesh item {item!r} is invalid: write axis=size with axis in {MESH_AXES}")
        fields[name] = int(size)
    return fields


def default_mesh(config: ModelConfig, chips: int) -> dict[str, int]:
    """expert=8 (or the largest power of two dividing experts and chips) for MoE, fsdp = the rest."""
    if not config.is_moe:
        return {"fsdp": -1}
    expert = next(e for e in (8, 4, 2, 1) if config.num_experts % e == 0 and chips % e == 0)
    return {"fsdp": -1, "expert": expert}


def training_config(config: ModelConfig, gdn_impl: str, attention_block_q: int | None = None) -> ModelConfig:
    # scan_unroll=1: the FLOP estimate counts one block per scan iteration (``Report.scan_factor``).
    config = config.replace(dtype="bfloat16", param_dtype="bfloat16", remat_policy="full", gdn_impl=gdn_impl,
                            scan_unroll=1)
    return config if attention_block_q is None else config.replace(attention_block_q=attention_block_q)


def model_flops_per_token(config: ModelConfig, seq: int) -> float:
    """6 · active text matmul params + causal attention + the GDN core, forward + backward."""
    counts = count_parameters(config)
    # The input embedding is a gather, not a matmul, unless it is also the (tied) LM head.
    dense = 6 * (counts.active_text if config.tie_word_embeddings else counts.active_text_without_input_embedding)
    attention_layers = sum(t == FULL_ATTENTION for t in config.layer_types)
    attention = attention_layers * 6 * seq * config.num_attention_heads * config.head_dim  # 12·T·nq·hd, halved
    gdn = (config.num_hidden_layers - attention_layers) * 24 * config.linear_num_value_heads * \
        config.linear_key_head_dim * config.linear_value_head_dim
    return dense + attention + gdn


def chunked_lm_loss(model: Qwen35ForCausalLM, batch: dict[str, jax.Array], chunk: int) -> jax.Array:
    """The model's forward + masked cross-entropy + aux loss, with the LM head and the loss run per ``chunk``
    positions under remat, so the [B, T, V] logits (and their fp32 gradient) never exist at once."""
    ids = batch["input_ids"]
    x, stats = model.decoder(model.embed(ids), model.layer_inputs(ids, None, None, None))
    hidden = model.norm(x)
    batch_size, length, width = hidden.shape
    pieces = length // chunk

    def split(a: jax.Array) -> jax.Array:
        return a.reshape(batch_size, pieces, chunk, *a.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_nll(h: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
        return jnp.sum(token_nll(model.unembed(h), targets) * mask)

    def body(total: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
        return total + chunk_nll(*xs), None

    mask = batch["loss_mask"].astype(jnp.float32)
    nll, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (split(hidden), split(batch["targets"]), split(mask)))
    aux = load_balancing_loss(stats) if stats is not None else 0.0
    return nll / jnp.maximum(jnp.sum(mask), 1.0) + model.config.router_aux_loss_coef * aux


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_chunk: int) -> Callable:
    def loss_fn(params: nnx.State, batch: dict[str, jax.Array]) -> jax.Array:
        return chunked_lm_loss(nnx.merge(graphdef, params), batch, loss_chunk)

    def train_step(params: nnx.State, opt_state: optax.OptState, batch: dict[str, jax.Array]):
        fp32_view = jax.tree.map(lambda p: p.astype(jnp.float32), params)  # gradients come out fp32
        loss, grads = jax.value_and_grad(loss_fn)(fp32_view, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def compile_step(name: str, config: ModelConfig, topology: str, mesh_section: dict, seq: int,
                 batch_per_chip: int, loss_chunk: int) -> Report:
    """Compile the step; ``mesh_section`` is ``config.mesh`` (axes missing altogether: ``default_mesh``)."""
    from jax.experimental import topologies

    chip = chip_for(topology)
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    if not any(axis in mesh_section for axis in MESH_AXES):
        mesh_section = dict(default_mesh(config, len(devices)), **mesh_section)
    mesh_config = MeshConfig.from_config(mesh_section)
    mesh = build_mesh(mesh_config, devices)
    validate(config, mesh, mesh_config)
    with compile_target("tpu"):  # gdn_impl auto / pallas_tpu: the Mosaic kernel, in shard_map
        return _compile_step(name, config, topology, chip, devices, mesh, mesh_config, seq, batch_per_chip,
                             loss_chunk)


def _compile_step(name: str, config: ModelConfig, topology: str, chip: Chip, devices: list, mesh: Mesh,
                  mesh_config: MeshConfig, seq: int, batch_per_chip: int, loss_chunk: int) -> Report:
    model = install_hooks(abstract_model(config), config, mesh, mesh_config)
    graphdef, params = nnx.split(model)
    param_shardings = state_shardings(params, mesh, mesh_config.rules)
    params = _abstract(params, param_shardings)
    tx = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.1, mu_dtype=jnp.bfloat16)  # nu follows the bf16 params
    opt_shapes = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, param_shardings,
                                          transform_non_params=lambda _: NamedSharding(mesh, P()))
    opt_state = _abstract(opt_shapes, opt_shardings)
    batch = _abstract_batch(mesh, mesh_config, batch_per_chip * len(devices), seq)

    if seq % loss_chunk:
        raise ValueError(f"--seq={seq} must be a multiple of --loss_chunk={loss_chunk}")
    step = jax.jit(make_train_step(graphdef, tx, loss_chunk), donate_argnums=(0, 1),
                   out_shardings=(param_shardings, opt_shardings, NamedSharding(mesh, P())))
    start = time.perf_counter()
    compiled = step.lower(params, opt_state, batch).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    tokens = batch_per_chip * len(devices) * seq
    return Report(name=name, topology=topology, mesh=dict(mesh.shape), memory=compiled.memory_analysis(),
                  compile_seconds=seconds, compiler_flops=float(cost.get("flops", 0.0)),
                  compiler_seconds=float(cost.get("optimal_seconds", float("nan"))),
                  head_flops=6.0 * tokens * config.hidden_size * config.vocab_size / len(devices),
                  head_pieces=seq // loss_chunk,
                  num_blocks=config.num_blocks, model_flops=model_flops_per_token(config, seq) * tokens, chip=chip,
                  chips=len(devices))


def _abstract_batch(mesh: Mesh, mesh_config: MeshConfig, batch: int, seq: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = spec_for(("act_batch", "act_seq"), (batch, seq), mesh, mesh_config.rules, "batch")
    sharding = NamedSharding(mesh, spec)
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=sharding)
    return {"input_ids": ids, "targets": ids, "loss_mask": jax.ShapeDtypeStruct((batch, seq), jnp.bool_,
                                                                                 sharding=sharding)}


def describe(report: Report) -> str:
    m = report.memory
    mesh = ", ".join(f"{k}={v}" for k, v in report.mesh.items() if v > 1) or "single chip"
    lines = [
        f"{report.name} on {report.topology} ({report.chips} chips), mesh {mesh}",
        f"  compile time            {report.compile_seconds:10.1f} s",
        f"  arguments               {m.argument_size_in_bytes / GIB:10.2f} GiB per chip",
        f"  outputs                 {m.output_size_in_bytes / GIB:10.2f} GiB (aliased with arguments: "
        f"{m.alias_size_in_bytes / GIB:.2f} GiB)",
        f"  temporaries             {m.temp_size_in_bytes / GIB:10.2f} GiB",
        f"  generated code          {m.generated_code_size_in_bytes / GIB:10.2f} GiB",
        f"  compiler FLOPs          {report.compiler_flops:10.3e} per chip (one scanned block)",
        f"  compiler time estimate  {report.compiler_seconds:10.3f} s (one scanned block)",
        f"  executed FLOPs (est.)   {report.compiler_flops * report.scan_factor:10.3e} per chip per step "
        f"({report.num_blocks} blocks)",
        f"  step time (estimate)    {report.step_seconds:10.3f} s",
        f"  model FLOPs             {report.model_flops / report.chips:10.3e} per chip per step",
        "  MFU (estimate)          " + ("n/a (no usable compiler time estimate)" if report.mfu is None
                                         else f"{100 * report.mfu:10.1f} %"),
    ]
    return "\n".join(lines)


def sweep(names: list[str], topologies: list[str], seq: int, batch_per_chip: int, gdn_impl: str,
          loss_chunk: int) -> None:
    header = f"{'size':<20} {'topology':<11} {'mesh':<26} {'GiB/chip':>9} {'HBM GiB':>8} {'fits':>5} {'compile s':>10}"
    print(header)
    for name in names:
        config = training_config(ModelConfig.from_dict(PRESETS[name]), gdn_impl)
        for topology in topologies:
            try:
                r = compile_step(name, config, topology, {}, seq, batch_per_chip, loss_chunk)
            except ValueError as err:
                print(f"{name:<20} {topology:<11} skipped: {err}")
                continue
            mesh = ",".join(f"{k}={v}" for k, v in r.mesh.items() if v > 1)
            print(f"{name:<20} {topology:<11} {mesh:<26} {r.total_bytes / GIB:9.2f} {r.chip.hbm_gib:8.1f} "
                  f"{'yes' if r.fits else 'no':>5} {r.compile_seconds:10.1f}", flush=True)


def main(argv: list[str]) -> None:
    del argv
    if _SWEEP.value:
        sweep(_SWEEP_SIZES.value, _SWEEP_TOPOLOGIES.value, _SEQ.value, _BATCH.value, _GDN_IMPL.value,
              _LOSS_CHUNK.value)
        return
    experiment = _CONFIG.value
    if experiment is None:
        raise app.UsageError("--config is required (or --sweep)")
    config = training_config(ModelConfig.from_dict(experiment.model.to_dict()), _GDN_IMPL.value, _BLOCK_Q.value)
    mesh_section = dict(experiment.get("mesh", None) or {}, **parse_mesh(_MESH.value))
    if _DISPATCH.value:
        mesh_section["expert_dispatch"] = _DISPATCH.value
    if _CAPACITY.value is not None:
        mesh_section["capacity_factor"] = _CAPACITY.value
    report = compile_step(experiment.get("name", "model"), config, _TOPOLOGY.value, mesh_section, _SEQ.value,
                          _BATCH.value, _LOSS_CHUNK.value)
    print(describe(report))
    print(report.verdict())


if __name__ == "__main__":
    app.run(main)
