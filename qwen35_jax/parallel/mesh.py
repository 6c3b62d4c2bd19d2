"""The device mesh from the experiment config (``config.mesh``), model shardings, and the model's sharding hooks.

``config.mesh`` (all optional)::

    data, fsdp, sequence, expert, tensor   axis sizes; one may be -1 to absorb the remaining devices (default fsdp)
    rules                                  list of (logical name, mesh axes) pairs replacing ``rules.DEFAULT_RULES``
    expert_dispatch                        "auto" (dropless on TPU/GPU, capacity on CPU) | "dropless" | "ragged" |
                                           "capacity" (see ``moe_ep``)
    capacity_factor                        capacity: slots per expert = ceil(factor · local assignments / experts);
                                           ragged: receive buffer = factor · local assignments rows

Every check runs on shapes only (``nnx.eval_shape``) and raises ``ValueError`` naming the field and the fix before
anything is compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM
from qwen35_jax.model.decoder import DecoderStack
from qwen35_jax.model.gated_deltanet import GatedDeltaNet
from qwen35_jax.model.moe import SparseMoE
from qwen35_jax.ops.gated_delta_rule import gated_delta_rule
from qwen35_jax.ops.gated_delta_rule.api import resolve_impl
from qwen35_jax.parallel.moe_ep import ExpertParallel, expert_parallel_for
from qwen35_jax.parallel.rules import DEFAULT_RULES, MESH_AXES, Rule, check_rules, spec_for, state_shardings

DISPATCHES = ("auto", "dropless", "ragged", "capacity")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Validated ``config.mesh``: requested axis sizes (-1 = the rest), logical rules and MoE dispatch."""

    axes: tuple[tuple[str, int], ...] = (("data", 1), ("fsdp", -1), ("sequence", 1), ("expert", 1), ("tensor", 1))
    rules: tuple[Rule, ...] = DEFAULT_RULES
    expert_dispatch: str = "auto"
    capacity_factor: float = 1.25

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> MeshConfig:
        """Parse ``config.mesh`` (a ConfigDict or dict; None = all defaults)."""
        values = dict(section.items()) if section is not None else {}
        known = set(MESH_AXES) | {"rules", "expert_dispatch", "capacity_factor"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.mesh has unknown field(s) {unknown}: mesh axes are {MESH_AXES}; other fields "
                             "are rules, expert_dispatch, capacity_factor")
        defaults = dict(cls.axes)
        axes = tuple((name, values.get(name, defaults[name])) for name in MESH_AXES)
        if "fsdp" not in values and any(values.get(name) == -1 for name in MESH_AXES):
            axes = tuple((n, 1 if n == "fsdp" else s) for n, s in axes)  # another axis absorbs the rest
        for name, size in axes:
            if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
                raise ValueError(f"config.mesh.{name}={size!r} is invalid: use a positive size or -1 (the rest)")
        if sum(size == -1 for _, size in axes) > 1:
            raise ValueError(f"config.mesh has more than one -1 axis ({dict(axes)}): at most one axis may absorb "
                             "the remaining devices")
        rules = check_rules(values["rules"]) if values.get("rules") is not None else DEFAULT_RULES
        dispatch = values.get("expert_dispatch", cls.expert_dispatch)
        if dispatch not in DISPATCHES:
            raise ValueError(f"config.mesh.expert_dispatch={dispatch!r} is invalid: choose one of {DISPATCHES}")
        factor = values.get("capacity_factor", cls.capacity_factor)
        if not factor > 0:
            raise ValueError(f"config.mesh.capacity_factor={factor!r} is invalid: must be > 0 (e.g. 1.25)")
        return cls(axes=axes, rules=rules, expert_dispatch=dispatch, capacity_factor=float(factor))

    def axis_sizes(self, num_devices: int) -> dict[str, int]:
        """Concrete sizes for ``num_devices`` devices (the -1 axis takes what the others leave)."""
        fixed = math.prod(size for _, size in self.axes if size != -1)
        sizes = dict(self.axes)
        free = [name for name, size in self.axes if size == -1]
        if free:
            if num_devices % fixed:
                raise ValueError(f"config.mesh {dict(self.axes)}: the fixed axes need a multiple of {fixed} devices "
                                 f"but there are {num_devices}; change the fixed sizes")
            sizes[free[0]] = num_devices // fixed
        elif fixed != num_devices:
            raise ValueError(f"config.mesh {dict(self.axes)}: the axis sizes multiply to {fixed} but there are "
                             f"{num_devices} devices; fix the sizes or set one axis to -1 to absorb the rest")
        return sizes


