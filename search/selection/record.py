"""``RUN_DIR/selection.json``: what selection chose and scored, so export and the report never re-score.

Every selected model is an :class:`Item`: its kind, the candidates it is made of with their coefficients (its
weights are ``sum_j coefficient_j * merge(specs[ref_j])``), and its scores per objective on the search and the
select role (what chose the winner), plus the scalarised value of each (the space's weighted sum). A few items,
fixed before the test role is scored (the winner, the best baseline and the best search trial on select, the
greedy soup; in Pareto mode also the select-role Pareto front), also carry test scores with 95 % intervals
(of the weighted sum and of each objective); :class:`Headline` compares the winner with the best
baseline on test (paired bootstrap over documents). Files written before the three roles (version 1, with
``heldout`` scores) read as select scores with no test. A candidate is named by a *ref*:
``trial:12`` for trial #12 of the study, ``baseline:ties`` for a hand-set baseline the study keeps outside its
trials (one that lies outside the searched space). The merge spec of every candidate an item uses is stored in
``specs``, so the weights can be rebuilt from this file and the parents alone.

>>> selection = read_selection(Path("results/demo"))          # doctest: +SKIP
>>> selection.winner_item.test                                 # doctest: +SKIP
{'add': 0.81, 'rev': 0.74}
>>> selection.headline.sentence                                # doctest: +SKIP
'better than the best hand-set merge by 3.1 points (95% CI 1.2 to 5.0)'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from search.merging.spec import MergeSpec
from search.study.folder import SELECTION, RunFolder

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


class IntervalRecord(_Record):
    """A figure and its bootstrap interval (see :mod:`search.selection.stats`)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    @classmethod
    def of(cls, interval: Any) -> IntervalRecord:
        """The record of a :class:`search.selection.stats.Interval`."""
        return cls(estimate=interval.estimate, low=interval.low, high=interval.high, level=interval.level)


