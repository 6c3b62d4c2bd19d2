"""Benchmark of the gated delta rule: our implementations side by side with transformers' and MaxText's.

    python -m tools.bench_gdn [--seq 512,2048,8192] [--repeats 5] [--impls recurrent,chunked]
                              [--heads-k 16] [--heads-v 16] [--dtype fp32|bf16]
                              [--ref-python .venv-ref/bin/python] [--peers hf-torch,fla,maxtext | --no-peers]
                              [--worker-timeout S] [--json out.json]

Shape: B=1, Hk=Hv=16, dk=dv=128, fp32 by default (``--heads-k/--heads-v/--dtype`` for e.g. the 397B layer:
Hk=16, Hv=64, bf16), inputs drawn from a fixed numpy seed (identical for every implementation); q/k are
L2-normalised inside every implementation (``use_qk_l2norm`` / ``use_qk_l2norm_in_kernel`` / ``use_qk_norm_in_gdn``).
For each T and implementation the table gives the median wall time (ms) of the forward and of forward+backward
(gradients of ``sum(o * cotangent)`` w.r.t. q, k, v, g, beta) over ``--repeats`` runs after one warm-up, the compile
time (s) separately, and the peak memory (MB) of a fresh worker process per (implementation, T, mode), so numbers do
not pollute each other: on CPU the peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), on a GPU the peak device memory
in use (JAX ``memory_stats()["peak_bytes_in_use"]``, torch ``max_memory_allocated``).

Rows:
  ours: ``recurrent`` (forward+backward skipped at T > 4096: autodiff keeps per-token states, ~26 GB at
        T=8192), ``chunked``, and ``pallas_tpu`` / ``pallas_gpu`` when the default JAX backend is TPU / GPU.
  peers (``--peers``):
    ``hf-torch``: ``transformers.models.qwen3_5.modeling_qwen3_5.torch_chunk_gated_delta_rule`` run with the
        ``--ref-python`` interpreter (torch autograd for the backward; on CUDA when torch sees a GPU);
    ``fla``: flash-linear-attention's Triton ``chunk_gated_delta_rule`` (``--ref-python`` interpreter, CUDA only);
    ``maxtext``: ``jax_chunk_gated_delta_rule`` from ``maxtext==0.2.5`` (``pip install --no-deps maxtext==0.2.5``,
        compute_dtype fp32). Its module imports most of MaxText (aqt, qwix, ...), so the function and its ``l2norm``
        are loaded from the installed source files by name instead of importing ``maxtext.models.qwen3``.
    hf-torch and maxtext get q/k repeated to the value heads first (as the HF layer does); fla takes Hv > Hk itself.
A peer that is not installed prints ``not available: <how to install>``. Other processes on the machine disturb the
timings: the load average is printed with the table.

This file is also the worker (``--worker``); it imports only the standard library at module level so that the
reference interpreter (torch, no jax) can run it as a script.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BATCH, HEADS, DIM = 1, 16, 128
RECURRENT_MAX_T = 4096
DTYPES = ("fp32", "bf16")
MAXTEXT_INSTALL = "pip install --no-deps maxtext==0.2.5 (into the jax environment)"
HF_INSTALL = "create the reference env (`make test` builds .venv-ref: torch + transformers) or pass --ref-python"
FLA_INSTALL = "pip install flash-linear-attention into the --ref-python interpreter (needs torch with CUDA)"
TORCH_PEERS = ("hf-torch", "fla")
PEERS = (*TORCH_PEERS, "maxtext")


# ---------------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shape:
    """Benchmark shape: B=1, T, Hk key heads, Hv value heads, d=128; q/k/v in ``dtype`` (gates always fp32)."""

    length: int
    heads_k: int = HEADS
    heads_v: int = HEADS
    dtype: str = "fp32"

    def describe(self) -> str:
        return f"B={BATCH} Hk={self.heads_k} Hv={self.heads_v} d={DIM} {self.dtype}"


def _inputs(shape: Shape, convert):
    """Deterministic inputs q, k [B, T, Hk, D], v [B, T, Hv, D], g, beta [B, T, Hv], the output cotangent.

    Each array is handed to ``convert(array, is_gate)`` (to a jax / torch array) as soon as it is drawn, so the worker
    never holds numpy copies of all inputs at once (they would inflate its peak RSS).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    qk_shape = (BATCH, shape.length, shape.heads_k, DIM)
    v_shape = (BATCH, shape.length, shape.heads_v, DIM)
    q, k = (convert(rng.standard_normal(qk_shape, dtype=np.float32), False) for _ in range(2))
    v = convert(rng.standard_normal(v_shape, dtype=np.float32), False)
    g = convert(-np.log1p(np.exp(rng.standard_normal(v_shape[:3], dtype=np.float32))), True)  # -softplus <= 0
    beta = convert(1.0 / (1.0 + np.exp(-rng.standard_normal(v_shape[:3], dtype=np.float32))), True)
    cot = convert(rng.standard_normal(v_shape, dtype=np.float32), False)
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


