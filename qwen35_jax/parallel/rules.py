"""Logical axis rules: which mesh axes each logical axis name (parameter or activation dimension) is sharded over.

A rule is a ``(logical name, mesh axes)`` pair; ``mesh axes`` is one axis name, a tuple of them, or None (replicate).
A logical name may have several rules: they are candidates tried in order, and the first one whose (size > 1) mesh
axes are still unused by the array's earlier dimensions and whose total size divides the dimension is taken. A name
without rules is replicated. When no candidate divides a dimension, resolution raises ``ValueError`` — add an
explicit ``(name, None)`` fallback to replicate instead (the default rules do that only for ``kv_heads`` and the
vision tower).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rule = tuple[str, tuple[str, ...]]  # normalised by ``check_rules``

# Mesh axis order: outermost (data parallel, may cross slices) to innermost (most communication-heavy).
MESH_AXES = ("data", "fsdp", "sequence", "expert", "tensor")

# Activations at layer boundaries ([batch, seq, embed]) and the MoE token dispatch use these names.
ACTIVATION_AXES = ("act_batch", "act_seq", "act_embed")
PARAMETER_AXES = (
    "embed", "vocab", "q_heads", "kv_heads", "head_dim", "mlp", "expert", "expert_mlp", "gdn_key_heads",
    "gdn_value_heads", "gdn_head_dim", "conv", "norm", "layers", "mtp_concat", "vision_embed", "vision_heads",
    "vision_merged", "vision_merged_out", "vision_mlp", "vision_patch", "vision_positions", "vision_qkv",
)
LOGICAL_AXES = frozenset(ACTIVATION_AXES + PARAMETER_AXES)

_DATA_LIKE = ("fsdp", "sequence", "expert")  # axes that split tokens; weights are sharded over them (ZeRO-3)

_DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("act_batch", ("data", "fsdp", "expert")),
    ("act_seq", "sequence"),
    ("vocab", "tensor"),
    ("embed", _DATA_LIKE),
    ("embed", ("fsdp", "sequence")),  # expert weights: their expert dim already uses `expert`
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv_heads", None),  # fewer kv heads than the tensor axis: replicate them (GQA)
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
    ("gdn_key_heads", "tensor"),
    ("gdn_value_heads", "tensor"),
    ("vision_embed", _DATA_LIKE),
    ("vision_embed", ("fsdp", "sequence")),
    ("vision_embed", None),
    ("vision_qkv", "tensor"),
    ("vision_mlp", "tensor"),
    ("vision_merged_out", "tensor"),
    ("vision_qkv", None),
    ("vision_mlp", None),
    ("vision_merged_out", None),
)

# The ModelConfig field that sets each logical dimension, for error messages.
CONFIG_FIELDS = {
    "embed": "hidden_size", "vocab": "vocab_size", "q_heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads", "head_dim": "head_dim", "mlp": "intermediate_size or "
    "shared_expert_intermediate_size", "expert": "num_experts", "expert_mlp": "moe_intermediate_size",
    "gdn_key_heads": "linear_num_key_heads", "gdn_value_heads": "linear_num_value_heads",
}


def as_axes(mesh_axes: MeshAxes) -> tuple[str, ...]:
    if mesh_axes is None:
        return ()
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def axes_size(mesh: Mesh, axes: MeshAxes) -> int:
    """Devices along ``axes`` of ``mesh`` (one name, a tuple of names, or None: 1)."""
    return math.prod(mesh.shape[a] for a in as_axes(axes))


def check_rules(rules: Iterable[Sequence]) -> tuple[Rule, ...]:
    """Normalise rules to ``(name, tuple of mesh axes)`` pairs, rejecting unknown logical or mesh axis names."""
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"mesh.rules entry {rule!r} is invalid: each rule is a (logical name, mesh axes) pair")
        name, mesh_axes = rule
        if name not in LOGICAL_AXES:
            raise ValueError(f"mesh.rules names unknown logical axis {name!r}: use one of {sorted(LOGICAL_AXES)}")
        axes = as_axes(mesh_axes)
        unknown = [a for a in axes if a not in MESH_AXES]
        if unknown or len(set(axes)) != len(axes):
            raise ValueError(f"mesh.rules entry {rule!r} is invalid: mesh axes must be distinct names from "
                             f"{MESH_AXES} (or None to replicate)")
        out.append((name, axes))
    return tuple(out)


DEFAULT_RULES = check_rules(_DEFAULT_RULES)


def _divisibility_error(where: str, dim: int, name: str, size: int, tried: list[tuple[tuple[str, ...], int]]) -> str:
    field = CONFIG_FIELDS.get(name)
    source = f" (ModelConfig.{field})" if field else ""
    options = ", ".join(f"{axes}={n}" for axes, n in tried)
    return (f"{where}: dimension {dim} is logical axis {name!r} of size {size}{source}, which no rule can shard "
            f"evenly: tried mesh axes {options}. Fix: choose mesh sizes whose product divides {size}, or add a "
            f"fallback rule ({name!r}, None) to replicate it.")


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int | None], mesh_shape: Mapping[str, int],
                    rules: Sequence[Rule], where: str = "array") -> PartitionSpec:
    """PartitionSpec of an array whose dimensions carry ``logical_axes`` (see the module docstring); a ``None``
    size (not known yet) takes the first candidate with free mesh axes."""
    if len(logical_axes) != len(shape):
        raise ValueError(f"{where}: logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for dim, (name, size) in enumerate(zip(logical_axes, shape, strict=True)):
        candidates = [axes for rule_name, axes in rules if rule_name == name] if name is not None else []
        chosen: tuple[str, ...] = ()
        tried = []
        for axes in candidates:
            active = tuple(a for a in axes if mesh_shape[a] > 1)
            if used.intersection(active):
                continue
            ways = math.prod(mesh_shape[a] for a in active)
            if size is None or size % ways == 0:
                chosen = active
                break
            tried.append((active, ways))
        else:
            if tried:
                raise ValueError(_divisibility_error(where, dim, name, size, tried))
        used.update(chosen)
        spec.append(chosen[0] if len(chosen) == 1 else chosen or None)
    return PartitionSpec(*spec)


def spec_for(logical_axes: Sequence[str | None], shape: Sequence[int | None], mesh: Mesh, rules: Sequence[Rule],
             where: str = "array") -> PartitionSpec:
    return logical_to_spec(logical_axes, shape, dict(mesh.shape), rules, where)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Sequence[Rule]) -> nnx.State:
    """The same State with each Variable's value replaced by its NamedSharding (from ``out_sharding`` metadata)."""

    def one(path: tuple, variable: nnx.Variable) -> nnx.Variable:
        where = "/".join(str(p) for p in path)
        axes = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
        return variable.replace(NamedSharding(mesh, spec_for(axes, variable.shape, mesh, rules, where)))

    return jax.tree.map_with_path(lambda path, v: one(tuple(getattr(k, "key", k) for k in path), v), state,
                                  is_leaf=lambda x: isinstance(x, nnx.Variable))
