"""Optuna samplers by the names a space file uses, seeded from the space and the study's length.

A sampler's random state lives in memory, not in the study: a resumed run that re-seeded it with the space's
seed would replay the first run's random draws (a seeded random sampler, TPE's start-up trials) and propose the
same candidates again. So the seed is derived from the space's seed AND the number of trials the study already
holds (:func:`derived_seed`): a first start keeps the space's seed (reproducible), each resume draws a fresh,
still deterministic, stream. Several workers asking TPE at once get ``constant_liar`` (Optuna's way to see the
running trials as bad ones, so that parallel asks spread out; Optuna 5's default, set explicitly so that it holds
whatever the default becomes).

A space's ``sampler.args`` / ``pruner.args`` are checked when the space is validated, by building the Optuna object
with them (:func:`checked_args`): a misspelt argument, a value of the wrong type, or one Optuna rejects is refused
with the file and line, before any run folder exists.

>>> checked_args(optuna.samplers.TPESampler, {"n_startup_trials": "ten"}, what="sampler 'tpe'")  # doctest: +SKIP
search.config.yaml_io.FieldError: sampler 'tpe': argument 'n_startup_trials' takes int, got 'ten'
"""

from __future__ import annotations

import collections.abc
import difflib
import hashlib
import inspect
import sys
import typing
import warnings
from typing import Any

import optuna

from search.config.space import Space
from search.config.yaml_io import FieldError

SAMPLERS: dict[str, Any] = {
    "tpe": optuna.samplers.TPESampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
    "nsgaiii": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "random": optuna.samplers.RandomSampler,
}

# Pruners that take keyword arguments; our own (baseline, pareto) take `margin`, `none` nothing.
PRUNERS: dict[str, Any] = {
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}


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


# Words in a parameter's annotation that mean a Python object (a function, a sampler, ...), which YAML cannot give.
_OBJECT_TYPES = ("Callable", "Sampler", "Pruner", "Generator", "Mutation", "Crossover", "Trial")


def yaml_arguments(cls: Any) -> dict[str, Any]:
    """The keyword arguments of an Optuna class a YAML file can give (numbers, strings, flags, lists of them),
    each with its type hint; functions, samplers and other objects cannot be written in YAML."""
    out: dict[str, Any] = {}
    for name, param in inspect.signature(cls).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        an_object = any(word in str(param.annotation) for word in _OBJECT_TYPES)
        if an_object or (callable(param.default) and not isinstance(param.default, type)):
            continue
        out[name] = _hint(cls, param.annotation)
    return out


def _hint(cls: Any, annotation: Any) -> Any:
    # Optuna writes `from __future__ import annotations`, with some names imported only for type checkers.
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    namespace = {**vars(collections.abc), **vars(typing), **vars(sys.modules[cls.__module__])}
    try:
        return eval(annotation, namespace)  # noqa: S307 - the annotation text of an installed library
    except Exception:
        return Any


def checked_args(cls: Any, args: dict[str, Any], *, what: str, build: bool = True) -> dict[str, Any]:
    """``args`` for ``cls``, checked against its signature and types, and (``build``) by constructing it.

    Raises :class:`FieldError` located at ``args.<name>`` with the fix: the arguments YAML can give.
    """
    from pydantic import TypeAdapter, ValidationError

    allowed = yaml_arguments(cls)
    accepted = inspect.signature(cls).parameters
    out: dict[str, Any] = {}
    for name, value in args.items():
        if name not in allowed:
            close = difflib.get_close_matches(str(name), list(allowed), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            why = "takes a Python object, which a space file cannot give" if name in accepted else "is unknown"
            raise FieldError(f"{what}: argument '{name}' {why}", loc=("args", name),
                             fix=f"{hint}use some of: {', '.join(allowed) or '(none)'}")
        try:
            out[name] = TypeAdapter(allowed[name]).validate_python(value, strict=False)
        except ValidationError as exc:
            expected = getattr(allowed[name], "__name__", None) or str(allowed[name]).replace("typing.", "")
            raise FieldError(f"{what}: argument '{name}' takes {expected}, got {value!r}", loc=("args", name),
                             fix=f"give '{name}' a value of type {expected} "
                                 f"({exc.errors()[0]['msg'].lower()})") from None
        except Exception:  # a hint pydantic cannot check: let the constructor judge it
            out[name] = value
    if build:
        try:
            with warnings.catch_warnings():  # experimental-feature warnings are for the run, not the check
                warnings.simplefilter("ignore")
                cls(**out)
        except Exception as exc:
            raise FieldError(f"{what} refused its arguments: {type(exc).__name__}: {exc}", loc=("args",),
                             fix="give values the Optuna class accepts (see its documentation)") from None
    return out
