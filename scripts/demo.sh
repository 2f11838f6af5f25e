#!/usr/bin/env bash
# The README's main-job command until the mini recipe lands: set up .venv, then show the
# fused KD op (value and gradient against the fp64 reference, one timing line).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/asrkd demo "$@"
