"""``RUN_DIR/selection.json``: what selection chose and scored, so export and the report never re-score.

Every selected model is an :class:`Item`: its kind, the candidates it is made of with their coefficients (its
weights are ``sum_j coefficient_j * merge(specs[ref_j])``), and its scores per objective on the search and the
held-out split, plus the scalarised value of each (the space's weighted sum). A candidate is named by a *ref*:
``trial:12`` for trial #12 of the study, ``baseline:ties`` for a hand-set baseline the study keeps outside its
trials (one that lies outside the searched space). The merge spec of every candidate an item uses is stored in
``specs``, so the weights can be rebuilt from this file and the parents alone.

>>> selection = read_selection(Path("results/demo"))          # doctest: +SKIP
>>> selection.winner_item.heldout                              # doctest: +SKIP
{'add': 0.81, 'rev': 0.74}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from search.errors import UserError
from search.merging.spec import MergeSpec

SELECTION = "selection.json"
ItemKind = Literal["trial", "baseline", "interpolation", "greedy_soup", "uniform_soup"]
Direction = Literal["maximize", "minimize"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectiveInfo(_Record):
    name: str
    metric: str
    direction: Direction
    weight: float


def trial_ref(number: int) -> str:
    return f"trial:{number}"


def ref_label(ref: str) -> str:
    """How a report names a candidate: ``#12`` for a trial, the baseline's name otherwise.

    >>> ref_label("trial:12"), ref_label("baseline:ties")
    ('#12', 'ties')
    """
    kind, _, name = ref.partition(":")
    return f"#{name}" if kind == "trial" else name


def ref_trial(ref: str) -> int | None:
    """The trial number of a ref, None for a baseline kept outside the trials."""
    kind, _, name = ref.partition(":")
    return int(name) if kind == "trial" else None


class Part(_Record):
    """One ingredient: a candidate (its spec is ``Selection.specs[ref]``) and its coefficient."""

    ref: str = Field(description="trial:<number> or baseline:<name>")
    coefficient: float


class Item(_Record):
    """A selected model or a baseline, with how to rebuild it and its scores."""

    id: str = Field(description="Stable name: trial-12, baseline-ties, interp-12-7-a0.25, greedy-soup, "
                                "uniform-soup (also the export folder's name).")
    kind: ItemKind
    label: str = Field(description="What a person reads in the report.")
    method: str = Field(description="The merge method, or 'mixture of <methods>' (interpolations, soups).")
    parts: list[Part] = Field(min_length=1, description="Weights = sum of coefficient x merge(specs[ref]).")
    frontier: bool = Field(False, description="On the search-split frontier (Pareto front, or top k).")
    baseline: str | None = Field(None, description="The hand-set baseline's name.")
    alpha: float | None = Field(None, description="Interpolations: 0 is the first end, 1 the second.")
    ends: tuple[str, str] | None = Field(None, description="Interpolations: the two frontier points' refs.")
    search: dict[str, float] = Field(default_factory=dict, description="Objective -> search-split score.")
    heldout: dict[str, float] = Field(default_factory=dict, description="Objective -> score on held-out.")
    search_value: float | None = Field(None, description="Weighted sum of the search scores.")
    heldout_value: float | None = Field(None, description="Weighted sum of the held-out scores.")
    error: str | None = Field(None, description="Why it could not be scored (then it is never the winner).")

    @property
    def refs(self) -> list[str]:
        return [p.ref for p in self.parts]


class SoupStep(_Record):
    """One greedy-soup candidate: the soup's weighted search value with it (None: it failed), kept or not."""

    ref: str
    score: float | None
    accepted: bool


class Options(_Record):
    """The knobs of ``search select``."""

    top_k: int = Field(5, ge=1, description="Frontier size in weighted mode (the k best weighted sums).")
    max_front: int = Field(6, ge=2, description="Pareto mode: most front points kept (evenly spaced, ends).")
    alphas: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75], description="Interpolation at.")
    soup_size: int = Field(8, ge=1, description="Candidates (best by search score) the soups draw from.")


class RunFacts(_Record):
    """The run as ``search status`` sees it, plus wall time."""

    done: int
    budget: int | None
    complete: int
    pruned: int
    failed: int
    running: int
    baselines: int
    failures: list[tuple[int, str]]
    wall_seconds: float | None
    trials_per_hour: float | None
    first_start: str | None
    last_complete: str | None


class Selection(_Record):
    version: int = 1
    created: str
    run_dir: str
    mode: Literal["weighted", "pareto"]
    value_direction: Direction = Field(description="Direction of the weighted sums (search/heldout_value).")
    objectives: list[ObjectiveInfo]
    options: Options
    specs: dict[str, MergeSpec] = Field(description="ref -> merge spec of every candidate an item uses.")
    items: list[Item]
    frontier: list[str] = Field(description="Frontier refs, ordered along the front (or best first).")
    greedy_log: list[SoupStep] = Field(default_factory=list)
    winner: str = Field(description="Item id of the best held-out weighted sum (baselines included).")
    best_searched: str | None = Field(None, description="Best held-out item that the search produced.")
    best_baseline: str | None = Field(None, description="Best held-out baseline.")
    facts: RunFacts
    seconds: dict[str, float] = Field(default_factory=dict, description="Time spent per selection phase.")

    def item(self, item_id: str) -> Item:
        for it in self.items:
            if it.id == item_id:
                return it
        raise KeyError(item_id)

    @property
    def winner_item(self) -> Item:
        return self.item(self.winner)

    def mixture(self, item: Item) -> list[tuple[MergeSpec, float]]:
        """The item's weights as (spec, coefficient) pairs."""
        return [(self.specs[p.ref], p.coefficient) for p in item.parts]

    def single(self, ref: str) -> Item | None:
        """The trial or baseline item that is exactly the candidate ``ref``."""
        return next((it for it in self.items if it.kind in ("trial", "baseline") and it.refs == [ref]), None)


def write_selection(run_dir: Path, selection: Selection) -> Path:
    """Write ``selection.json`` atomically (a reader never sees half a file)."""
    path = Path(run_dir) / SELECTION
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(selection.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_selection(run_dir: Path) -> Selection:
    path = Path(run_dir) / SELECTION
    if not path.exists():
        raise UserError(f"'{run_dir}' has no {SELECTION}", field="RUN_DIR",
                        fix=f"run `search select {run_dir}` first")
    return Selection.model_validate(json.loads(path.read_text()))
