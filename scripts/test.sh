#!/usr/bin/env bash
# The README's test command: set up .venv (see scripts/setup.sh) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k ops -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@" tests
