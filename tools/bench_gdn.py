"""Benchmark of the gated delta rule: our implementations side by side with transformers' and MaxText's.

    python -m tools.bench_gdn [--seq 512,2048,8192] [--repeats 5] [--impls recurrent,chunked]
                              [--ref-python .venv-ref/bin/python] [--no-peers] [--json out.json]

Shape: B=1, Hk=Hv=16, dk=dv=128, fp32, inputs drawn from a fixed numpy seed (identical for every implementation);
q/k are L2-normalised inside every implementation (``use_qk_l2norm`` / ``use_qk_l2norm_in_kernel`` /
``use_qk_norm_in_gdn``). For each T and implementation the table gives the median wall time (ms) of the forward and
of forward+backward (gradients of ``sum(o * cotangent)`` w.r.t. q, k, v, g, beta) over ``--repeats`` runs after one
warm-up, the compile time (s) separately, and the peak RSS (MB, ``getrusage(RUSAGE_SELF).ru_maxrss``) of a fresh
worker process per (implementation, T, mode), so numbers do not pollute each other.

Rows:
  ours: ``recurrent`` (forward+backward skipped at T > 4096: autodiff keeps per-token states, ~26 GB at
        T=8192), ``chunked``,
        and ``pallas_tpu`` / ``pallas_gpu`` when the default JAX backend is TPU / GPU.
  peers: ``hf-torch``: ``transformers.models.qwen3_5.modeling_qwen3_5.torch_chunk_gated_delta_rule`` run with the
        ``--ref-python`` interpreter (torch autograd for the backward);
        ``maxtext``: ``jax_chunk_gated_delta_rule`` from ``maxtext==0.2.5`` (``pip install --no-deps maxtext==0.2.5``,
        compute_dtype fp32). Its module imports most of MaxText (aqt, qwix, ...), so the function and its ``l2norm``
        are loaded from the installed source files by name instead of importing ``maxtext.models.qwen3``.
A peer that is not installed prints ``not available: <how to install>``. Other processes on the machine disturb the
timings: the load average is printed with the table.

This file is also the worker (``--worker``); it imports only the standard library at module level so that the
reference interpreter (torch, no jax) can run it as a script.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, HEADS, DIM = 1, 16, 128
RECURRENT_MAX_T = 4096
MAXTEXT_INSTALL = "pip install --no-deps maxtext==0.2.5 (into the jax environment)"
HF_INSTALL = "create the reference env (`make test` builds .venv-ref: torch + transformers) or pass --ref-python"


# ---------------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------------
def _inputs(length: int, convert):
    """Deterministic fp32 inputs q, k, v [B, T, H, D], g, beta [B, T, H] and the output cotangent [B, T, H, D].

    Each array is handed to ``convert`` (to a jax / torch array) as soon as it is drawn, so the worker never holds
    numpy copies of all inputs at once (they would inflate its peak RSS).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (BATCH, length, HEADS, DIM)
    q, k, v = (convert(rng.standard_normal(shape, dtype=np.float32)) for _ in range(3))
    g = convert(-np.log1p(np.exp(rng.standard_normal(shape[:3], dtype=np.float32))))  # -softplus: log-decay <= 0
    beta = convert(1.0 / (1.0 + np.exp(-rng.standard_normal(shape[:3], dtype=np.float32))))
    cot = convert(rng.standard_normal(shape, dtype=np.float32))
    return q, k, v, g, beta, cot


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _extract_function(path: pathlib.Path, name: str) -> str:
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            node.decorator_list = []
            return ast.unparse(node)
    raise LookupError(f"{name} not found in {path}")


def _maxtext_fn():
    """MaxText's jax_chunk_gated_delta_rule, loaded from the installed files (see module docstring)."""
    import importlib.util

    import jax
    import jax.numpy as jnp
    from jax import lax

    spec = importlib.util.find_spec("maxtext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("maxtext")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    namespace = {"jax": jax, "jnp": jnp, "lax": lax, "Array": jax.Array, "gdn_cp": None}
    exec(_extract_function(root / "layers" / "normalizations.py", "l2norm"), namespace)
    exec(_extract_function(root / "models" / "qwen3.py", "jax_chunk_gated_delta_rule"), namespace)
    return namespace["jax_chunk_gated_delta_rule"]


def _worker_jax(impl: str, length: int, mode: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    if impl == "maxtext":
        mt = _maxtext_fn()

        def run(q, k, v, g, beta):
            return mt(q, k, v, g, beta, use_qk_norm_in_gdn=True, compute_dtype=jnp.float32)[0]
    else:
        sys.path.insert(0, str(REPO))
        from qwen35_jax.ops import gated_delta_rule

        def run(q, k, v, g, beta):
            return gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, impl=impl)[0]

    *args, cot = _inputs(length, lambda x: jax.device_put(x.astype(np.float32)))
    if mode == "fwd":
        fn = jax.jit(run)
    else:
        fn = jax.jit(jax.grad(lambda *a: jnp.sum(run(*a) * cot), argnums=(0, 1, 2, 3, 4)))
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    ms = _median_ms(lambda: jax.block_until_ready(compiled(*args)), repeats)
    return {"ms": ms, "compile_s": compile_s, "peak_mb": _peak_rss_mb()}


def _worker_torch(length: int, mode: str, repeats: int) -> dict:
    import torch
    from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

    q, k, v, g, beta, cot = _inputs(length, lambda x: torch.from_numpy(x.astype("float32")))

    def call(*args):
        return torch_chunk_gated_delta_rule(*args, use_qk_l2norm_in_kernel=True)[0]

    if mode == "fwd":

        def fn():
            with torch.no_grad():
                call(q, k, v, g, beta)
    else:
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, beta)]

        def fn():
            for x in leaves:
                x.grad = None
            (call(*leaves) * cot).sum().backward()

    return {"ms": _median_ms(fn, repeats), "compile_s": None, "peak_mb": _peak_rss_mb()}


