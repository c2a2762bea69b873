#!/usr/bin/env bash
# The GPU check of issue 12, for one GPU machine (an H100/H200: >= 80 GB GPU, >= 100 GB host memory, 64 GB disk).
# Prepared on a CPU-only session and NOT YET RUN: the first session with a GPU runs it and pastes its output.
#
#   bash bench/gpu_check.sh            # ~7-10 minutes; everything it prints also goes to $OUT/gpu-check.log
#
# 1. the CUDA tests (CPU vs CUDA masks, streamed merge == resident merge);
# 2. bench/scale.py's 7B case (Llama-2-7B shape, 4 fine-tunes, bf16) in both placements, generated on the GPU;
# 3. a 7B family of five written as sparse files (headers only on disk; holes read as zeros, fine for timing),
#    `search plan` for it (80 GB: auto streams; fp32 + resident: refused, exit 2), a 5-trial search over it
#    with a cheap python evaluator (one forward pass) on this GPU (auto: resident on a 139 GB H200), and a 3-trial
#    search with placement: stream.
#
# The machine's python3 has torch, transformers, accelerate, safetensors, typer, rich, pyyaml, numpy, tqdm but
# not pydantic or optuna: carry them as wheels in .whl/ (downloaded on the CPU machine, in the repo root):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 optuna==5.0.0 \
#     colorlog==6.12.0
# and run with carry [".whl"] (about 3 MB).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
PY=${PY:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$ROOT
else
  export PYTHONPATH=$ROOT
fi
WORK=${WORK:-/tmp/gpu-check-work}
rm -rf "$WORK"; mkdir -p "$WORK"
STEPS=${STEPS:-1,2,3}   # e.g. STEPS=1,2 then STEPS=3 in two runs, if one run would pass 10 minutes
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
want() { [[ ",$STEPS," == *",$1,"* ]]; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'gpus', torch.cuda.device_count())"
free -g | head -2

if want 1; then
step "1. CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_dtype.py tests/test_placement.py -k "cuda" -rA 2>&1 | tail -15

fi
if want 2; then
step "2. bench/scale.py, Llama-2-7B shape, 4 fine-tunes, bf16, resident and stream"
timeout 240 $PY bench/scale.py --device cuda --size 7b --models 4 --repeats 2
fi
if want 3; then
step "3a. a sparse 7B family of five, and its plan"
$PY - "$WORK" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from bench.shapes import write_sparse_family
from tiny import save_tokenizer
root = Path(sys.argv[1])
base, models = write_sparse_family(root / "fam", "7b", 4, "bfloat16")
save_tokenizer(base)
(root / "score.py").write_text('''
import torch

def score(model, tokenizer, docs):
    ids = torch.tensor([[1, 5, 9, 12, 3, 7, 2, 4]], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits
    return {"score": float(logits.float().abs().mean())}
''')
(root / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(8)))
space = {"base_model": str(base), "models": {f"m{i}": str(p) for i, p in enumerate(models)},
         "methods": {"task_arithmetic": {"weight": [0.1, 1.0]}, "ties": {"weight": [0.1, 1.0], "density": [0.2, 0.9]},
                     "dare_ties": {"weight": [0.1, 1.0], "density": [0.2, 0.9]}},
         "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "score.py:score",
                                                    "data": "docs.jsonl"}, "metric": "score"}],
         "pruner": {"name": "none", "slices": [1.0]}, "baselines": False, "budget": {"trials": 5},
         "output": "run"}
import yaml
(root / "space.yaml").write_text(yaml.safe_dump(space))
(root / "space32.yaml").write_text(yaml.safe_dump({**space, "dtype": "float32", "placement": "resident"}))
(root / "stream.yaml").write_text(yaml.safe_dump({**space, "placement": "stream", "budget": {"trials": 3},
                                                  "output": "run-stream"}))
EOF
du -sh "$WORK/fam"
$PY -m search.cli plan "$WORK/space.yaml" --gpu-memory 80GB --cpu-memory 128GB; echo "exit $?"
$PY -m search.cli plan "$WORK/space32.yaml" --gpu-memory 80GB --cpu-memory 128GB; echo "exit $? (2 expected)"
$PY -m search.cli plan "$WORK/space.yaml"; echo "exit $? (this machine's own sizes)"

step "3b. a 5-trial search over the 7B family on this GPU"
START=$(date +%s)
timeout 200 $PY -m search.cli start "$WORK/space.yaml" --quiet --no-select; echo "exit $?"
echo "search wall seconds: $(( $(date +%s) - START ))"
$PY -m search.cli trials "$WORK/run" 2>&1 | head -12

step "3c. the same family, placement: stream (parents in pinned host memory), 3 trials"
START=$(date +%s)
timeout 150 $PY -m search.cli start "$WORK/stream.yaml" --quiet --no-select; echo "exit $?"
echo "search wall seconds: $(( $(date +%s) - START ))"
fi
step "done"
