"""Shared pieces of the sharding tests: a tiny MoE config, fast random parameters, tree comparison."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen35_jax.config import ModelConfig
from qwen35_jax.model import Qwen35ForCausalLM, model_shardings
from qwen35_jax.parallel import MeshConfig, Runtime, build_mesh

# One hybrid block [GDN, attention] with 8 experts top-2 and a shared expert; the token recurrence is the GDN core
# with the cheapest compile on CPU.
TINY_MOE = dict(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, layer_types=("linear_attention", "full_attention"),
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_key_head_dim=8, linear_value_head_dim=8, mrope_section=(1, 1, 0), num_experts=8, num_experts_per_tok=2,
    moe_intermediate_size=16, shared_expert_intermediate_size=16, mtp_num_hidden_layers=0, gdn_impl="recurrent",
)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**dict(TINY_MOE, **overrides))


def random_state(module: nnx.Module, seed: int = 0, scale: float = 0.1) -> nnx.State:
    """N(0, scale²) values for every variable of an abstract module (much faster than the real init on CPU)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda v: v.replace(jnp.asarray(rng.normal(0.0, scale, v.shape), v.dtype)),
                        nnx.state(module), is_leaf=lambda x: isinstance(x, nnx.Variable))


def random_module(factory, seed: int = 0) -> nnx.Module:
    """``factory()`` built abstractly, then filled by ``random_state``."""
    abstract = nnx.eval_shape(factory)
    graphdef, _ = nnx.split(abstract)
    return nnx.merge(graphdef, random_state(abstract, seed))


def random_model(config: ModelConfig, seed: int = 0, runtime: Runtime | None = None) -> Qwen35ForCausalLM:
    """Random model built for ``runtime`` (default one CPU device); on a mesh its variables are sharded."""
    model = random_module(lambda: Qwen35ForCausalLM(config, rngs=nnx.Rngs(0), runtime=runtime), seed)
    return placed(model, runtime) if runtime is not None and runtime.mesh is not None else model


def mesh_runtime(backend: str | None = None, **fields) -> Runtime:
    """The runtime of ``config.mesh = fields`` on the 8 CPU devices (``backend``: the target, default cpu)."""
    mesh_config = MeshConfig.from_config(fields)
    return Runtime.for_mesh(build_mesh(mesh_config), mesh_config, backend=backend)


def placed(module: nnx.Module, runtime: Runtime) -> nnx.Module:
    """``module`` with its variables moved to their shardings on ``runtime.mesh`` (values only, in place)."""
    nnx.update(module, jax.device_put(nnx.state(module), model_shardings(module, runtime)))
    return module


def assert_trees_close(actual, expected, rtol: float = 1e-5) -> None:
    """Every leaf within ``rtol`` of the expected leaf's largest magnitude."""
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want), got in zip(paths, jax.tree.leaves(actual), strict=True):
        want, got = np.asarray(want), np.asarray(got)
        scale = max(float(np.abs(want).max()), 1e-30)
        err = float(np.abs(got - want).max())
        assert err <= rtol * scale, f"{jax.tree_util.keystr(path)}: max |Δ| {err:.3g} > {rtol} × {scale:.3g}"
