"""Benchmark of one training step (forward, backward, AdamW): ours side by side with transformers' PyTorch.

    python -m tools.bench_train [--configs dense,moe] [--repeats 5] [--gdn-impl chunked] [--scan-unroll 2]
                                [--xla-flags "..."] [--ref-python .venv-ref/bin/python] [--no-peers] [--no-ceiling]
                                [--json out.json]

One fixed small config (the issue's): vocab 4096, hidden 256, 8 layers (3 GDN : 1 attention), 4 attention heads /
2 kv of dim 64, linear heads 4 k / 8 v of dim 32, conv 4, dense SwiGLU 768 or (``moe``) 8 experts top-2 of width 128
plus a shared expert of width 128, untied head, no MTP, batch 4 x 512, fp32 everywhere.

Ours: ``Qwen35ForCausalLM`` split into (graphdef, params), next-token cross-entropy
(``qwen35_jax.train.masked_cross_entropy``) + ``router_aux_loss_coef`` x the MoE aux loss, ``optax.adamw``; the step
is one ``jax.jit`` with the params and optimizer state donated. Peer: ``transformers``' ``Qwen3_5ForCausalLM`` /
``Qwen3_5MoeForCausalLM`` (``labels=`` loss, MoE with ``output_router_logits=True`` so the aux loss is trained too),
``loss.backward(); torch.optim.AdamW.step()``, ``torch.set_num_threads(os.cpu_count())``, run by
``tools/hf_reference/bench_train_torch.py`` with ``--ref-python`` (default ``$HF_REF_PYTHON``, else
``.venv-ref/bin/python``). Both sides draw the same random token batch from a fixed NumPy seed.

Each (config, implementation) runs in a fresh worker process: one warm-up step (ours: the AOT compile is timed apart
as "compile s"), then ``--repeats`` timed steps; the table gives the median step time, tokens/s = 4·512 / median, the
median process CPU seconds per step ("cpu s", all threads: the steadier measure when other jobs share the cores),
the peak RSS of the worker (``getrusage``), the step's GFLOP and the rate achieved (GFLOP / median step time), and
speed = ours / transformers (tokens/s) for the same config. GFLOP counts each side's own algorithm: ours from XLA's
cost analysis of the compiled step, transformers' from PyTorch's ``FlopCounterMode`` over one forward + backward.
Other processes share the machine: the 1-minute load average is printed before and after.

After the table, a fresh worker times fp32 ``jnp.dot`` at the step's large matmul shapes (``ceiling_shapes``): the
best rate bounds ours from above (tokens/s <= 4·512 · best / GFLOP per step, with every op a matmul at that rate),
and the ratio to transformers at that bound is printed (``--no-ceiling`` skips it).

Execution settings of ours (chosen by measurement, see ``DEFAULT_GDN_IMPL`` / ``DEFAULT_SCAN_UNROLL`` /
``DEFAULT_XLA_FLAGS``; they change how the step runs, not what it computes) are set inside the worker only
(``XLA_FLAGS`` before jax is imported); ``--gdn-impl`` / ``--scan-unroll`` / ``--xla-flags`` override them to compare
variants, and ``--variants`` runs several of ours in one table (``name=gdn_impl[@scan_unroll][:flags]``,
``;``-separated).

This file is also the JAX worker (``--worker``); the module imports only the standard library at top level.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import NamedTuple

REPO = pathlib.Path(__file__).resolve().parents[1]
TORCH_WORKER = REPO / "tools" / "hf_reference" / "bench_train_torch.py"
BATCH, SEQ = 4, 512
SEED = 0
LEARNING_RATE = 1e-4
# Chosen by measurement on the 2-core CPU (see the report in the module docstring of each variant run).
DEFAULT_GDN_IMPL = "chunked"
DEFAULT_SCAN_UNROLL = 2  # both hybrid blocks unrolled (ModelConfig.scan_unroll): 856 vs 695 tokens/s rolled (dense)
DEFAULT_XLA_FLAGS = ""

# Field names shared by ModelConfig and transformers' Qwen3_5TextConfig / Qwen3_5MoeTextConfig.
COMMON = dict(
    vocab_size=4096,
    hidden_size=256,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=4,
    linear_num_value_heads=8,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    router_aux_loss_coef=0.001,
)
DENSE = dict(intermediate_size=768)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=128, shared_expert_intermediate_size=128)
ROPE = dict(rope_theta=1e7, partial_rotary_factor=0.25, mrope_section=[3, 3, 2])  # rotary 16 dims: 8 frequencies
CONFIGS = ("dense", "moe")


def ceiling_shapes() -> tuple[tuple[int, int, int], ...]:
    """(rows, contracted, columns) of the step's large fp32 matmuls: the LM head's forward and input gradient, the
    dense MLP's up and down projections, and two weight gradients (contracted over the tokens)."""
    tokens, hidden, vocab = BATCH * SEQ, COMMON["hidden_size"], COMMON["vocab_size"]
    mlp = DENSE["intermediate_size"]
    return ((tokens, hidden, vocab), (tokens, vocab, hidden), (tokens, hidden, mlp), (tokens, mlp, hidden),
            (hidden, tokens, mlp), (hidden, tokens, vocab))


