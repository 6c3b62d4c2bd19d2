"""Everything a training run compiles, built from the experiment config alone: the one factory behind
``experiments.train`` (concrete arrays on the local devices) and ``tools.aot_compile`` (abstract arrays on a TPU
topology's devices).

  trainer = build_trainer(config, model_config, mesh, mesh_config)                  # train here
  trainer = build_trainer(config, model_config, topology_mesh, mesh_config, abstract=True)   # AOT
  step = trainer.step_for(batch)     # the jitted ``step.make_train_step`` for this batch's fields
  state, metrics = step(trainer.state, batch, poison)

The model is built with its runtime (``model.build``: MoE dispatch, gated-delta-rule kernel and activation sharding
chosen for the mesh and its backend), the optimizer comes from ``train.optimizer`` (moments in
``train.moment_dtype``), the state's shardings from the logical rules, the batch's from the activation rules. The
abstract build allocates nothing: every leaf is a ShapeDtypeStruct carrying its NamedSharding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qwen35_jax.config import ModelConfig
from qwen35_jax.data.packing import FIELDS
from qwen35_jax.model.build import build_model
from qwen35_jax.ops.gated_delta_rule.sharded import check_sequence_split
from qwen35_jax.parallel.mesh import MeshConfig
from qwen35_jax.parallel.rules import as_axes, axes_size, spec_for, state_shardings
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.train.optimizer import make_optimizer
from qwen35_jax.train.step import StaticInputs, make_eval_step, make_train_step

TRAIN_COUNTERS = ("step", "skipped", "skipped_in_a_row")


def batch_sharding(mesh: Mesh, mesh_config: MeshConfig, config: ml_collections.ConfigDict) -> NamedSharding:
    """Sharding of ``[batch, seq]`` arrays; checks the batch divides the data-parallel ways (per micro-batch)."""
    spec = spec_for(("act_batch", "act_seq"), (None, None), mesh, mesh_config.rules, "batch")
    axes = as_axes(spec[0])
    ways = axes_size(mesh, axes)
    accum, batch = config.train.grad_accum_steps, config.data.batch_size
    if batch % (ways * accum):
        raise ValueError(f"config.data.batch_size={batch} is not divisible by the data-parallel size {ways} "
                         f"(mesh axes {axes}) x train.grad_accum_steps={accum}; use a multiple of {ways * accum}")
    sharding = NamedSharding(mesh, spec_for(("act_batch", "act_seq"), (batch // accum, config.data.seq_len), mesh,
                                            mesh_config.rules, "batch"))
    check_sequence_split(config.data.seq_len, axes_size(mesh, sharding.spec[1]),
                         "config.data.seq_len")
    return sharding


def field_sharding(array: Any, sharding: NamedSharding) -> NamedSharding:
    """``[B, T]`` fields take the batch sharding; others (``positions [B, 3, T]``, ``pixel_values [B, P, C]``) are
    split along their rows only."""
    if array.ndim == 2:
        return sharding
    return NamedSharding(sharding.mesh, PartitionSpec(sharding.spec[0] if sharding.spec else None))


def abstract_text_batch(config: ml_collections.ConfigDict, sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of the text data source (``data.packing.FIELDS``) as ShapeDtypeStructs (AOT compiles)."""
    shape = (config.data.batch_size, config.data.seq_len)
    return {name: jax.ShapeDtypeStruct(shape, jnp.bool_ if name == "loss_mask" else jnp.int32, sharding=sharding)
            for name in FIELDS}


def _abstract(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


@dataclasses.dataclass
class Trainer:
    """The built pieces of a run (see the module docstring)."""

    config: ml_collections.ConfigDict
    model_config: ModelConfig
    runtime: Runtime
    graphdef: nnx.GraphDef
    rest: nnx.State
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state: dict[str, Any]  # params, opt_state, step, skipped, skipped_in_a_row, rng
    state_shardings: dict[str, Any]
    batch_sharding: NamedSharding  # of [batch, seq] fields (per micro-batch rows)
    static_inputs: StaticInputs | None = None

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.batch_sharding.mesh, PartitionSpec())

    def step_for(self, batch: dict[str, Any]) -> Callable[[dict, dict, jax.Array], tuple[dict, dict]]:
        """The jitted training step for batches shaped like ``batch`` (arrays or ShapeDtypeStructs), with the
        state, batch and outputs pinned to their shardings: one compilation per run."""
        return make_train_step(self.graphdef, self.rest, self.tx, self.schedule, self.model_config, self.config.train,
                               state_shardings=self.state_shardings,
                               batch_sharding={k: field_sharding(v, self.batch_sharding) for k, v in batch.items()},
                               replicated=self.replicated, static_inputs=self.static_inputs)

    def eval_step(self) -> Callable:
        return make_eval_step(self.graphdef, self.rest, self.static_inputs, self.config.train.loss_chunk)


def build_trainer(config: ml_collections.ConfigDict, model_config: ModelConfig, mesh: Mesh, mesh_config: MeshConfig,
                  *, backend: str | None = None, abstract: bool = False,
                  static_inputs: StaticInputs | None = None) -> Trainer:
    """The run's model, optimizer, sharded train state and batch sharding (``config`` has its defaults filled).

    ``backend`` names the target when it differs from the mesh devices' platform; ``abstract`` builds
    ShapeDtypeStructs only (nothing is allocated or initialised)."""
    runtime = Runtime.for_mesh(mesh, mesh_config, backend=backend)
    batch = batch_sharding(mesh, mesh_config, config)
    model = build_model(model_config, runtime, seed=config.seed, abstract=abstract)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    del model
    replicated = NamedSharding(mesh, PartitionSpec())
    param_shardings = state_shardings(params, mesh, mesh_config.rules)
    tx, schedule = make_optimizer(config.train, params, model_config)
    opt_shapes = jax.eval_shape(tx.init, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, param_shardings,
                                          transform_non_params=lambda _: replicated)
    shardings = {"params": param_shardings, "opt_state": opt_shardings, **dict.fromkeys(TRAIN_COUNTERS, replicated),
                 "rng": replicated}
    if abstract:
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        shapes = {"params": params, "opt_state": opt_shapes, **dict.fromkeys(TRAIN_COUNTERS, scalar), "rng": key}
        state = _abstract(shapes, shardings)
    else:
        state = {"params": params, "opt_state": jax.jit(tx.init, out_shardings=opt_shardings)(params),
                 **{name: jax.device_put(np.zeros((), np.int32), replicated) for name in TRAIN_COUNTERS},
                 "rng": jax.device_put(jax.random.key_data(jax.random.key(config.seed)), replicated)}
    return Trainer(config=config, model_config=model_config, runtime=runtime, graphdef=graphdef, rest=rest, tx=tx,
                   schedule=schedule, state=state, state_shardings=shardings, batch_sharding=batch,
                   static_inputs=static_inputs)
