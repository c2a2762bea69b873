"""The demo world's acceptance check, with the fast in-torch scorer.

    python -m search.demo.check [--models DIR] [--n 200]

It measures, on held-out data: each model on every skill; each fine-tune's own skill while its task vector
is scaled over λ ∈ [0.5, 1.3]; hand-set merges (uniform soup, task arithmetic, TIES, DARE); and a quick
per-fine-tune λ search on the search split, re-scored on held-out. It prints the numbers and the verdicts.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from search.demo import BASE_MODEL, CONFLICT, FINETUNES, demo_models_dir, load_demo_model
from search.demo.scorer import Scores, score
from search.demo.skills import Example, Split, eval_examples

StateDict = dict[str, torch.Tensor]


@dataclass
class World:
    """The base model (reused as the live model of every merge), its weights and the fine-tunes' deltas."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    base: StateDict
    deltas: dict[str, StateDict]

    def load(self, weights: Mapping[str, torch.Tensor]) -> PreTrainedModel:
        with torch.no_grad():
            for name, p in self.model.state_dict().items():
                p.copy_(weights[name])
        return self.model


def load_world(models_dir: Path | None = None) -> World:
    model, tok = load_demo_model(BASE_MODEL, models_dir)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    deltas = {}
    for skill in FINETUNES:
        ft, _ = load_demo_model(skill, models_dir)
        deltas[skill] = {k: v.detach() - base[k] for k, v in ft.state_dict().items()}
    return World(model, tok, base, deltas)


def task_arithmetic(world: World, lambdas: Mapping[str, float]) -> StateDict:
    """``base + Σ λ_i δ_i`` over the skills named in ``lambdas``."""
    out = {}
    for k, b in world.base.items():
        t = b.clone()
        for skill, lam in lambdas.items():
            t += lam * world.deltas[skill][k]
        out[k] = t
    return out


def method_merge(world: World, method: str, per_model: Mapping[str, float], globals_: Mapping[str, float],
                 seed: int = 0) -> StateDict:
    """Merge with a registered project method (``search.methods``): every tensor, all fine-tunes."""
    from search.methods import get_method
    from search.methods.base import TensorParams

    m = get_method(method)
    skills = list(world.deltas)
    k = len(skills)
    params = TensorParams(per_model={n: torch.full((k,), float(v)) for n, v in per_model.items()},
                          globals=dict(globals_), is_base=torch.zeros(k, dtype=torch.bool))
    out = {}
    for i, (name, b) in enumerate(world.base.items()):
        deltas = torch.stack([world.deltas[s][name] for s in skills])
        out[name] = m.merge(b, deltas, params, seed=seed + i)
    return out


def evaluate(world: World, weights: Mapping[str, torch.Tensor] | None, data: Mapping[str, list[Example]]
             ) -> dict[str, Scores]:
    model = world.load(weights if weights is not None else world.base)
    return {skill: score(model, world.tok, ex) for skill, ex in data.items()}


def eval_data(split: Split, n: int) -> dict[str, list[Example]]:
    return {skill: eval_examples(skill, split, n) for skill in FINETUNES}


def mean_exact(s: Mapping[str, Scores]) -> float:
    return sum(v.exact for v in s.values()) / len(s)


def lambda_search(world: World, data: Mapping[str, list[Example]], budget: int = 40, seed: int = 0,
                  grid: tuple[float, ...] = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
                  ) -> tuple[dict[str, float], float]:
    """A quick per-fine-tune λ search on ``data`` (random grid points, then coordinate refinement)."""
    skills = list(world.deltas)
    rng = random.Random(seed)

    def value(lams: dict[str, float]) -> float:
        return mean_exact(evaluate(world, task_arithmetic(world, lams), data))

    best = {s: 0.3 for s in skills}
    best_v = value(best)
    spent = 1
    while spent < budget // 2:
        cand = {s: rng.choice(grid) for s in skills}
        v = value(cand)
        spent += 1
        if v > best_v:
            best, best_v = cand, v
    for s in itertools.cycle(skills):
        if spent >= budget:
            break
        for lam in (best[s] - 0.1, best[s] + 0.1):
            cand = {**best, s: round(max(0.0, lam), 3)}
            v = value(cand)
            spent += 1
            if v > best_v:
                best, best_v = cand, v
    return best, best_v


def _row(label: str, s: Mapping[str, Scores], field: Callable[[Scores], float] = lambda x: x.exact) -> str:
    vals = " ".join(f"{field(v):6.2f}" for v in s.values())
    return f"{label:28s} {vals}   mean {sum(field(v) for v in s.values()) / len(s):5.3f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.demo.check")
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--budget", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-methods", action="store_true", help="skip TIES/DARE (search.methods)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    world = load_world(args.models or demo_models_dir())
    held, search = eval_data("heldout", args.n), eval_data("search", args.n)
    skills = list(FINETUNES)
    print(f"{'held-out exact match':28s} " + " ".join(f"{s:>6s}" for s in skills))
    results: dict[str, dict[str, Scores]] = {"base": evaluate(world, None, held)}
    print(_row("base", results["base"]))
    for skill in skills:
        results[skill] = evaluate(world, task_arithmetic(world, {skill: 1.0}), held)
        print(_row(f"ft {skill}", results[skill]))
    print("\nown skill, task vector scaled by λ (exact / token acc / loglik):")
    for skill in skills:
        cells = []
        for lam in (0.0, 0.3, 0.5, 0.7, 1.0, 1.3):
            s = evaluate(world, task_arithmetic(world, {skill: lam}), {skill: held[skill]})[skill]
            cells.append(f"{lam}:{s.exact:.2f}/{s.token_acc:.2f}/{s.loglik:.2f}")
        print(f"  {skill:6s} " + "  ".join(cells))
    print()
    k = len(skills)
    hand = {"uniform soup": {s: 1 / k for s in skills}}
    for lam in (0.3, 0.5, 0.7, 1.0):
        hand[f"TA λ={lam}"] = {s: lam for s in skills}
    for label, lams in hand.items():
        results[label] = evaluate(world, task_arithmetic(world, lams), held)
        print(_row(label, results[label]))
    if not args.no_methods:
        merges = {"TIES defaults": ("ties", {"weight": 1.0, "density": 0.2}, {}),
                  "DARE defaults": ("dare_linear", {"weight": 1.0, "density": 0.5}, {})}
        for label, (method, pm, gl) in merges.items():
            try:
                w = method_merge(world, method, pm, gl)
            except (ImportError, KeyError) as e:
                print(f"{label}: not available ({e!r})")
                continue
            results[label] = evaluate(world, w, held)
            print(_row(label, results[label]))
    best_hand = max((lab for lab in results if lab not in ("base", *skills)),
                    key=lambda lab: mean_exact(results[lab]))
    lams, v_search = lambda_search(world, search, budget=args.budget)
    results["λ search"] = evaluate(world, task_arithmetic(world, lams), held)
    print(_row("λ search (held-out)", results["λ search"]), f"  search {v_search:.3f}", lams)
    print()
    gap = mean_exact(results["λ search"]) - mean_exact(results[best_hand])
    print(f"best hand-set: {best_hand} {mean_exact(results[best_hand]):.3f}; search +{gap:.3f}")
    base = results["base"]
    for skill in skills:
        others = max(results[o][skill].exact for o in skills if o != skill)
        own = results[skill][skill].exact
        print(f"  {skill}: own {own:.2f} vs best other {others:.2f} vs base {base[skill].exact:.2f}")
    print(f"conflict {CONFLICT}: done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