class Item(_Record):
    """A selected model or a baseline, with how to rebuild it and its scores."""

    @model_validator(mode="before")
    @classmethod
    def _held_out_was_select(cls, data: Any) -> Any:
        """Version 1 files: the held-out scores chose the winner, so they are select scores."""
        if isinstance(data, dict) and ("heldout" in data or "heldout_value" in data):
            data = dict(data)
            data.setdefault("select", data.pop("heldout", {}))
            data.setdefault("select_value", data.pop("heldout_value", None))
            data.pop("heldout", None)
            data.pop("heldout_value", None)
        return data

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
    search: dict[str, float] = Field(default_factory=dict, description="Objective -> search-role score.")
    select: dict[str, float] = Field(default_factory=dict, description="Objective -> select-role score.")
    search_value: float | None = Field(None, description="Weighted sum of the search scores.")
    select_value: float | None = Field(None, description="Weighted sum of the select scores (chose the winner).")
    test: dict[str, float] = Field(default_factory=dict, description="Objective -> test-role score (test set only).")
    test_value: float | None = Field(None, description="Weighted sum of the test scores.")
    test_interval: IntervalRecord | None = Field(None, description="95 % bootstrap interval of test_value.")
    test_intervals: dict[str, IntervalRecord] = Field(
        default_factory=dict, description="Objective -> 95 % bootstrap interval of its test score (objectives "
        "that report per-document values).")
    test_documents: dict[str, list[float]] = Field(
        default_factory=dict, description="Objective -> each test document's value, in the role's fixed order.")
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
    """The knobs of ``search select``; None: scaled to what the run found (:meth:`scaled`).

    Every item scored on select competes for the win there, so more items cost time and also make the pick
    luckier (the best of many noisy scores is optimistic): the defaults re-score few, chosen on search scores.
    """

    top_k: int | None = Field(None, ge=1, description="Frontier size in weighted mode (the k best weighted sums); "
                              "default: an eighth of the complete candidates, 2 to 4.")
    max_front: int = Field(6, ge=2, description="Pareto mode: most front points kept (the best on each "
                           "objective, then by hypervolume).")
    alphas: list[float] | None = Field(None, description="Interpolation at; default [0.5] below 60 complete "
                                       "candidates, else [0.25, 0.5, 0.75].")
    soup_size: int | None = Field(None, ge=1, description="Candidates (best by search score) the soups draw from; "
                                  "default: a sixth of the complete candidates, 2 to 6.")
    baselines: int | None = Field(None, ge=1, description="Hand-set baselines re-scored on select: the best by "
                                  "search score (the best baseline is picked among them); default 3.")
    test_front: int = Field(5, ge=0, description="Pareto mode: most points of the select-role Pareto front (of "
                            "every model scored on select, interpolations included) also scored on test, so the "
                            "trade-off is reported on documents that chose nothing; 0: none.")

    def scaled(self, complete: int) -> Options:
        """Concrete knobs for a run with ``complete`` distinct complete candidates (trials and baselines): the
        re-scoring grows with what the run found, not with a fixed plan (6 trials do not need 48 scorings).

        >>> Options().scaled(8).model_dump()
        {'top_k': 2, 'max_front': 6, 'alphas': [0.5], 'soup_size': 2, 'baselines': 3, 'test_front': 5}
        >>> Options(alphas=[0.3]).scaled(60).model_dump()
        {'top_k': 4, 'max_front': 6, 'alphas': [0.3], 'soup_size': 6, 'baselines': 3, 'test_front': 5}
        """
        return Options(
            top_k=self.top_k if self.top_k is not None else min(4, max(2, complete // 8)),
            max_front=self.max_front,
            alphas=self.alphas if self.alphas is not None else ([0.5] if complete < 60 else [0.25, 0.5, 0.75]),
            soup_size=self.soup_size if self.soup_size is not None else min(6, max(2, complete // 6)),
            baselines=self.baselines if self.baselines is not None else 3,
            test_front=self.test_front,
        )


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
    search_seconds: float | None = Field(None, description="Seconds the search ran (every start and resume).")
    trials_per_hour: float | None
    first_start: str | None
    last_complete: str | None


class Headline(_Record):
    """The winner against the best hand-set baseline on the test role: what a report leads with."""

    winner: str = Field(description="Item id of the winner (picked on select).")
    baseline: str = Field(description="Item id of the best baseline on select.")
    difference: IntervalRecord | None = Field(
        None, description="Winner minus baseline, weighted test value, paired bootstrap over documents.")
    points: bool = Field(False, description="Every per-document value lies in [0, 1]: differences in points.")
    sentence: str = Field(description="e.g. 'better than the best hand-set merge by 3.1 points (95% CI …)'.")
    documents: dict[str, int] = Field(default_factory=dict, description="Objective -> test documents.")
    objectives: dict[str, IntervalRecord] = Field(
        default_factory=dict, description="Winner minus baseline on each objective that has per-document test "
        "scores, paired bootstrap: given when the weighted difference can have no interval.")


class Selection(_Record):
    version: int = 2
    created: str
    run_dir: str
    mode: Literal["weighted", "pareto"]
    value_direction: Direction = Field(description="Direction of the weighted sums (search/select/test_value).")
    objectives: list[ObjectiveInfo]
    options: Options
    specs: dict[str, MergeSpec] = Field(description="ref -> merge spec of every candidate an item uses.")
    items: list[Item]
    frontier: list[str] = Field(description="Frontier refs, ordered along the front (or best first).")
    greedy_log: list[SoupStep] = Field(default_factory=list)
    winner: str = Field(description="Item id of the best select weighted sum (baselines included).")
    best_searched: str | None = Field(None, description="Best select item that the search produced.")
    best_baseline: str | None = Field(None, description="Best baseline on select.")
    best_trial: str | None = Field(None, description="Best search trial (a single candidate) on select.")
    test_set: dict[str, str] = Field(
        default_factory=dict, description="Role -> item id of the models scored on test, fixed before it is "
        "scored: winner, best baseline, best trial, greedy soup.")
    test_front: list[str] = Field(
        default_factory=list, description="Pareto mode: item ids of the select-role Pareto front (thinned to "
        "options.test_front, ordered along the objectives), fixed with test_set and scored on test with it.")
    headline: Headline | None = Field(None, description="The winner against the best baseline on test.")
    no_test: str | None = Field(None, description="Why there are no test scores (e.g. a run from before the "
                                "three roles), when there are none.")
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


def write_selection(run_dir: Path | RunFolder, selection: Selection) -> Path:
    """Write ``selection.json`` atomically (a reader never sees half a file)."""
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    return folder.write_text(folder.selection_file, selection.model_dump_json(indent=2) + "\n")


def read_selection(run_dir: Path | RunFolder) -> Selection:
    folder = run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)
    return Selection.model_validate(folder.read_json(SELECTION))
