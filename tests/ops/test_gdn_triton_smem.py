"""Shared memory of every compiled GPU gated-delta-rule kernel against the limit of the GPU generations we support.

The kernels' Triton IR (as JAX lowers it for a GPU) is compiled on this CPU by the triton package for a CUDA compute
capability, which sizes the shared memory from the kernels' block shapes; a kernel must fit its generation's
per-block limit with ``pallas_gpu.SHARED_MEMORY_MARGIN`` to spare (XLA's Triton asks for more than the offline
build). This is the check that would have caught the dk = 128 backward asking 288 KiB on an H200 (limit 227 KiB).

CI compiles the model's head size (128) in bf16 for Ampere/Ada and Hopper, in fp32 for Hopper, and the tiny
configs' head size (32) in fp32. Ampere and Ada (8.0 / 8.6 / 8.9) lower the same MMA code and measured the same
bytes for every kernel (``python -m tools.triton_smem``), so 8.0 is compiled once and held to the smallest 8.x
limit. The slow tier (``make check-slow``) compiles every head size, dtype and generation, fp32 on 8.x included
(its backward takes about a minute per generation to compile on 2 cores).
"""

import functools

import pytest

from qwen35_jax.ops.gated_delta_rule import pallas_gpu
from tools import triton_smem

AMPERE_ADA = (8, 0)
HOPPER = (9, 0)
# Each case compiles 7 kernels offline (20-55 s on 2 cores). CI keeps the model's head dim on the smallest limit
# (Ampere/Ada, bf16) and its largest tiles (fp32) on Hopper; the rest are in the slow tier, whose
# `tools.triton_smem --head-dims 16,32,128` also compiles every variant on every generation.
_SLOW = pytest.mark.slowtier
CASES = [
    (triton_smem.Variant(128, 128, "bfloat16"), AMPERE_ADA),
    pytest.param(triton_smem.Variant(128, 128, "bfloat16"), HOPPER, marks=_SLOW),
    (triton_smem.Variant(128, 128, "float32"), HOPPER),
    pytest.param(triton_smem.Variant(32, 32, "float32"), AMPERE_ADA, marks=_SLOW),
    pytest.param(triton_smem.Variant(32, 32, "float32"), HOPPER, marks=_SLOW),
]
EXPECTED_KERNELS = {"gdn_prepare", "gdn_state_walk", "gdn_output", "gdn_prepare_with_tm", "gdn_dvn_local",
                    "gdn_dstate_walk", "gdn_grads"}


@functools.cache
def kernels(variant: triton_smem.Variant) -> dict[str, str]:
    return triton_smem.lowered_kernels(variant)


def limit(capability: tuple[int, int]) -> int:
    family = [cap for cap in pallas_gpu.SHARED_MEMORY_LIMITS if cap[0] == capability[0]]
    return min(pallas_gpu.SHARED_MEMORY_LIMITS[cap] for cap in family)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("variant,capability", CASES, ids=lambda c: c.label() if hasattr(c, "label") else f"sm{c}")
def test_every_kernel_fits_shared_memory(variant, capability, tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    found = kernels(variant)
    assert set(found) == EXPECTED_KERNELS, sorted(found)  # a kernel added later is checked too, not skipped
    over = {}
    for name, ttir in found.items():
        shared, _ = triton_smem.shared_memory(ttir, capability)
        assert shared > 0, name  # every kernel stages matmul operands in shared memory
        if shared * pallas_gpu.SHARED_MEMORY_MARGIN > limit(capability):
            over[name] = shared
    assert not over, (f"kernels over {limit(capability)} B / {pallas_gpu.SHARED_MEMORY_MARGIN} on sm {capability}: "
                      f"{over}")
