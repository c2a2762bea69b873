"""The Optuna samplers and pruners a space file can name, and the check of their arguments.

A space's ``sampler.args`` / ``pruner.args`` are checked when the space is validated, by building the Optuna object
with them (:func:`checked_args`): a misspelt argument, a value of the wrong type, or one Optuna rejects is refused
with the file and line, before any run folder exists. (Here, in config, so that the space's validation needs
nothing from the study package, which builds on the space.)

>>> checked_args(optuna.samplers.TPESampler, {"n_startup_trials": "ten"}, what="sampler 'tpe'")  # doctest: +SKIP
search.config.yaml_io.FieldError: sampler 'tpe': argument 'n_startup_trials' takes int, got 'ten'
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import sys
import typing
import warnings
from typing import Any

import optuna

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
