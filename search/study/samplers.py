"""Optuna samplers by the names a space file uses, seeded from the space."""

from __future__ import annotations

import inspect
from typing import Any

import optuna

from search.config.space import Space
from search.errors import UserError

SAMPLERS: dict[str, Any] = {
    "tpe": optuna.samplers.TPESampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
    "nsgaiii": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "random": optuna.samplers.RandomSampler,
}


def make_sampler(space: Space) -> optuna.samplers.BaseSampler:
    """The space's sampler with its arguments; ``seed`` defaults to the space's seed."""
    cls = SAMPLERS[space.sampler.name]
    args = dict(space.sampler.args)
    accepted = inspect.signature(cls).parameters
    unknown = [a for a in args if a not in accepted]
    if unknown:
        raise UserError(f"sampler '{space.sampler.name}' takes no argument '{unknown[0]}'", field="sampler.args",
                        fix=f"use some of: {', '.join(p for p in accepted if p != 'self')}")
    if "seed" in accepted:
        args.setdefault("seed", space.seed)
    if space.sampler.name == "cmaes":
        # Baselines and retries are added by hand: CMA-ES should learn from them, and they cover the start.
        args.setdefault("consider_pruned_trials", True)
    return cls(**args)
