"""The demo world's acceptance check, with the fast in-torch scorer (seconds, no lm-eval).

    python -m search.demo.check [--models DIR] [--n 200] [--budget 40]

On held-out data it measures each model on every skill; each fine-tune's own skill while its task vector is
scaled over λ ∈ {0.3, 0.5, 0.7, 1.0, 1.3} (exact match / per-token accuracy / answer log-likelihood); the
hand-set merges; and a per-fine-tune λ search run on the search split, re-scored on held-out.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from search.demo import CONFLICT, FINETUNES
from search.demo.merges import (
    GROUPS,
    World,
    grouped_task_arithmetic,
    hand_set_merges,
    lambda_search,
    load_world,
    task_arithmetic,
)
from search.demo.scorer import Scores, score
from search.demo.skills import Example, Split, eval_examples


def eval_data(split: Split, n: int) -> dict[str, list[Example]]:
    return {skill: eval_examples(skill, split, n) for skill in FINETUNES}


def evaluate(world: World, weights: Mapping[str, torch.Tensor] | None, data: Mapping[str, list[Example]]
             ) -> dict[str, Scores]:
    model = world.load(weights)
    return {skill: score(model, world.tok, ex) for skill, ex in data.items()}


def mean_exact(s: Mapping[str, Scores]) -> float:
    return sum(v.exact for v in s.values()) / len(s)


def _row(label: str, s: Mapping[str, Scores]) -> str:
    return f"{label:36s} " + " ".join(f"{v.exact:6.2f}" for v in s.values()) + f"   mean {mean_exact(s):5.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.demo.check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--group-budget", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = load_world(args.models)
    held, search = eval_data("heldout", args.n), eval_data("search", args.n)
    skills = list(FINETUNES)
    print(f"{'held-out exact match':36s} " + " ".join(f"{s:>6s}" for s in skills))
    results: dict[str, dict[str, Scores]] = {"base": evaluate(world, None, held)}
    print(_row("base", results["base"]))
    for skill in skills:
        results[skill] = evaluate(world, task_arithmetic(world, {skill: 1.0}), held)
        print(_row(f"fine-tune {skill}", results[skill]))
    print("\nown skill, own task vector scaled by λ (exact / token acc / answer loglik):")
    for skill in skills:
        cells = []
        for lam in (0.0, 0.3, 0.5, 0.7, 1.0, 1.3):
            s = evaluate(world, task_arithmetic(world, {skill: lam}), {skill: held[skill]})[skill]
            cells.append(f"{lam}: {s.exact:.2f}/{s.token_acc:.2f}/{s.loglik:5.2f}")
        print(f"  {skill:6s} " + "  ".join(cells))
    print()
    hand = []
    for label, make in hand_set_merges(world).items():
        results[label] = evaluate(world, make(), held)
        hand.append(label)
        print(_row(label, results[label]))
    lams, v_search, spent = lambda_search(
        skills, lambda lam: mean_exact(evaluate(world, task_arithmetic(world, lam), search)),
        budget=args.budget)
    results["λ search"] = evaluate(world, task_arithmetic(world, lams), held)
    print(_row(f"per-fine-tune λ ({spent} evals)", results["λ search"]), f"(search {v_search:.3f})", lams)
    flat_start = {f"{sk}/{g}": lams[sk] for sk in skills for g in GROUPS}

    def grouped(flat: dict[str, float]) -> dict[str, dict[str, float]]:
        return {sk: {g: flat[f"{sk}/{g}"] for g in GROUPS} for sk in skills}

    keys = list(flat_start)
    glams, gv_search, gspent = lambda_search(
        keys, lambda flat: mean_exact(evaluate(world, grouped_task_arithmetic(world, grouped(flat)), search)),
        budget=args.group_budget, start=0.0, start_point=flat_start)
    results["group search"] = evaluate(world, grouped_task_arithmetic(world, grouped(glams)), held)
    print(_row(f"per-layer-group λ (+{gspent} evals)", results["group search"]), f"(search {gv_search:.3f})")
    best_hand = max(hand, key=lambda lab: mean_exact(results[lab]))
    gap = mean_exact(results["λ search"]) - mean_exact(results[best_hand])
    print(f"\nbest hand-set: {best_hand} {mean_exact(results[best_hand]):.3f}; λ search gains {gap:+.3f}")
    for skill in skills:
        others = max(results[o][skill].exact for o in skills if o != skill)
        print(f"  {skill}: own fine-tune {results[skill][skill].exact:.2f}, "
              f"best other fine-tune {others:.2f}, "
              f"base {results['base'][skill].exact:.2f}")
    print(f"conflicting pair {CONFLICT}; done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
