#!/usr/bin/env bash
# The GPU check of the gated delta rule kernels, as one script for a machine with a CUDA GPU:
#
#     bash tools/gpu_check_gdn.sh [OUT_DIR]        (default build/gpu_check; logs + JSON land there)
#
# 1. tests/ops/test_gdn_pallas.py on the GPU: the Pallas Triton kernels run *compiled* (not interpreted) against the
#    token recurrence -- outputs, final state and gradients, the small CI cases plus dk = dv = 128 at T = 2000. XLA
#    compiles every kernel here, so a kernel over the GPU's shared-memory limit fails this step.
# 2. tools.bench_gdn at T = 8192 (B=1, H=16, d=128, fp32): chunked (XLA on the GPU) and pallas_gpu beside the peers
#    on the same GPU: transformers' torch rule, fla's Triton kernel, MaxText's JAX rule (where installed).
# 3. The same at the 397B layer's shape: Hk=16, Hv=64, bf16, T=8192.
# 4. Six training steps of configs/qwen35_0p8b.py:gpu (bf16, one 4,096-token sequence a step) with the chunked and
#    with the Triton gated delta rule: median tokens/s and MFU of steps 3-6.
# Each step has a time limit (120 + 150 + 100 + 2 x 80 s = 530 s, inside 9 minutes); a step that runs out keeps
# what it printed in its log.
#
# It uses the machine's own python3 (jax with CUDA, torch, transformers). Wheels found in .whl/ (`make gpu-wheels`:
# fla-core, and the training stack's packages such an image lacks) are installed into /tmp/gdn_site first: such a
# machine may have no package index. fp32 matmuls run at full precision (JAX_DEFAULT_MATMUL_PRECISION=highest):
# XLA's GPU default is tf32, which would make the fp32 reference itself the least accurate party.
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

step pytest_gpu 120 python3 -m pytest -q -s -p no:cacheprovider tests/ops/test_gdn_pallas.py \
  -k "gpu and (recurrence or bf16 or head_dim) and not interpreted"
# A worker that has not compiled and run within 60 s is reported as such instead of holding up the peers behind it.
step bench_fp32 150 python3 -m tools.bench_gdn --seq 8192 --impls chunked --ref-python python3 \
  --worker-timeout 60 --json "$OUT_DIR/bench_fp32.json"
step bench_397b_bf16 100 python3 -m tools.bench_gdn --seq 8192 --impls chunked --heads-k 16 --heads-v 64 \
  --dtype bf16 --peers fla,hf-torch --ref-python python3 --worker-timeout 60 --json "$OUT_DIR/bench_397b_bf16.json"
for impl in chunked pallas_gpu; do
  rm -rf "/tmp/gdn_train_$impl"
  step "train_0p8b_$impl" 80 python3 -m experiments.train --config configs/qwen35_0p8b.py:gpu \
    --workdir "/tmp/gdn_train_$impl" --config.model.gdn_impl="$impl" --config.train.steps=6 \
    --config.checkpoint.every=1000
done
python3 - "$OUT_DIR" <<'PY' | tee "$OUT_DIR/train_0p8b.md"
import json, statistics, sys
print("| gdn_impl | tokens/s (median, steps 3-6) | MFU |\n|---|---|---|")
for impl in ("chunked", "pallas_gpu"):
    try:
        rows = [json.loads(line) for line in open(f"/tmp/gdn_train_{impl}/metrics.jsonl")]
    except OSError:
        print(f"| {impl} | did not finish (see train_0p8b_{impl}.log) | |")
        continue
    rows = [r for r in rows if r.get("step", 0) >= 3 and "tokens_per_s" in r]
    tps = statistics.median(r["tokens_per_s"] for r in rows) if rows else float("nan")
    mfu = statistics.median(r.get("mfu", float("nan")) for r in rows) if rows else float("nan")
    print(f"| {impl} | {tps:,.0f} | {mfu:.1%} |")
PY
