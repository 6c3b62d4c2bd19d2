"""Forward+backward of ``flash_attention`` against ``blocked_causal_attention`` on one device.

    python -m tools.bench_cp_attention [--lengths 1024,2048,4096] [--repeats 3] [--heads 8 --kv-heads 2 --dim 64]
                                       [--block-q 512 --block-k 512] [--dtype fp32|bf16]

B=1, one document (segment ids all 1), inputs from a fixed seed. For each length and implementation: the compile
time (s) of the jitted gradient of ``sum(out * cotangent)`` w.r.t. q, k, v, the median wall time (ms) of
``--repeats`` runs after one warm-up, and the temporary memory XLA plans for it (``memory_analysis()``, MB). Other
processes on the machine disturb the timings: the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from qwen35_jax.model.attention import blocked_causal_attention
from qwen35_jax.ops.attention import flash_attention


def implementations(block_q: int, block_k: int) -> dict:
    return {
        "flash": lambda q, k, v, s: flash_attention(q, k, v, s, s, block_q=block_q, block_k=block_k),
        "blocked": lambda q, k, v, s: blocked_causal_attention(q, k, v, s, block_q),
    }


def measure(attend, length: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """(compile s, median fwd+bwd ms, temp MB)."""
    dtype = jnp.bfloat16 if args.dtype == "bf16" else jnp.float32
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (1, length, args.heads, args.dim), dtype)
    k = jax.random.normal(keys[1], (1, length, args.kv_heads, args.dim), dtype)
    v = jax.random.normal(keys[2], (1, length, args.kv_heads, args.dim), dtype)
    ct = jax.random.normal(keys[3], q.shape, dtype)
    segments = jnp.ones((1, length), jnp.int32)

    def loss(q, k, v):
        return jnp.sum((attend(q, k, v, segments) * ct).astype(jnp.float32))

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss, (0, 1, 2))).lower(q, k, v).compile()
    compile_s = time.perf_counter() - start
    temp_mb = compiled.memory_analysis().temp_size_in_bytes / 2**20
    jax.block_until_ready(compiled(q, k, v))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(q, k, v))
        times.append(time.perf_counter() - start)
    return compile_s, 1e3 * statistics.median(times), temp_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1024,2048,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--block-q", type=int, default=512)
    parser.add_argument("--block-k", type=int, default=512)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"device {jax.devices()[0].device_kind}, B=1, nq={args.heads}, nkv={args.kv_heads}, hd={args.dim}, "
          f"{args.dtype}, block_q={args.block_q}, block_k={args.block_k}, median of {args.repeats}, load {load}")
    print(f"{'T':>6} {'impl':>8} {'compile s':>10} {'fwd+bwd ms':>11} {'temp MB':>9}")
    for length in (int(x) for x in args.lengths.split(",")):
        for name, attend in implementations(args.block_q, args.block_k).items():
            compile_s, ms, temp_mb = measure(attend, length, args)
            print(f"{length:>6} {name:>8} {compile_s:>10.2f} {ms:>11.1f} {temp_mb:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
