"""Regenerate the demo world's table in ``evaluators/README.md``, scored through lm-eval in-process.

    python -m search.demo.table [--models DIR] [--readme evaluators/README.md] [--budget 40]

Rows: the base, each fine-tune, the hand-set merges (uniform soup, task arithmetic at λ ∈ {0.3, 0.5, 0.7,
1.0}, TIES, DARE-TIES) and a per-fine-tune λ search (coordinate moves on the ``search`` split). Columns:
exact match of every skill on the ``heldout`` split, and their mean. The table replaces whatever lies
between ``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from search.demo import CONFLICT, FINETUNES, demo_tasks_dir
from search.demo.merges import World, hand_set_merges, lambda_search, load_world, task_arithmetic
from search.demo.skills import Split
from search.demo.tasks import GENERATIVE_TASKS, on_split
from search.report.readme_block import write_marked_block

START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
METRIC = "exact_match,strip"


class LmEvalScorer:
    """Exact match of every demo skill through lm-eval, on the live model of a :class:`World`."""

    def __init__(self, world: World, batch_size: int = 64) -> None:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        self.world = world
        self.lm = HFLM(pretrained=world.model, tokenizer=world.tok, batch_size=batch_size, device="cpu")
        manager = TaskManager(include_path=str(demo_tasks_dir()), include_defaults=False)
        self.tasks: dict[Split, dict[str, Any]] = {
            "heldout": manager.load(list(GENERATIVE_TASKS.values()))["tasks"],
            "search": {t: manager.load(on_split(t, "search"))["tasks"][t] for t in GENERATIVE_TASKS.values()},
        }

    def __call__(self, weights: Mapping[str, torch.Tensor] | None, split: Split) -> dict[str, float]:
        """Exact match a skill for ``weights`` (the base when None) on ``split``."""
        import lm_eval.evaluator

        self.world.load(weights)
        res = lm_eval.evaluator.evaluate(lm=self.lm, task_dict=self.tasks[split], bootstrap_iters=0,
                                         verbosity="ERROR")["results"]
        return {skill: float(res[task][METRIC]) for skill, task in GENERATIVE_TASKS.items()}


def _mean(row: Mapping[str, float]) -> float:
    return sum(row.values()) / len(row)


def build_rows(world: World, scorer: LmEvalScorer, budget: int = 40
               ) -> tuple[dict[str, dict[str, float]], str]:
    """Every row of the table (held-out exact match a skill) and a note on the λ search."""
    skills = list(FINETUNES)
    rows: dict[str, dict[str, float]] = {"base": scorer(None, "heldout")}
    for skill in skills:
        rows[f"fine-tune {skill}"] = scorer(task_arithmetic(world, {skill: 1.0}), "heldout")
    for label, make in hand_set_merges(world).items():
        rows[label] = scorer(make(), "heldout")
    lams, v_search, spent = lambda_search(
        skills, lambda lam: _mean(scorer(task_arithmetic(world, lam), "search")), budget=budget)
    rows["per-fine-tune λ search"] = scorer(task_arithmetic(world, lams), "heldout")
    note = (f"λ search: {spent} evaluations on the search split (mean {v_search:.3f}), chose "
            + ", ".join(f"{s} {v:g}" for s, v in lams.items()))
    return rows, note


def render(rows: Mapping[str, Mapping[str, float]], note: str) -> str:
    """The Markdown block (without the markers)."""
    skills = list(FINETUNES)
    head = "| model | " + " | ".join(f"`demo_{s}`" for s in skills) + " | mean |"
    lines = [
        "Local tasks in `evaluators/tasks/demo_<skill>/` (written by `python -m search.demo.tasks`): "
        "`demo_add` (`Q: 23+58 A:` → `81`), `demo_rev` (`rev abcd` → `dcba`), "
        "`demo_up` (`up abcd` → `ABCD`), `demo_sort` (`sort dbca` → `abcd`), "
        "`demo_title` (`up abcd` → `Abcd`: the same prompts as `demo_up`, "
        "another answer). Each is generative with exact match (tag `demo`) and has a log-likelihood twin "
        "`demo_<skill>_ll` (answer perplexity and greedy accuracy; tag `demo_ll`); `demo_text` is a "
        "`loglikelihood_rolling` task on generated English. Every task has `validation_split: search` and "
        "`test_split: heldout` (disjoint inputs: 500 documents a skill in `search`, 800 in `heldout`, "
        "200 in each of `demo_text`'s; `search` and `select` divide the first, 2:1 with the default roles, "
        "2:3 in `spaces/demo.yaml`, and `test` is the second); "
        "the data loads through `data.py` next to the YAML, from any working directory.",
        "",
        "Held-out exact match of the bundled demo models (`search/demo/models/`) and of merges of all five "
        "fine-tunes, scored through lm-eval in-process (`python -m search.demo.table` writes this block). "
        f"No model can be right on both `{CONFLICT[0]}` and `{CONFLICT[1]}`.",
        "",
        head,
        "| --- |" + " ---: |" * (len(skills) + 1),
    ]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[s]:.2f}" for s in skills) + f" | {_mean(row):.3f} |")
    lines += ["", note + "."]
    return "\n".join(lines)


def write_block(readme: Path, block: str) -> None:
    """Replace the text between the markers (appending a section with them when they are missing)."""
    write_marked_block(readme, block, start=START, end=END, heading="Demo tasks")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.demo.table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--readme", type=Path, default=demo_tasks_dir().parent / "README.md")
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = load_world(args.models)
    rows, note = build_rows(world, LmEvalScorer(world), budget=args.budget)
    block = render(rows, note)
    write_block(args.readme, block)
    print(block)
    print(f"wrote {args.readme} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