def model_fields(config: str) -> dict:
    """The benchmark config as plain fields (HF names); ``config`` is ``dense`` or ``moe``."""
    if config not in CONFIGS:
        raise ValueError(f"--configs: unknown config {config!r}; choose from {CONFIGS}")
    return dict(COMMON, **(DENSE if config == "dense" else MOE), **ROPE)


def token_batch():
    """The random token batch ``[BATCH, SEQ]`` int64 (identical for every implementation)."""
    import numpy as np

    return np.random.default_rng(SEED).integers(0, COMMON["vocab_size"], size=(BATCH, SEQ), dtype=np.int64)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds (all threads, user + sys) of ``repeats`` calls of ``step()`` (each must block
    until its result is ready). CPU time is the steadier measure of work when other jobs share the cores."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    times, cpu_times = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), cpu()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(cpu() - start_cpu)
    return times, cpu_times


# ---------------------------------------------------------------------------------------------------------------
# JAX worker
# ---------------------------------------------------------------------------------------------------------------
def _worker_jax(config: str, gdn_impl: str, scan_unroll: int, repeats: int) -> dict:
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from qwen35_jax.config import ModelConfig
    from qwen35_jax.model import Qwen35ForCausalLM
    from qwen35_jax.train import masked_cross_entropy

    fields = model_fields(config)
    fields.pop("rope_theta"), fields.pop("partial_rotary_factor")
    model_config = ModelConfig(**fields, mtp_num_hidden_layers=0, gdn_impl=gdn_impl, remat_policy="none",
                               dtype="float32", param_dtype="float32", scan_unroll=scan_unroll)
    model = Qwen35ForCausalLM(model_config, rngs=nnx.Rngs(SEED))
    graphdef, params = nnx.split(model, nnx.Param)
    del model
    tx = optax.adamw(LEARNING_RATE, weight_decay=0.1)
    opt_state = tx.init(params)

    ids = jnp.asarray(token_batch(), jnp.int32)
    targets = jnp.roll(ids, -1, axis=1)
    loss_mask = jnp.ones_like(ids).at[:, -1].set(0)  # the last position has no next token
    segment_ids = jnp.ones_like(ids)

    def loss_fn(p):
        out = nnx.merge(graphdef, p)(ids, segment_ids=segment_ids)
        return masked_cross_entropy(out.logits, targets, loss_mask) + model_config.router_aux_loss_coef * out.aux_loss

    def step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    state = {"p": params, "s": opt_state}
    losses = []

    def run():
        state["p"], state["s"], loss = compiled(state["p"], state["s"])
        losses.append(float(loss))  # blocks until the step is done

    run()  # warm-up
    times, cpu_times = time_steps(run, repeats)
    return {"times": times, "cpu_times": cpu_times, "compile_s": compile_s, "peak_mb": peak_rss_mb(),
            "gflop": cost.get("flops", 0.0) / 1e9 or None, "loss_first": losses[0], "loss_last": losses[-1],
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "gdn_impl": gdn_impl, "scan_unroll": scan_unroll}


