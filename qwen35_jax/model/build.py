"""The one constructor every entry point uses: a ``Qwen35ForCausalLM`` built for its ``Runtime``.

  model = build_model(config, Runtime.local())                           # one device
  model = build_model(config, Runtime.for_mesh(mesh, mesh_config))       # parameters created already sharded
  abstract = build_model(config, runtime, abstract=True)                 # ShapeDtypeStructs, nothing allocated
  validate_model(config, runtime)                                        # shapes only: raise before compiling

The layers choose their compute for the runtime in their constructors (MoE dispatch, gated-delta-rule kernel,
activation constraint); nothing is changed on the model afterwards.
"""

from __future__ import annotations

import jax
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model.qwen35 import Qwen35ForCausalLM
from qwen35_jax.parallel.rules import state_shardings
from qwen35_jax.parallel.runtime import Runtime


def build_model(config: ModelConfig, runtime: Runtime, *, seed: int = 0, abstract: bool = False) -> Qwen35ForCausalLM:
    """``Qwen35ForCausalLM(config, runtime=runtime)`` with parameters initialised from ``seed``.

    ``abstract``: shapes and dtypes only (``nnx.eval_shape``). On a mesh the initialisation runs under ``jax.jit``
    with the rules' shardings as outputs, so each device computes only its shards (a model larger than one device
    is never materialised whole). Raises ValueError when the model does not fit the mesh (see ``validate_model``).
    """

    def make() -> Qwen35ForCausalLM:
        return Qwen35ForCausalLM(config, rngs=nnx.Rngs(seed), runtime=runtime)

    if abstract:
        return nnx.eval_shape(make)
    if runtime.mesh is None:
        return make()
    graphdef, shapes = nnx.split(nnx.eval_shape(make))
    state = jax.jit(lambda: nnx.state(make()), out_shardings=state_shardings(shapes, runtime.mesh, runtime.rules))()
    return nnx.merge(graphdef, state)


def model_shardings(model: nnx.Module, runtime: Runtime) -> nnx.State:
    """NamedShardings of every variable of ``model`` (abstract or concrete; any module) on ``runtime.mesh``; raises
    ValueError naming the parameter and config field when a dimension does not divide over its mesh axes."""
    if runtime.mesh is None:
        raise ValueError("model_shardings needs a runtime with a mesh (Runtime.for_mesh)")
    return state_shardings(nnx.state(model), runtime.mesh, runtime.rules)


def validate_model(config: ModelConfig, runtime: Runtime) -> None:
    """Every check of ``config`` against ``runtime`` on shapes only, before anything is compiled: the layers'
    choices (expert-parallel dispatch possible, known kernels) and, on a mesh, every parameter shards evenly (heads
    vs ``tensor``, experts vs ``expert``, ...). Raises ValueError naming the field and the fix."""
    model = build_model(config, runtime, abstract=True)
    if runtime.mesh is not None:
        model_shardings(model, runtime)
