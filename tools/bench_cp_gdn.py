"""Context-parallel gated delta rule on 8 virtual CPU devices: the two state exchanges against the unsplit rule.

  python -m tools.bench_cp_gdn [--length 8192] [--repeats 3]

Times forward + backward (jit, median of repeats, compile separate) of the chunked core on one device and split over
the ``sequence`` axis (8 shards) with ``exchange="scan"`` (log-depth ppermute) and ``"gather"`` (one all_gather),
and reads the bytes each collective moves per device from the compiled HLO (``tools.hlo_collectives``). The 8
virtual devices share this host's cores, so the wall times compare total work (the split rule runs the core twice,
once ``dv + dk`` wide), not a speed-up.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from qwen35_jax.ops.gated_delta_rule.sharded import DeltaRule, ShardedDeltaRule  # noqa: E402
from qwen35_jax.parallel import MeshConfig, Runtime, build_mesh  # noqa: E402
from tools.hlo_collectives import collective_bytes  # noqa: E402

HK, HV, DK, DV = 2, 8, 64, 64


def _inputs(length: int):
    keys = jax.random.split(jax.random.key(0), 5)
    q = jax.random.normal(keys[0], (1, length, HK, DK))
    k = jax.random.normal(keys[1], (1, length, HK, DK))
    v = jax.random.normal(keys[2], (1, length, HV, DV))
    g = -jax.nn.softplus(jax.random.normal(keys[3], (1, length, HV)))
    beta = jax.nn.sigmoid(jax.random.normal(keys[4], (1, length, HV)))
    return q, k, v, g, beta, jnp.ones((1, length), jnp.int32)


def _step(rule):
    def loss(q, k, v, g, beta, segment_ids):
        o, _ = rule(q, k, v, g, beta, segment_ids=segment_ids)
        return jnp.sum(o * o)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


def measure(name: str, rule, inputs, repeats: int) -> str:
    step = _step(rule)
    start = time.perf_counter()
    compiled = step.lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*inputs))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        times.append(time.perf_counter() - start)
    moved = collective_bytes(compiled.as_text())
    exchange = sum(b for (source, _), b in moved.items() if source == "GDN state exchange")
    other = sum(b for (source, _), b in moved.items() if source != "GDN state exchange")
    return (f"| {name} | {compile_s:.1f} | {1e3 * statistics.median(times):.0f} | {exchange / 2**20:.2f} | "
            f"{other / 2**20:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    inputs = _inputs(args.length)
    config = MeshConfig.from_config({"sequence": 8, "fsdp": 1})
    mesh = build_mesh(config)
    runtime = Runtime.for_mesh(mesh, config)
    print(f"B=1, T={args.length}, Hk={HK}, Hv={HV}, dk={DK}, dv={DV}, fp32, chunked core, forward+backward, "
          f"median of {args.repeats}, load {os.getloadavg()[0]:.2f}")
    print("| rule | compile s | fwd+bwd ms | state exchange MiB / device | other collectives MiB / device |")
    print("|---|---|---|---|---|")
    print(measure("unsplit (1 device)", DeltaRule("chunked", "cpu"), inputs, args.repeats), flush=True)
    for exchange in ("scan", "gather"):
        rule = ShardedDeltaRule(mesh, runtime.rules, "chunked", "cpu", exchange=exchange)
        print(measure(f"sequence 8, {exchange}", rule, inputs, args.repeats), flush=True)


if __name__ == "__main__":
    main()
