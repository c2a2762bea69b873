"""Optuna samplers by the names a space file uses, seeded from the space and the study's length.

A sampler's random state lives in memory, not in the study: a resumed run that re-seeded it with the space's
seed would replay the first run's random draws (a seeded random sampler, TPE's start-up trials) and propose the
same candidates again. So the seed is derived from the space's seed AND the number of trials the study already
holds (:func:`derived_seed`): a first start keeps the space's seed (reproducible), each resume draws a fresh,
still deterministic, stream. Several workers asking TPE at once get ``constant_liar`` (Optuna's way to see the
running trials as bad ones, so that parallel asks spread out; Optuna 5's default, set explicitly so that it holds
whatever the default becomes).

A space's ``sampler.args`` / ``pruner.args`` are checked when the space is validated
(:mod:`search.config.optuna_args`), before any run folder exists.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings

import optuna

from search.config.optuna_args import PRUNERS, SAMPLERS, checked_args
from search.config.space import Space

__all__ = ["PRUNERS", "SAMPLERS", "checked_args", "derived_seed", "make_sampler"]

def derived_seed(seed: int, trials_so_far: int) -> int:
    """The sampler's seed for a study that already holds ``trials_so_far`` trials: ``seed`` itself for a new
    study, else a 32-bit value hashed from both.

    >>> derived_seed(7, 0), derived_seed(7, 12) == derived_seed(7, 12), derived_seed(7, 12) != derived_seed(7, 13)
    (7, True, True)
    """
    if trials_so_far == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"merge-search/seed/{seed}/{trials_so_far}".encode()).digest()[:4], "big")


def make_sampler(space: Space, *, trials_so_far: int = 0, workers: int = 1) -> optuna.samplers.BaseSampler:
    """The space's sampler with its arguments; ``seed`` (the space's, or the one in ``sampler.args``) is
    derived with the trials the study holds (see the module docstring); TPE with several workers lies
    constantly about the running trials unless told otherwise."""
    cls = SAMPLERS[space.sampler.name]
    args = checked_args(cls, space.sampler.args, what=f"sampler '{space.sampler.name}'", build=False)
    if "seed" in inspect.signature(cls).parameters:
        seed = args.get("seed", space.seed)
        # QMC keeps its seed: its scrambled sequence continues from the trial count by itself
        args["seed"] = seed if seed is None or space.sampler.name == "qmc" else derived_seed(int(seed), trials_so_far)
    if space.sampler.name == "tpe" and workers > 1:
        args.setdefault("constant_liar", True)
    if space.sampler.name == "cmaes":
        # Baselines and retries are added by hand: CMA-ES should learn from them, and they cover the start.
        args.setdefault("consider_pruned_trials", True)
    with warnings.catch_warnings():  # "experimental argument" notices for arguments the user chose: not news
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(**args)