def _worker_ceiling(repeats: int) -> dict:
    """fp32 ``jnp.dot`` GFLOP/s at the step's own matmul shapes (``ceiling_shapes``), median of ``repeats`` each."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rates = {}
    rng = np.random.default_rng(SEED)
    for m, k, n in ceiling_shapes():
        a = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
        b = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
        matmul = jax.jit(jnp.dot).lower(a, b).compile()
        times, _ = time_steps(lambda f=matmul, a=a, b=b: f(a, b).block_until_ready(), repeats + 1)
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n / statistics.median(times[1:]) / 1e9
    return {"gflops": rates}


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------
def _last_result(proc: subprocess.CompletedProcess) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def _run_jax_worker(worker_args: list[str], xla_flags: str) -> dict:
    """This file as a fresh JAX worker process (``--worker ...``) with ``XLA_FLAGS`` set before jax is imported."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), XLA_FLAGS=xla_flags)
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", *worker_args]
    return _last_result(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env))


def run_ours(config: str, variant: Variant, repeats: int) -> dict:
    return _run_jax_worker([config, "--gdn-impl", variant.gdn_impl, "--scan-unroll", str(variant.scan_unroll),
                            "--repeats", str(repeats)], variant.xla_flags)


def run_ceiling(repeats: int) -> dict:
    return _run_jax_worker(["ceiling", "--repeats", str(repeats)], os.environ.get("XLA_FLAGS", ""))


def run_torch(python: str, config: str, repeats: int) -> dict:
    spec = {"config": config, "fields": model_fields(config), "batch": BATCH, "seq": SEQ, "seed": SEED,
            "lr": LEARNING_RATE, "repeats": repeats}
    cmd = [python, str(TORCH_WORKER), json.dumps(spec)]
    try:
        return _last_result(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True))
    except OSError as err:
        return {"error": f"cannot run {python}: {err}"}


def summarize(result: dict) -> dict:
    """Median step ms and tokens/s from a worker's per-step times."""
    if "error" in result:
        return result
    median = statistics.median(result["times"])
    gflop = result.get("gflop")
    return dict(result, step_ms=1e3 * median, tokens_per_s=BATCH * SEQ / median,
                cpu_s=statistics.median(result["cpu_times"]), gflop_per_s=gflop / median if gflop else None)


def ceiling_report(gflops: dict[str, float], results: list[dict]) -> str:
    """The machine's fp32 matmul rate at the step's shapes, and what it bounds: while its matmuls run no faster than
    they do alone, a step of G GFLOP takes at least G / (the best of these rates), whatever its schedule (the
    elementwise, softmax and optimizer work only add to it)."""
    best = max(gflops.values())
    lines = ["fp32 matmul ceiling (XLA jnp.dot at the step's shapes, GFLOP/s): "
             + ", ".join(f"{shape} {rate:.0f}" for shape, rate in gflops.items())]
    reference = {r["config"]: r for r in results if r["implementation"] == "transformers" and "error" not in r}
    for r in results:
        if r.get("gflop") and r["implementation"] != "transformers":
            bound = BATCH * SEQ * best / r["gflop"]
            ratio = (f" = {bound / reference[r['config']]['tokens_per_s']:.2f}x transformers"
                     if r["config"] in reference else "")
            lines.append(f"  {r['config']} {r['implementation']}: {r['gflop']:.1f} GFLOP/step at {best:.0f} GFLOP/s "
                         f"-> at most {bound:,.0f} tokens/s{ratio}; measured {r['gflop_per_s'] / best:.0%} of it")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


class Variant(NamedTuple):
    """One row of ours: a name and the execution settings of its worker."""

    name: str
    gdn_impl: str
    scan_unroll: int
    xla_flags: str


