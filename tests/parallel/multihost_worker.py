"""One process of the multi-host test: 3 AdamW steps of the tiny MoE model with experts split across processes.

  python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON

Each process has 2 CPU devices; the mesh puts the 4 global devices on the expert axis, so the capacity dispatch's
all_to_all crosses processes (gloo). Process 0 writes the losses to OUT_JSON. ``train_losses`` is also the
single-process reference of ``test_multihost.py``.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from qwen35_jax.train.losses import masked_cross_entropy  # noqa: E402

BATCH, LENGTH, STEPS = 8, 16, 3
MESH = dict(expert=4, capacity_factor=4.0)  # capacity 4 = num_experts / top_k: nothing is dropped


def batches(vocab_size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, vocab_size, (BATCH, LENGTH + 1)).astype(np.int32) for _ in range(STEPS)]


def train_losses(model: nnx.Module, data: list[jax.Array], aux_coef: float) -> list[float]:
    """Plain AdamW on next-token cross-entropy (+ aux loss); the loss of each step."""
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, tokens):
        def loss_fn(params):
            out = nnx.merge(graphdef, params)(tokens[:, :-1])
            targets = tokens[:, 1:]
            return masked_cross_entropy(out.logits, targets, jnp.ones(targets.shape, bool)) + aux_coef * out.aux_loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for tokens in data:
        params, opt_state, loss = step(params, opt_state, tokens)
        losses.append(float(loss))
    return losses


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    from jax.sharding import NamedSharding
    from parallel_helpers import random_model, tiny_config

    from qwen35_jax.parallel import multihost
    from qwen35_jax.parallel.mesh import MeshConfig, build_mesh
    from qwen35_jax.parallel.rules import spec_for
    from qwen35_jax.parallel.runtime import Runtime

    multihost.initialize(dict(enabled=True, coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                              process_id=process_id, cpu_collectives="gloo"))
    assert jax.process_count() == num_processes and jax.local_device_count() == 2
    config = tiny_config()
    mesh_config = MeshConfig.from_config(MESH)
    mesh = build_mesh(mesh_config)
    model = random_model(config, runtime=Runtime.for_mesh(mesh, mesh_config))
    shape = (BATCH, LENGTH + 1)
    sharding = NamedSharding(mesh, spec_for(("act_batch", None), shape, mesh, mesh_config.rules))
    rows = multihost.process_rows(sharding, shape)
    data = [multihost.global_batch(tokens[rows], sharding, shape) for tokens in batches(config.vocab_size)]
    losses = train_losses(model, data, config.router_aux_loss_coef)
    multihost.log_once("losses %s", losses)
    if jax.process_index() == 0:
        with open(out_path, "w") as f:
            json.dump({"losses": losses, "rows": [rows.start, rows.stop]}, f)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
