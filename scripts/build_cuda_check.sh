#!/usr/bin/env bash
# Compile and link the CUDA kernels on a machine without a GPU (CI): a CUDA compile error
# fails here. The result is built into a temporary folder and only checked to load and to
# register CUDA kernels for every op; the installed CPU build is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ] || { echo "[cuda-check] ERROR: no nvcc on PATH and CUDA_HOME unset" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "[cuda-check] compiling csrc/cuda for sm_${TORCH_CUDA_ARCH_LIST:-9.0} (a few minutes)" >&2
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  .venv/bin/python setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp" >"$out/build.log" 2>&1 || {
  grep -E "error" -A3 "$out/build.log" | head -80 >&2
  echo "[cuda-check] ERROR: CUDA build failed" >&2
  exit 1
}
.venv/bin/python - "$out" <<'PY'
import glob, sys
import torch
so = glob.glob(f"{sys.argv[1]}/lib/asrkd/_C*.so")[0]
torch.ops.load_library(so)
for op in ("kd_kl_div_fwd", "kd_kl_div_topk_fwd", "kd_kl_scale_grad_"):
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"asrkd::{op}", "CUDA"):
        raise SystemExit(f"[cuda-check] ERROR: no CUDA kernel registered for asrkd::{op}")
print("[cuda-check] CUDA kernels compiled, linked and registered for every op")
PY
