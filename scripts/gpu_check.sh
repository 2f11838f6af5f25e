#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU, torch, nvcc and ninja but no internet:
#   1. build the CUDA extension in place against this machine's torch,
#   2. run the op tests (the CUDA ones run here; they skip on CPU-only machines),
#   3. run the kernel benchmark on the GPU (fused vs eager vs torch.compile, and Liger's
#      KL path when liger_kernel imports: carry its wheel in .whl/ to include it).
# Everything is logged; results land in $OUT (the device tool's folder) or benchmarks/results.
# Meant to finish within ~8 minutes on an H100/H200.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== $* ($(date +%T))"; }
{
  step "machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  if ls .whl/*.whl >/dev/null 2>&1; then
    step "installing carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/asrkd-site .whl/*.whl \
      && export PYTHONPATH="/tmp/asrkd-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  step "build (FORCE_CUDA=1)"
  arch="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')"
  rm -f asrkd/_C*.so asrkd/_build_info.json
  time FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$arch}" MAX_JOBS="$(nproc)" \
    "$PY" setup.py -q build_ext --inplace >"$RESULTS/gpu_build.log" 2>&1 || { tail -40 "$RESULTS/gpu_build.log"; echo "BUILD FAILED"; exit 1; }
  "$PY" -c "import torch, asrkd.ops as o; print(o.extension_info())"
  step "tests (tests/test_ops.py, CUDA included)"
  "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py -rs 2>&1 | tail -25
  step "benchmark"
  "$PY" benchmarks/bench_kd_kl.py --device cuda --min-run-time 0.3 --out-dir "$RESULTS"
  step "done"
} 2>&1 | tee "$RESULTS/gpu_check.log"