def build_mesh(mesh_config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with every axis of ``MESH_AXES`` (sizes 1 included), Auto axis types (GSPMD propagation).

    Devices are laid out by ``jax.make_mesh`` (topology-aware); when a mesh axis needs part of a physical axis
    (e.g. expert=8 on a 4x4x4 torus) the physical axes are split instead.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_config.axis_sizes(len(devices))
    shape, types = tuple(sizes[a] for a in MESH_AXES), (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, types, devices=devices)
    except NotImplementedError:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, MESH_AXES, axis_types=types)


def abstract_model(config: ModelConfig) -> nnx.Module:
    return nnx.eval_shape(lambda: Qwen35ForCausalLM(config, rngs=nnx.Rngs(0)))


def model_shardings(model: nnx.Module, mesh: Mesh, rules: Sequence[Rule]) -> nnx.State:
    """NamedShardings of every model variable (raises ValueError on a dimension the rules cannot shard)."""
    return state_shardings(nnx.state(model), mesh, rules)


def validate(config: ModelConfig, mesh: Mesh, mesh_config: MeshConfig) -> None:
    """All mesh / model consistency checks on shapes only: every parameter shards evenly (heads vs ``tensor``,
    experts vs ``expert``, ...) and the expert-parallel dispatch is possible."""
    model = abstract_model(config)
    model_shardings(model, mesh, mesh_config.rules)
    if config.is_moe:
        _expert_parallel(config, mesh, mesh_config)


def _expert_parallel(config: ModelConfig, mesh: Mesh, mesh_config: MeshConfig) -> ExpertParallel | None:
    return expert_parallel_for(config, mesh, mesh_config.rules, mesh_config.expert_dispatch,
                               mesh_config.capacity_factor)


def shard_model(model: nnx.Module, mesh: Mesh, rules: Sequence[Rule]) -> nnx.Module:
    """Move the model's variables onto ``mesh`` as the rules say (in place; also returns the model)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    return model


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """``x [B, T, H] -> x`` constrained to (act_batch, act_seq, act_embed); a static decoder hook."""

    mesh: Mesh
    rules: tuple[Rule, ...]

    def __call__(self, x: jax.Array) -> jax.Array:
        spec = spec_for(("act_batch", "act_seq", "act_embed"), x.shape, self.mesh, self.rules, "residual stream")
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))


@dataclasses.dataclass(frozen=True)
class ShardedDeltaRule:
    """The gated delta rule inside ``jax.shard_map`` over the batch (act_batch) and head (gdn heads) axes: how a
    Pallas kernel, an opaque custom call the SPMD partitioner cannot split, runs on a mesh. The sequence stays whole
    on each device (the recurrence runs along it). A static ``GatedDeltaNet`` hook."""

    mesh: Mesh
    rules: tuple[Rule, ...]
    impl: str

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, g: jax.Array, beta: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        batch = spec_for(("act_batch",), q.shape[:1], self.mesh, self.rules, "gated delta rule batch")[0]
        heads = spec_for(("gdn_value_heads",), v.shape[2:3], self.mesh, self.rules, "gated delta rule heads")[0]
        # Value head j reads key head j // (Hv / Hk): splitting both head axes into equal contiguous parts keeps
        # every pair on one device.
        spec_for(("gdn_key_heads",), k.shape[2:3], self.mesh, self.rules, "gated delta rule key heads")
        heads4, heads3 = P(batch, None, heads, None), P(batch, None, heads)

        def local(q, k, v, g, beta, segment_ids):
            out, _ = gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, use_qk_l2norm=True, impl=self.impl)
            return out

        return jax.shard_map(local, mesh=self.mesh, in_specs=(heads4, heads4, heads4, heads3, heads3, P(batch, None)),
                             out_specs=heads4, check_vma=False)(q, k, v, g, beta, segment_ids)


def install_hooks(model: nnx.Module, config: ModelConfig, mesh: Mesh, mesh_config: MeshConfig) -> nnx.Module:
    """Activation constraints on the decoder stack, the MoE layers' shard_map dispatch (``moe_ep``) and, when the
    gated delta rule resolves to a Pallas kernel, its ``ShardedDeltaRule``; in place.

    Call it on the model whose forward will be traced (the hooks are static attributes, part of the graphdef)."""
    expert_parallel = _expert_parallel(config, mesh, mesh_config) if config.is_moe else None
    gdn_impl = resolve_impl(config.gdn_impl)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, DecoderStack):
            module.constrain_activations = ActivationSharding(mesh, mesh_config.rules)
        elif isinstance(module, SparseMoE):
            module.expert_parallel = expert_parallel
        elif isinstance(module, GatedDeltaNet) and gdn_impl.startswith("pallas"):
            module.sharded_rule = ShardedDeltaRule(mesh, tuple(mesh_config.rules), gdn_impl)
    return model
