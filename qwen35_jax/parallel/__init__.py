"""Meshes, logical axis rules, the runtime a model is built for, and multi-process helpers.

``rules``: logical axis names → mesh axes (and the shardings of a model state). ``mesh``: ``config.mesh`` → Mesh.
``runtime``: ``Runtime`` (backend, mesh, rules, MoE dispatch), the one value model constructors receive.
``sharding``: the residual-stream constraint. ``multihost``: jax.distributed. Nothing here imports the model or the
ops: they import this package.
"""

from qwen35_jax.parallel.mesh import MeshConfig, build_mesh
from qwen35_jax.parallel.rules import DEFAULT_RULES, MESH_AXES, state_shardings
from qwen35_jax.parallel.runtime import Runtime
from qwen35_jax.parallel.sharding import ActivationSharding, activation_sharding_for

__all__ = ["DEFAULT_RULES", "MESH_AXES", "ActivationSharding", "MeshConfig", "Runtime", "activation_sharding_for",
           "build_mesh", "state_shardings"]
