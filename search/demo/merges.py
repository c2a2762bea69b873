"""Merges of the demo world in memory, for its acceptance check and its table.

The base model is loaded once and used as the live model: each merge is written into its weights in place.
Task arithmetic is plain state-dict math; the other methods come from the project's registry
(:mod:`search.methods`), one tensor at a time.

    >>> world = load_world()
    >>> merged = task_arithmetic(world, {"add": 0.5, "rev": 0.5})
    >>> model = world.load(merged)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from search.demo import BASE_MODEL, FINETUNES, load_demo_model

StateDict = dict[str, torch.Tensor]


@dataclass
class World:
    """The live model (the base, then each merge in turn), the base weights and every fine-tune's delta."""

    model: PreTrainedModel
    tok: PreTrainedTokenizerBase
    base: StateDict
    deltas: dict[str, StateDict]

    def load(self, weights: Mapping[str, torch.Tensor] | None) -> PreTrainedModel:
        """Write ``weights`` (the base when None) into the live model and return it."""
        src = self.base if weights is None else weights
        with torch.no_grad():
            for name, p in self.model.state_dict().items():
                p.copy_(src[name])
        return self.model


def load_world(models_dir: Path | None = None) -> World:
    """Load the base and the deltas of every fine-tune in :data:`search.demo.FINETUNES`."""
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


def layer_group(name: str, layers: int) -> str:
    """The coarse group of a tensor: ``embed``, ``lower`` / ``upper`` half of the layers, or ``head``."""
    if "embed_tokens" in name:
        return "embed"
    if ".layers." in name:
        index = int(name.split(".layers.")[1].split(".")[0])
        return "lower" if index < layers // 2 else "upper"
    return "head"


GROUPS: tuple[str, ...] = ("embed", "lower", "upper", "head")


def grouped_task_arithmetic(world: World, lambdas: Mapping[str, Mapping[str, float]]) -> StateDict:
    """``base + Σ λ_(i,g) δ_i``: one λ per fine-tune ``i`` and layer group ``g`` (:func:`layer_group`)."""
    layers = world.model.config.num_hidden_layers
    out = {}
    for k, b in world.base.items():
        g = layer_group(k, layers)
        t = b.clone()
        for skill, by_group in lambdas.items():
            t += by_group[g] * world.deltas[skill][k]
        out[k] = t
    return out


def method_merge(world: World, method: str, per_model: Mapping[str, float],
                 globals_: Mapping[str, float | bool] | None = None, seed: int = 0) -> StateDict:
    """Merge every fine-tune with a registered method (``search.methods.get_method``), tensor by tensor."""
    from search.methods import get_method
    from search.methods.base import TensorParams

    m = get_method(method)
    skills = list(world.deltas)
    k = len(skills)
    params = TensorParams(per_model={n: torch.full((k,), float(v)) for n, v in per_model.items()},
                          globals=dict(globals_ or {}), is_base=torch.zeros(k, dtype=torch.bool))
    out = {}
    for i, (name, b) in enumerate(world.base.items()):
        deltas = torch.stack([world.deltas[s][name] for s in skills])
        out[name] = m.merge(b, deltas, params, seed=seed + i)
    return out


def hand_set_merges(world: World) -> dict[str, Callable[[], StateDict]]:
    """The hand-set merges of the table and the check, label -> how to make it: the uniform soup, task
    arithmetic at λ ∈ {0.3, 0.5, 0.7, 1.0}, TIES (density 0.2 as in its paper) and DARE-TIES (density 0.5),
    both with weight 1 and the registry's other defaults."""
    skills = list(world.deltas)
    k = len(skills)
    merges: dict[str, Callable[[], StateDict]] = {
        "uniform soup": lambda: task_arithmetic(world, {s: 1 / k for s in skills}),
    }
    for lam in (0.3, 0.5, 0.7, 1.0):
        merges[f"task arithmetic λ={lam}"] = lambda lam=lam: task_arithmetic(world, {s: lam for s in skills})
    merges["TIES (density 0.2, weight 1)"] = lambda: method_merge(world, "ties", {"weight": 1.0,
                                                                                  "density": 0.2})
    merges["DARE-TIES (density 0.5, weight 1)"] = lambda: method_merge(world, "dare_ties", {"weight": 1.0,
                                                                                           "density": 0.5})
    return merges


def lambda_search(skills: list[str], value: Callable[[dict[str, float]], float], *, budget: int = 40,
                  start: float = 0.3, step: float = 0.1, low: float = 0.0, high: float = 1.3,
                  start_point: Mapping[str, float] | None = None) -> tuple[dict[str, float], float, int]:
    """A per-fine-tune λ grid search by coordinate moves of ``step``.

    Start at ``start`` for every key (or at ``start_point``); try each key's λ one step down and up; keep a
    move when ``value`` improves; stop when a round changes nothing or ``budget`` evaluations are spent.
    Returns (λs, best value, evaluations spent).

    >>> lambda_search(["a"], lambda lam: -abs(lam["a"] - 0.6), budget=10)
    ({'a': 0.6}, -0.0, 9)
    """
    best = dict(start_point) if start_point is not None else {s: start for s in skills}
    best_v = value(best)
    spent = 1
    improved = True
    while improved and spent < budget:
        improved = False
        for s, sign in itertools.product(skills, (-1, 1)):
            if spent >= budget:
                break
            lam = round(best[s] + sign * step, 3)
            if not low <= lam <= high:
                continue
            cand = {**best, s: lam}
            v = value(cand)
            spent += 1
            if v > best_v + 1e-9:
                best, best_v, improved = cand, v, True
    return best, best_v, spent
