#!/usr/bin/env bash
# Set up a fresh machine: a venv in .venv with torch first (CPU wheel pin), then the package and its dev extra.
# Idempotent: re-running on a ready venv only re-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first from the pinned CPU wheel, then everything else constrained so that nothing replaces it.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev]"
