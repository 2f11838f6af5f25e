#!/usr/bin/env bash
# Lint and format check (ruff, configured in pyproject.toml); run by .ci/run after the tests.
#   scripts/lint.sh --fix     apply the fixes and the formatting instead of checking
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUFF=.venv/bin/ruff
[ -x "$RUFF" ] || { echo "[lint] no $RUFF: run scripts/setup.sh first" >&2; exit 1; }
if [ "${1:-}" = "--fix" ]; then
  "$RUFF" check --fix .
  "$RUFF" format .
else
  "$RUFF" check .
  "$RUFF" format --check .
fi