# ---------------------------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------------------------
def _run_worker(python: str, impl: str, length: int, mode: str, repeats: int) -> dict:
    cmd = [python, str(pathlib.Path(__file__).resolve()), "--worker", impl, "--seq", str(length),
           "--mode", mode, "--repeats", str(repeats)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def _probe(python: str, code: str) -> str | None:
    """Run a snippet in ``python``; return its last stdout line, or None when it fails or the interpreter is missing."""
    try:
        proc = subprocess.run([python, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else None


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return "-".rjust(width) if value is None else format(value, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", default="512,2048,8192", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median), >= 5 recommended")
    parser.add_argument("--impls", default="recurrent,chunked", help="our implementations (pallas added by backend)")
    parser.add_argument("--ref-python", default=".venv-ref/bin/python", help="interpreter with torch + transformers")
    parser.add_argument("--no-peers", action="store_true", help="skip transformers and MaxText")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("fwd", "fwd+bwd"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        length = int(args.seq)
        if args.worker == "hf-torch":
            result = _worker_torch(length, args.mode, args.repeats)
        else:
            result = _worker_jax(args.worker, length, args.mode, args.repeats)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    seqs = [int(s) for s in args.seq.split(",") if s]
    rows: list[tuple[str, str]] = [(sys.executable, impl) for impl in args.impls.split(",") if impl]
    notes = []
    backend = _probe(sys.executable, "import jax; print(jax.default_backend())")
    pallas = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu"}.get(backend or "")
    if pallas:
        rows.append((sys.executable, pallas))
    else:
        notes.append(f"pallas_tpu / pallas_gpu: skipped on backend {backend!r} (interpret mode is not a benchmark)")
    if not args.no_peers:
        ref_python = str((REPO / args.ref_python) if not os.path.isabs(args.ref_python) else args.ref_python)
        probe = "from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule; print('ok')"
        if _probe(ref_python, probe) == "ok":
            rows.append((ref_python, "hf-torch"))
        else:
            notes.append(f"hf-torch: not available at {ref_python}: {HF_INSTALL}")
        if _probe(sys.executable, "import importlib.util as u; print(u.find_spec('maxtext') is not None)") == "True":
            rows.append((sys.executable, "maxtext"))
        else:
            notes.append(f"maxtext: not available: {MAXTEXT_INSTALL}")

    header = (f"{'T':>6} {'impl':<10} {'fwd ms':>9} {'compile s':>9} {'peak MB':>8} "
              f"{'f+b ms':>9} {'compile s':>9} {'peak MB':>8}")
    print(f"gated delta rule, B={BATCH} H={HEADS} d={DIM} fp32, median of {args.repeats}; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print(header)
    print("-" * len(header), flush=True)
    results = []
    for length in seqs:
        for python, impl in rows:
            fwd = _run_worker(python, impl, length, "fwd", args.repeats)
            if impl == "recurrent" and length > RECURRENT_MAX_T:
                state_gib = 4 * BATCH * HEADS * DIM * DIM * length / 2**30
                notes.append(f"recurrent: forward+backward skipped at T={length} (autodiff through the token scan "
                             f"keeps per-token [dk, dv] states: several tensors of {state_gib:.0f} GiB each)")
                fb = {}
            else:
                fb = _run_worker(python, impl, length, "fwd+bwd", args.repeats)
            results.append({"T": length, "impl": impl, "fwd": fwd, "fwd+bwd": fb})
            for name, res in (("fwd", fwd), ("fwd+bwd", fb)):
                if "error" in res:
                    notes.append(f"{impl} T={length} {name} failed: {res['error']}")
            print(f"{length:>6} {impl:<10} {_fmt(fwd.get('ms'), '9.1f')} {_fmt(fwd.get('compile_s'), '9.1f')} "
                  f"{_fmt(fwd.get('peak_mb'), '8.0f')} {_fmt(fb.get('ms'), '9.1f')} "
                  f"{_fmt(fb.get('compile_s'), '9.1f')} {_fmt(fb.get('peak_mb'), '8.0f')}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    for note in notes:
        print("note:", note)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"results": results, "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
