#!/usr/bin/env bash
# The GPU check of the gated delta rule kernels, as one script for a machine with a CUDA GPU:
#
#     bash tools/gpu_check_gdn.sh [OUT_DIR]        (default build/gpu_check; logs + JSON land there)
#
# 1. tests/ops/test_gdn_pallas.py on the GPU: the Pallas Triton kernels run *compiled* (not interpreted) against the
#    token recurrence — outputs, final state and gradients, the small CI cases plus dk = dv = 128 at T = 2000.
# 2. tools.bench_gdn at T = 2048, 8192 (B=1, H=16, d=128, fp32): chunked (XLA on the GPU) and pallas_gpu beside the
#    peers on the same GPU: transformers' torch rule, fla's Triton kernel, MaxText's JAX rule.
# 3. The same at the 397B layer's shape: Hk=16, Hv=64, bf16, T=8192.
# Each step has a time limit (240 + 300 + 150 s at most, so it fits a 15-minute GPU lease with the machine's start);
# a step that runs out keeps what it printed in its log.
#
# It uses the machine's own python3 (jax with CUDA, torch, transformers). Wheels found in .whl/ (e.g. fla-core,
# maxtext, downloaded with `pip download --no-deps`) are installed into /tmp/gdn_site first: such a machine may have no
# package index. fp32 matmuls run at full precision (JAX_DEFAULT_MATMUL_PRECISION=highest): XLA's GPU default is tf32,
# which would make the fp32 reference itself the least accurate party.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-build/gpu_check}
mkdir -p "$OUT_DIR"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gdn_site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/gdn_site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
export JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c "import jax, torch, triton; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, \
'| triton', triton.__version__)" | tee -a "$OUT_DIR/gpu.txt"

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT_DIR/NAME.log, keep going on failure
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

step pytest_gpu 240 python3 -m pytest -q -s -p no:cacheprovider tests/ops/test_gdn_pallas.py \
  -k "gpu and (recurrence or bf16 or head_dim)"
# A worker that has not compiled and run within 75 s is reported as such instead of holding up the peers behind it.
step bench_fp32 300 python3 -m tools.bench_gdn --seq 2048,8192 --impls chunked --ref-python python3 \
  --worker-timeout 75 --json "$OUT_DIR/bench_fp32.json"
step bench_397b_bf16 150 python3 -m tools.bench_gdn --seq 8192 --impls chunked --heads-k 16 --heads-v 64 \
  --dtype bf16 --peers fla,hf-torch --ref-python python3 --worker-timeout 75 --json "$OUT_DIR/bench_397b_bf16.json"