def parse_variants(text: str | None, gdn_impl: str, scan_unroll: int, xla_flags: str) -> list[Variant]:
    """``name=impl[@scan_unroll][:flags];...`` (unroll defaults to ``scan_unroll``); default one row ``ours``."""
    if not text:
        return [Variant("ours", gdn_impl, scan_unroll, xla_flags)]
    out = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, sep, rest = item.partition("=")
        settings, _, flags = rest.partition(":")
        impl, at, unroll = settings.partition("@")
        if not sep or not impl or (at and not unroll.isdigit()):
            raise ValueError(f"--variants: {item!r} must look like name=gdn_impl[@scan_unroll][:xla flags]")
        out.append(Variant(name, impl, int(unroll) if at else scan_unroll, flags))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="dense,moe", help="comma-separated: dense, moe")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case (median), >= 5 recommended")
    parser.add_argument("--gdn-impl", default=DEFAULT_GDN_IMPL, help="ours: chunked or recurrent")
    parser.add_argument("--scan-unroll", type=int, default=DEFAULT_SCAN_UNROLL,
                        help="ours: ModelConfig.scan_unroll (hybrid blocks per layer-scan iteration)")
    parser.add_argument("--xla-flags", default=DEFAULT_XLA_FLAGS, help="ours: XLA_FLAGS of the worker process")
    parser.add_argument("--variants", help="several of ours: 'name=gdn_impl[@scan_unroll][:xla flags];...'")
    parser.add_argument("--ref-python", default=os.environ.get("HF_REF_PYTHON", ".venv-ref/bin/python"),
                        help="interpreter with torch + transformers (default $HF_REF_PYTHON)")
    parser.add_argument("--no-peers", action="store_true", help="skip transformers")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the fp32 matmul ceiling measured after the table")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.scan_unroll < 1:
        parser.error("--scan-unroll must be >= 1")

    if args.worker:
        result = (_worker_ceiling(args.repeats) if args.worker == "ceiling"
                  else _worker_jax(args.worker, args.gdn_impl, args.scan_unroll, args.repeats))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        model_fields(c)  # validate before anything runs
    variants = parse_variants(args.variants, args.gdn_impl, args.scan_unroll, args.xla_flags)
    ref_python = args.ref_python if os.path.isabs(args.ref_python) else str(REPO / args.ref_python)
    notes = []
    peers = not args.no_peers
    if peers and not os.path.exists(ref_python):
        notes.append(f"transformers: not run, no interpreter at {ref_python} (pass --ref-python or set "
                     "HF_REF_PYTHON to the reference environment: torch + transformers)")
        peers = False

    header = (f"{'config':<7} {'implementation':<22} {'tokens/s':>9} {'step ms':>9} {'cpu s':>6} {'compile s':>9} "
              f"{'peak MB':>8} {'GFLOP':>6} {'GFLOP/s':>7} {'speed':>6}")
    print(f"training step (fwd+bwd+AdamW), batch {BATCH}x{SEQ} fp32, median of {args.repeats}; cores "
          f"{os.cpu_count()}; load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print(header)
    print("-" * len(header), flush=True)
    results = []
    for config in configs:
        jobs = [("transformers", lambda c=config: run_torch(ref_python, c, args.repeats))] if peers else []
        jobs += [(f"{v.name} ({v.gdn_impl})", lambda c=config, v=v: run_ours(c, v, args.repeats)) for v in variants]
        reference = None
        for name, job in jobs:  # each row is printed as soon as its worker is done
            res = summarize(job())
            if name == "transformers" and "error" not in res:
                reference = res
            if "error" in res:
                notes.append(f"{config} {name} failed: {res['error']}")
            speed = None
            if reference and "error" not in res:
                speed = res["tokens_per_s"] / reference["tokens_per_s"]
            print(f"{config:<7} {name:<22} {_fmt(res.get('tokens_per_s'), '9.0f')} {_fmt(res.get('step_ms'), '9.1f')} "
                  f"{_fmt(res.get('cpu_s'), '6.2f')} {_fmt(res.get('compile_s'), '9.1f')} "
                  f"{_fmt(res.get('peak_mb'), '8.0f')} {_fmt(res.get('gflop'), '6.1f')} "
                  f"{_fmt(res.get('gflop_per_s'), '7.1f')} {_fmt(speed, '6.2f')}", flush=True)
            results.append({"config": config, "implementation": name, **res, "speed_vs_transformers": speed})
    ceiling = run_ceiling(args.repeats) if args.ceiling else None
    if ceiling and "error" in ceiling:
        notes.append(f"matmul ceiling failed: {ceiling['error']}")
    elif ceiling:
        print(ceiling_report(ceiling["gflops"], results))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for note in notes:
        print("note:", note)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"results": results, "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
