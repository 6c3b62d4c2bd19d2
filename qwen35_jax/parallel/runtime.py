"""Where and how a model runs: the one explicit value every model constructor receives.

  runtime = Runtime.local()                               # one device of the default backend (tests, Colab)
  runtime = Runtime.for_mesh(mesh, mesh_config)            # a training / serving mesh from ``config.mesh``
  runtime = Runtime.for_mesh(mesh, mesh_config, backend="tpu")   # AOT-compiling for a TPU topology on a CPU host
  model = Qwen35ForCausalLM(config, runtime=runtime, rngs=nnx.Rngs(0))

The modules read it once, in their constructors, to choose their compute: the gated delta rule's implementation
(``impl="auto"`` resolves against ``backend``), the MoE dispatch (single-device grouped matmuls or the expert-parallel
``shard_map``), the CPU-friendly matmul layout, and the residual-stream sharding constraint. Nothing asks
``jax.default_backend()`` at trace time and nothing patches a module after it is built.
"""

from __future__ import annotations

import dataclasses

import jax
from jax.sharding import Mesh

from qwen35_jax.parallel.rules import DEFAULT_RULES, Rule

BACKENDS = ("cpu", "gpu", "tpu")
DISPATCHES = ("auto", "dropless", "ragged", "capacity")
EXCHANGES = ("scan", "gather")  # how context-parallel GDN shards compose their state maps (numerics §11.1)


def normalise_backend(backend: str) -> str:
    """``jax.default_backend()`` / ``Device.platform`` names to one of ``BACKENDS`` (cuda and rocm are ``gpu``)."""
    name = {"cuda": "gpu", "rocm": "gpu"}.get(backend, backend)
    if name not in BACKENDS:
        raise ValueError(f"runtime backend {backend!r} is unknown: use one of {BACKENDS}")
    return name


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The target backend, the mesh (None: one device, no sharding constraints) and the MoE dispatch settings."""

    backend: str = "cpu"
    mesh: Mesh | None = None
    rules: tuple[Rule, ...] = DEFAULT_RULES
    expert_dispatch: str = "auto"
    capacity_factor: float = 1.25
    gdn_state_exchange: str = "scan"

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", normalise_backend(self.backend))
        object.__setattr__(self, "rules", tuple(self.rules))
        if self.expert_dispatch not in DISPATCHES:
            raise ValueError(f"expert_dispatch={self.expert_dispatch!r} is invalid: choose one of {DISPATCHES}")
        if not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor={self.capacity_factor!r} is invalid: must be > 0 (e.g. 1.25)")
        if self.gdn_state_exchange not in EXCHANGES:
            raise ValueError(f"gdn_state_exchange={self.gdn_state_exchange!r} is invalid: choose one of {EXCHANGES}")

    @classmethod
    def local(cls, backend: str | None = None) -> Runtime:
        """One device of ``backend`` (default: JAX's default backend)."""
        return cls(backend=backend or jax.default_backend())

    @classmethod
    def for_mesh(cls, mesh: Mesh, mesh_config: object, backend: str | None = None) -> Runtime:
        """``mesh`` with the rules and dispatch of a ``parallel.mesh.MeshConfig``; the backend defaults to the mesh
        devices' platform (for a TPU topology compiled on a CPU host that is already ``tpu``)."""
        platform = backend or mesh.devices.flat[0].platform
        return cls(backend=platform, mesh=mesh, rules=tuple(mesh_config.rules),
                   expert_dispatch=mesh_config.expert_dispatch, capacity_factor=mesh_config.capacity_factor,
                   gdn_state_exchange=mesh_config.gdn_state_exchange)

    @property
    def is_accelerator(self) -> bool:
        return self.backend != "cpu"
