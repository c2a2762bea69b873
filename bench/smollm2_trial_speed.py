"""Trials a minute of the SmolLM2 LoRA space on this machine's CPU and, where there is one, its GPU.

A trial of ``spaces/examples/smollm2_lora.yaml`` merges seven LoRA adapters into SmolLM2-135M (task arithmetic,
3 layer groups) and scores seven objectives, each 40 chat prompts answered greedily with a few tokens. This
builds the same shapes with random weights (the real GGUF is 98 MB; a device machine takes 64 MiB of upload):
a llama of SmolLM2-135M's configuration, seven rank-8 PEFT adapters on every linear layer, and seven ``python``
objectives that each generate 16 tokens for about 40 prompts of 48 tokens (the generative tasks' shape; lm-eval's
own work and the chat template's longer prompts are not in it, so a real trial costs more). Each device runs
``search start`` on it (no baselines, no pruning, TPE) and the study's own timestamps give seconds a trial.
On the 2-core CPU machine, one torch thread beside a benchmark: 10.1 s a trial, 5.9 trials a minute.

    .venv/bin/python bench/smollm2_trial_speed.py                      # CPU, and CUDA when torch sees a GPU
    .venv/bin/python bench/smollm2_trial_speed.py --devices cuda --trials 20

On a device machine without the dev environment, carry wheels of pydantic, optuna and peft (see
``bench/gpu_check.sh`` for the download line) and run it with ``PYTHONPATH`` on them. Prints one row a device:
trials, median seconds a trial (the first, which warms the device up, left out), trials a minute, and the
ratio of the GPU's to the CPU's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

#: SmolLM2-135M-Instruct as its GGUF describes it (search/worlds/smollm2/README.md).
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)

SCORE_PY = '''
import torch

def score(model, tokenizer, docs):
    """Greedy answers of 16 tokens to len(docs) prompts of 48 tokens: the cost of a generative task's batch."""
    g = torch.Generator().manual_seed(len(docs))
    ids = torch.randint(10, 49000, (len(docs), 48), generator=g).to(model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16,
                         do_sample=False, pad_token_id=0)
    return {"match": float((out[:, 48] == ids[:, 0]).float().mean())}
'''


def build_world(root: Path, seed: int = 0) -> Path:
    """Base, seven adapters, the objectives' function and documents, and the space; returns the space file."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from tiny import save_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from search.worlds.smollm2.skills import SKILLS
    from search.worlds.smollm2.train import TARGETS

    torch.manual_seed(seed)
    base = root / "base"
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    model.save_pretrained(base)
    save_tokenizer(base)
    for i, skill in enumerate(SKILLS):
        torch.manual_seed(seed + 1 + i)
        peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                                    LoraConfig(r=8, lora_alpha=16, target_modules=list(TARGETS),
                                               init_lora_weights=False))
        with torch.no_grad():  # small deltas, as trained adapters have
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.01)
        peft_model.save_pretrained(root / "adapters" / skill)
    (root / "score.py").write_text(SCORE_PY)
    # 80 documents split 50/25/25 by content: about 40 in the search role, as the world's tasks have
    (root / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(80)))
    space = {
        "base_model": str(base),
        "models": {s: str(root / "adapters" / s) for s in SKILLS},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.0]}},
        "granularity": {"layer_groups": 3},
        "objectives": [{"name": s, "evaluator": {"type": "python", "function": "score.py:score",
                                                 "data": "docs.jsonl"}, "metric": "match"} for s in SKILLS],
        "optimize": "weighted", "sampler": {"name": "tpe"}, "pruner": {"name": "none", "slices": [1.0]},
        "baselines": False, "dtype": "float32", "seed": seed,
    }
    file = root / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    return file


def time_device(space: Path, device: str, trials: int) -> dict[str, float]:
    """``search start`` on ``device`` for ``trials`` trials; seconds a trial from the study's timestamps."""
    import yaml

    from search.study.folder import RunFolder

    data = yaml.safe_load(space.read_text())
    run = space.parent / f"run-{device}"
    data.update(device=device, output=str(run), budget={"trials": trials})
    file = space.parent / f"space-{device}.yaml"
    file.write_text(yaml.safe_dump(data))
    t0 = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "search.cli", "start", str(file), "--quiet", "--no-select"],
                          cwd=ROOT).returncode
    if code != 0:  # the run said why (e.g. exit 2: CUDA is not available)
        raise SystemExit(f"search start on {device} exited {code}")
    wall = time.perf_counter() - t0
    done = sorted((t for t in RunFolder(run).study().get_trials(deepcopy=False)
                   if t.datetime_complete is not None), key=lambda t: t.number)
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    warm = seconds[1:] or seconds
    median = statistics.median(warm)
    return {"trials": len(done), "first": seconds[0], "median": median, "per_min": 60.0 / median, "wall": wall}


def main(argv: list[str] | None = None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when available)")
    ap.add_argument("--trials", type=int, default=4, help="trials a device (default 4: the first is warm-up)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the world and the runs (default: a "
                    "temporary one)")
    args = ap.parse_args(argv)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        space = build_world(work)
        print(f"world built in {time.perf_counter() - t0:.0f} s: {space}", flush=True)
        rows = {d: time_device(space, d, args.trials) for d in devices}
    name = torch.cuda.get_device_name(0) if "cuda" in rows else ""
    print(f"\nSmolLM2-135M shape, 7 LoRA adapters (r 8), 7 objectives x 40 prompts x 16 greedy tokens, float32; "
          f"torch threads {torch.get_num_threads()}" + (f"; {name}" if name else ""))
    print(f"{'device':8} {'trials':>6} {'first s':>8} {'median s':>9} {'trials/min':>11} {'wall s':>7}")
    for d, r in rows.items():
        print(f"{d:8} {r['trials']:6.0f} {r['first']:8.1f} {r['median']:9.2f} {r['per_min']:11.2f} {r['wall']:7.0f}")
    if "cpu" in rows and "cuda" in rows:
        print(f"GPU / CPU trials a minute: {rows['cuda']['per_min'] / rows['cpu']['per_min']:.1f}x")


if __name__ == "__main__":
    main()
