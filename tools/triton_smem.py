"""Shared memory of every compiled GPU gated-delta-rule kernel, per GPU generation, without a GPU.

    python -m tools.triton_smem [--head-dims 16,32,128] [--dtypes float32,bfloat16] [--capabilities 8.0,8.9,9.0]

Each Pallas Triton kernel of ``pallas_gpu`` (forward and backward) is lowered to Triton IR exactly as JAX emits it
for a GPU, then compiled by the ``triton`` package (``pip install -e .[gpu-aot]``) for each CUDA compute capability,
which reports the shared memory one thread block needs. The table prints each kernel's bytes against the block limit
of that generation divided by ``pallas_gpu.SHARED_MEMORY_MARGIN`` (XLA's bundled Triton and the offline build differ;
see there). Exit status 1 when a kernel does not fit. Triton's compile runs on the CPU; no GPU or driver is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp

from qwen35_jax.ops.gated_delta_rule import pallas_gpu

_FUNC_NAME = re.compile(r"tt\.func public @(\w+)")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One kernel set: head dims, input dtype and value tile (None: the kernels' default)."""

    d_k: int
    d_v: int
    dtype: str
    block_dv: int | None = None

    def label(self) -> str:
        tile = self.block_dv or min(self.d_v, pallas_gpu.DEFAULT_BLOCK_DV)
        return f"dk={self.d_k} dv={self.d_v} tile={tile} {self.dtype}"


@dataclasses.dataclass(frozen=True)
class Measured:
    variant: Variant
    kernel: str
    capability: tuple[int, int]
    shared_bytes: int
    compile_s: float

    @property
    def limit(self) -> int:
        return pallas_gpu.SHARED_MEMORY_LIMITS[self.capability]

    @property
    def fits(self) -> bool:
        return self.shared_bytes * pallas_gpu.SHARED_MEMORY_MARGIN <= self.limit


@contextlib.contextmanager
def _capture_triton_modules() -> Iterator[list[str]]:
    """Collect the Triton IR of every pallas_call lowered inside the block (JAX's private lowering hook)."""
    from jax._src.pallas.triton import pallas_call_registration as registration

    captured: list[str] = []
    original = registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = original(*args, **kwargs)
        captured.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        yield captured
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = original


def lowered_kernels(variant: Variant, length: int = 256, h_k: int = 1, h_v: int = 2) -> dict[str, str]:
    """Kernel name -> Triton IR of the forward and backward kernels (identical kernels once). The IR does not depend
    on the sequence length or head counts (they only set the grid and the loop bounds)."""
    from jax._src import mesh as mesh_lib  # AbstractDevice is not public in jax 0.12

    gpu = mesh_lib.AbstractDevice(device_kind="NVIDIA H100", num_cores=None, platform="gpu")
    dtype, f32 = jnp.dtype(variant.dtype), jnp.float32
    shapes = [((1, length, h_k, variant.d_k), dtype)] * 2 + [
        ((1, length, h_v, variant.d_v), dtype), ((1, length, h_v), f32), ((1, length, h_v), f32),
        ((1, h_v, variant.d_k, variant.d_v), f32), ((1, length), jnp.int32)]

    def loss(*args):
        o, s = pallas_gpu.gated_delta_rule_core(*args, block_dv=variant.block_dv)
        return jnp.sum(o.astype(f32)) + jnp.sum(s)

    mesh = jax.sharding.AbstractMesh((1,), ("x",), abstract_device=gpu)
    with _capture_triton_modules() as modules, jax.sharding.use_abstract_mesh(mesh):
        jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)))).trace(
            *(jax.ShapeDtypeStruct(s, d) for s, d in shapes)).lower(lowering_platforms=("cuda",))
    kernels: dict[str, str] = {}
    seen: set[str] = set()
    for text in modules:
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            match = _FUNC_NAME.search(text)
            kernels[match.group(1) if match else f"kernel{len(kernels)}"] = text
    return kernels


def shared_memory(ttir: str, capability: tuple[int, int], num_warps: int = pallas_gpu.NUM_WARPS) -> tuple[int, float]:
    """(bytes of shared memory per block, compile seconds) of Triton IR compiled for a CUDA compute capability."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
    except ImportError as err:
        raise RuntimeError("tools.triton_smem needs the triton package: pip install -e '.[gpu-aot]'") from err
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ttir)
        start = time.perf_counter()
        compiled = triton.compile(path, target=GPUTarget("cuda", capability[0] * 10 + capability[1], 32),
                                  options={"num_warps": num_warps, "num_stages": 1})
        return int(compiled.metadata.shared), time.perf_counter() - start


def measure(variants: list[Variant], capabilities: list[tuple[int, int]]) -> list[Measured]:
    rows = []
    for variant in variants:
        for name, ttir in lowered_kernels(variant).items():
            for capability in capabilities:
                shared, seconds = shared_memory(ttir, capability)
                rows.append(Measured(variant, name, capability, shared, seconds))
    return rows


def table(rows: list[Measured]) -> str:
    lines = [f"| kernel | variant | sm | shared KiB | limit / {pallas_gpu.SHARED_MEMORY_MARGIN} KiB | fits | compile |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        budget = r.limit / pallas_gpu.SHARED_MEMORY_MARGIN / 1024
        fits = "yes" if r.fits else "NO"
        lines.append(f"| {r.kernel} | {r.variant.label()} | {r.capability[0]}.{r.capability[1]} | "
                     f"{r.shared_bytes / 1024:.0f} | {budget:.0f} | {fits} | {r.compile_s:.1f} s |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", default="128", help="dk = dv values, comma separated")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--block-dv", type=int, default=None, help="value tile (default: the kernels' default)")
    parser.add_argument("--capabilities", default=",".join(f"{a}.{b}" for a, b in pallas_gpu.SHARED_MEMORY_LIMITS),
                        help="CUDA compute capabilities, e.g. 8.0,9.0")
    args = parser.parse_args(argv)
    # A fresh cache, so every row's compile time is a real compile.
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_smem_")
    capabilities = [tuple(int(p) for p in c.split(".")) for c in args.capabilities.split(",")]
    unknown = [c for c in capabilities if c not in pallas_gpu.SHARED_MEMORY_LIMITS]
    if unknown:
        parser.error(f"no shared-memory limit known for {unknown}; known: {sorted(pallas_gpu.SHARED_MEMORY_LIMITS)}")
    variants = [Variant(d, d, dtype, args.block_dv) for d in _ints(args.head_dims) for dtype in args.dtypes.split(",")]
    rows = measure(variants, capabilities)
    print(table(rows))
    return 0 if all(r.fits for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