def _worker_jax(impl: str, shape: Shape, mode: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    if impl == "maxtext":
        mt = _maxtext_fn()
        repeat = shape.heads_v // shape.heads_k  # MaxText expects q/k already repeated to the value heads

        def run(q, k, v, g, beta):
            q, k = (jnp.repeat(x, repeat, axis=2) for x in (q, k))
            return mt(q, k, v, g, beta, use_qk_norm_in_gdn=True, compute_dtype=jnp.float32)[0]
    else:
        sys.path.insert(0, str(REPO))
        from qwen35_jax.ops import gated_delta_rule

        def run(q, k, v, g, beta):
            return gated_delta_rule(q, k, v, g, beta, use_qk_l2norm=True, impl=impl)[0]

    dtype = jnp.bfloat16 if shape.dtype == "bf16" else jnp.float32
    *args, cot = _inputs(shape, lambda x, gate: jax.device_put(jnp.asarray(x, jnp.float32 if gate else dtype)))
    if mode == "fwd":
        fn = jax.jit(run)
    else:
        # The cotangent is an argument, not a closed-over constant: XLA would embed a constant in the executable.
        grad = jax.grad(lambda *a: jnp.sum(run(*a[:5]).astype(jnp.float32) * a[5]), argnums=(0, 1, 2, 3, 4))
        fn = jax.jit(grad)
        args = [*args, cot]
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    ms = _median_ms(lambda: jax.block_until_ready(compiled(*args)), repeats)
    device = jax.devices()[0]
    if device.platform == "cpu":
        peak = _peak_rss_mb()
    else:
        peak = (device.memory_stats() or {}).get("peak_bytes_in_use", float("nan")) / 2**20
    return {"ms": ms, "compile_s": compile_s, "peak_mb": peak, "device": device.platform}


def _worker_torch(impl: str, shape: Shape, mode: str, repeats: int) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    if impl == "fla":
        if not cuda:
            raise RuntimeError("fla's Triton kernels need a CUDA GPU")
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        def call(q, k, v, g, beta):
            return chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]
    else:
        from transformers.models.qwen3_5.modeling_qwen3_5 import torch_chunk_gated_delta_rule

        repeat = shape.heads_v // shape.heads_k  # the HF layer repeats q/k to the value heads before the rule

        def call(q, k, v, g, beta):
            q, k = (x.repeat_interleave(repeat, dim=2) for x in (q, k))
            return torch_chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]

    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if shape.dtype == "bf16" else torch.float32
    q, k, v, g, beta, cot = _inputs(
        shape, lambda x, gate: torch.from_numpy(x).to(device=device, dtype=torch.float32 if gate else dtype))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if mode == "fwd":

        def fn():
            with torch.no_grad():
                call(q, k, v, g, beta)
            sync()
    else:
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, beta)]

        def fn():
            for x in leaves:
                x.grad = None
            (call(*leaves).float() * cot.float()).sum().backward()
            sync()

    ms = _median_ms(fn, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    return {"ms": ms, "compile_s": None, "peak_mb": peak, "device": device}


# ---------------------------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------------------------
def _run_worker(python: str, impl: str, shape: Shape, mode: str, repeats: int, timeout: float | None) -> dict:
    cmd = [python, str(pathlib.Path(__file__).resolve()), "--worker", impl, "--seq", str(shape.length),
           "--heads-k", str(shape.heads_k), "--heads-v", str(shape.heads_v), "--dtype", shape.dtype,
           "--mode", mode, "--repeats", str(repeats)]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within --worker-timeout {timeout:g} s (compile + {repeats + 1} runs)"}
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


def resolve_interpreter(name: str) -> str:
    """``--ref-python``: a bare command name (``python3``) is looked up on PATH like a shell would; a relative path
    (``.venv-ref/bin/python``) is taken from the repository root; an absolute path as it is."""
    if os.sep not in name:
        return shutil.which(name) or name  # not found: the probe then reports the peer as unavailable
    return name if os.path.isabs(name) else str(REPO / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq", default="512,2048,8192", help="comma-separated sequence lengths")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median), >= 5 recommended")
    parser.add_argument("--impls", default="recurrent,chunked", help="our implementations (pallas added by backend)")
    parser.add_argument("--heads-k", type=int, default=HEADS, help="key heads Hk")
    parser.add_argument("--heads-v", type=int, default=HEADS, help="value heads Hv (a multiple of Hk)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of q, k, v (gates stay fp32)")
    parser.add_argument("--ref-python", default=".venv-ref/bin/python", help="interpreter with torch + transformers")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"peers to run, a subset of {','.join(PEERS)}")
    parser.add_argument("--no-peers", action="store_true", help="run no peer (same as --peers '')")
    parser.add_argument("--worker-timeout", type=float, help="seconds per worker (compile + runs); none by default")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("fwd", "fwd+bwd"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    peers = [] if args.no_peers else [p for p in args.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"--peers: unknown {sorted(unknown)}; choose from {','.join(PEERS)}")
    if args.heads_k < 1 or args.heads_v % args.heads_k:
        parser.error(f"--heads-v ({args.heads_v}) must be a positive multiple of --heads-k ({args.heads_k})")
    if args.worker:
        shape = Shape(int(args.seq), args.heads_k, args.heads_v, args.dtype)
        if args.worker in TORCH_PEERS:
            result = _worker_torch(args.worker, shape, args.mode, args.repeats)
        else:
            result = _worker_jax(args.worker, shape, args.mode, args.repeats)
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
    ref_python = resolve_interpreter(args.ref_python)
    probes = {
        "hf-torch": (ref_python, "from transformers.models.qwen3_5.modeling_qwen3_5 import "
                                 "torch_chunk_gated_delta_rule; print(True)",
                     f"not available at {ref_python}: {HF_INSTALL}"),
        "fla": (ref_python, "import torch; from fla.ops.gated_delta_rule import chunk_gated_delta_rule; "
                            "print(torch.cuda.is_available())",
                f"not available at {ref_python} (Triton, CUDA only): {FLA_INSTALL}"),
        "maxtext": (sys.executable, "import importlib.util as u; print(u.find_spec('maxtext') is not None)",
                    f"not available: {MAXTEXT_INSTALL}"),
    }
    for peer in peers:
        python, code, missing = probes[peer]
        if _probe(python, code) == "True":
            rows.append((python, peer))
        else:
            notes.append(f"{peer}: {missing}")

    header = (f"{'T':>6} {'impl':<10} {'fwd ms':>9} {'compile s':>9} {'peak MB':>8} "
              f"{'f+b ms':>9} {'compile s':>9} {'peak MB':>8}")
    describe = Shape(0, args.heads_k, args.heads_v, args.dtype).describe()
    print(f"gated delta rule, {describe}, backend {backend}, median of {args.repeats} (peak: process RSS on CPU, "
          "device memory on a GPU); "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    print(header)
    print("-" * len(header), flush=True)
    results = []
    for length in seqs:
        for python, impl in rows:
            shape = Shape(length, args.heads_k, args.heads_v, args.dtype)
            fwd = _run_worker(python, impl, shape, "fwd", args.repeats, args.worker_timeout)
            if impl == "recurrent" and length > RECURRENT_MAX_T:
                state_gib = 4 * BATCH * args.heads_v * DIM * DIM * length / 2**30
                notes.append(f"recurrent: forward+backward skipped at T={length} (autodiff through the token scan "
                             f"keeps per-token [dk, dv] states: several tensors of {state_gib:.0f} GiB each)")
                fb = {}
            else:
                fb = _run_worker(python, impl, shape, "fwd+bwd", args.repeats, args.worker_timeout)
            results.append({"T": length, "shape": describe, "impl": impl, "fwd": fwd, "fwd+bwd": fb})
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
