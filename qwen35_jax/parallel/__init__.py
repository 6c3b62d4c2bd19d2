"""Meshes, logical axis rules, expert parallelism and multi-process helpers.

``rules``: logical axis names → mesh axes. ``mesh``: ``config.mesh`` → Mesh, model shardings, validation, the
model's sharding hooks. ``moe_ep``: expert-parallel MoE dispatch in ``shard_map``. ``multihost``: jax.distributed.
"""

from qwen35_jax.parallel.mesh import MeshConfig, build_mesh, install_hooks, model_shardings, shard_model, validate
from qwen35_jax.parallel.rules import DEFAULT_RULES, MESH_AXES

__all__ = ["DEFAULT_RULES", "MESH_AXES", "MeshConfig", "build_mesh", "install_hooks", "model_shardings",
           "shard_model", "validate"]
