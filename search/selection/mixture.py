"""Weights of a mixture of merge candidates: ``sum_j c_j * merge(spec_j)``, tensor by tensor.

Every selected model is a mixture: a trial is ``[(spec, 1.0)]``, an interpolation two specs at ``1 - alpha``
and ``alpha``, a soup its ingredients at ``1 / m``. Selection writes a mixture into the worker's live model to
score it; export computes the very same tensors (same operations, same order) to write them, so an exported
folder holds bit for bit the weights that were scored. Only one extra tensor is alive at a time.

>>> load_mixture(worker, [(spec_a, 0.5), (spec_b, 0.5)])         # doctest: +SKIP
>>> worker.score("select")                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from search.merging.spec import MergeSpec

Mixture = Sequence[tuple[MergeSpec, float]]


def _merge(parents: Any, spec: MergeSpec, name: str, out: torch.Tensor) -> torch.Tensor:
    return parents.merge_tensor(spec, name, out=out)


def mixed_tensor(parents: Any, mixture: Mixture, name: str, *,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor of the mixture, written into ``out`` (a new tensor when None)."""
    if not mixture:
        raise ValueError("an empty mixture has no weights")
    if name in parents.fixed:
        return parents.fixed[name] if out is None else out.copy_(parents.fixed[name])
    base = parents.base[name]
    target = torch.empty_like(base) if out is None else out
    spec, coefficient = mixture[0]
    _merge(parents, spec, name, target)
    if len(mixture) == 1 and coefficient == 1.0:
        return target
    target.mul_(coefficient)
    scratch = torch.empty_like(base)
    for spec, coefficient in mixture[1:]:
        _merge(parents, spec, name, scratch)
        target.add_(scratch, alpha=coefficient)
    return target


def mixed_tensors(parents: Any, mixture: Mixture) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the mixture (merged ones, then the non-float ones as they are), one at a time."""
    with torch.no_grad():
        for name in parents.base:
            yield name, mixed_tensor(parents, mixture, name)
        yield from parents.fixed.items()


def load_mixture(worker: Any, mixture: Mixture) -> None:
    """Write the mixture into ``worker.model`` in place, ready for ``worker.score``.

    Raises :class:`~search.study.trial.CandidateFailure` when the weights hold NaN/inf.
    """
    def fill(state: dict[str, torch.Tensor]) -> None:
        for name in worker.parents.base:
            mixed_tensor(worker.parents, mixture, name, out=state[name])

    worker.load_weights(fill, label=mixture)
