"""The device mesh from the experiment config (``config.mesh``).

``config.mesh`` (all optional)::

    data, fsdp, sequence, expert, tensor   axis sizes; one may be -1 to absorb the remaining devices (default fsdp)
    rules                                  list of (logical name, mesh axes) pairs replacing ``rules.DEFAULT_RULES``
    expert_dispatch                        "auto" (dropless on TPU/GPU, capacity on CPU) | "dropless" | "ragged" |
                                           "capacity" (see ``qwen35_jax.ops.moe.expert_parallel``)
    gdn_state_exchange                     with mesh.sequence > 1: how the GDN shards compose their state maps,
                                           "scan" (log-depth ppermute) | "gather" (one all_gather; numerics §11.1)
    capacity_factor                        capacity: slots per expert = ceil(factor · local assignments / experts);
                                           ragged: receive buffer = factor · local assignments rows

``Runtime.for_mesh(build_mesh(mesh_config), mesh_config)`` is what the model is built with; the checks of the model
against the mesh (every parameter shards evenly, expert parallelism is possible) run on shapes only in
``qwen35_jax.model.build.validate_model``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from qwen35_jax.parallel.rules import DEFAULT_RULES, MESH_AXES, Rule, check_rules
from qwen35_jax.parallel.runtime import DISPATCHES, EXCHANGES


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Validated ``config.mesh``: requested axis sizes (-1 = the rest), logical rules and MoE dispatch."""

    axes: tuple[tuple[str, int], ...] = (("data", 1), ("fsdp", -1), ("sequence", 1), ("expert", 1), ("tensor", 1))
    rules: tuple[Rule, ...] = DEFAULT_RULES
    expert_dispatch: str = "auto"
    capacity_factor: float = 1.25
    gdn_state_exchange: str = "scan"

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> MeshConfig:
        """Parse ``config.mesh`` (a ConfigDict or dict; None = all defaults)."""
        values = dict(section.items()) if section is not None else {}
        known = set(MESH_AXES) | {"rules", "expert_dispatch", "capacity_factor", "gdn_state_exchange"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config.mesh has unknown field(s) {unknown}: mesh axes are {MESH_AXES}; other fields "
                             "are rules, expert_dispatch, capacity_factor, gdn_state_exchange")
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
        exchange = values.get("gdn_state_exchange", cls.gdn_state_exchange)
        if exchange not in EXCHANGES:
            raise ValueError(f"config.mesh.gdn_state_exchange={exchange!r} is invalid: choose one of {EXCHANGES}")
        return cls(axes=axes, rules=rules, expert_dispatch=dispatch, capacity_factor=float(factor),
                   gdn_state_exchange=exchange)

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
