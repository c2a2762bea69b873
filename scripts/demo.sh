#!/usr/bin/env bash
# Set up (idempotent), then run the demo search end to end on the bundled demo models, offline, on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/search demo "$@"
