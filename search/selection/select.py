"""``search select RUN_DIR``: from a finished (or interrupted) study to a winner picked on select, and the few
models that matter scored once on test, with intervals.

Works from the run folder alone (read through :class:`~search.study.folder.RunFolder`: the study, its candidates'
records and ``resolved.json``), so it can be re-run at any time:

1. the frontier of the complete candidates (trials and hand-set baselines) on the search split: the Pareto
   front of a multi-objective study (``optimize: pareto``; at most ``max_front`` points that span it: the best
   weighted sum, the best on each objective, then by hypervolume), the ``top_k`` best by the weighted sum when
   the study has one objective (``weighted``);
2. rewarded-soup interpolations between neighbouring frontier points and between the two ends;
3. the greedy soup and the uniform soup of the ``soup_size`` best candidates;
4. every item above and the ``baselines`` best hand-set baselines on search scored on the select role; the
   winner is the best weighted sum of select scores (baselines included: if one wins, the report says so);
5. a set fixed before the test role is scored: the winner, the best baseline and the best search trial on
   select, the greedy soup, and in Pareto mode the select-role Pareto front of every model scored above
   (interpolations included; ``Options.test_front`` points at most); each scored once on test with 95 %
   bootstrap intervals (the weighted sum's and each objective's), and the winner against the
   best baseline as a paired difference (:mod:`search.selection.stats`). The select scores chose the winner, so
   only the test scores are the result.

The result is ``RUN_DIR/selection.json`` (:mod:`search.selection.record`); the report is rendered from it
(``search.report.render``), by the CLI, as the next stage.

>>> selection = select_run(Path("results/demo"))        # doctest: +SKIP
>>> selection.winner_item.label                          # doctest: +SKIP
'greedy soup of 3 (#12, #7, #30)'
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.config.space import Space
from search.errors import UserError
from search.merging.spec import MergeSpec
from search.selection.interpolate import check_alphas, interpolation_parts
from search.selection.pareto import neighbour_pairs, order_front, pareto_front, spread, top_k
from search.selection.record import (
    Headline,
    IntervalRecord,
    Item,
    ObjectiveInfo,
    Options,
    Part,
    RunFacts,
    Selection,
    SoupStep,
    ref_label,
    trial_ref,
    write_selection,
)
from search.selection.rescore import Request, Scorer, ScoringFailed
from search.selection.soups import greedy_soup, uniform
from search.study.folder import RunFolder


def value_direction(space: Space) -> str:
    """The weighted sum's direction: the objectives' common one, else maximize (minimised ones negated)."""
    dirs = {o.direction for o in space.objectives}
    return dirs.pop() if len(dirs) == 1 else "maximize"


def weighted_value(space: Space, scores: dict[str, float]) -> float:
    """The study's scalarised view of a score dict (``Space.weighted``)."""
    return space.weighted(scores)


def run_facts(space: Space, study: Any) -> RunFacts:
    """Trials done, pruned, failed (with reasons), baselines, wall time and speed, as `search status` counts
    them."""
    from search.study.loop import SEARCH_SECONDS
    from search.study.progress import status_of

    status = status_of(space, study)
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return RunFacts(done=status.done, budget=status.budget, complete=status.complete, pruned=status.pruned,
                    failed=status.failed, running=status.running, baselines=status.baselines,
                    failures=[(n, r) for n, r in status.failures], wall_seconds=wall,
                    search_seconds=study.user_attrs.get(SEARCH_SECONDS),
                    trials_per_hour=status.done / (wall / 3600) if wall else None,
                    first_start=min(starts).isoformat() if starts else None,
                    last_complete=max(ends).isoformat() if ends else None)


class Candidates:
    """Every complete candidate with a spec and every search score, by ref; one per distinct spec (the first).

    Trials (sampled or baseline) are ``trial:N``; baselines kept outside the trials are ``baseline:NAME``.
    """

    def __init__(self, space: Space, study: Any) -> None:
        from optuna.trial import TrialState

        from search.study.baselines import recorded_baselines
        from search.study.candidate import read_record

        names = [o.name for o in space.objectives]
        self.specs: dict[str, MergeSpec] = {}
        self.search: dict[str, dict[str, float]] = {}
        self.baseline: dict[str, str] = {}
        seen: set[str] = set()

        def add(ref: str, spec: MergeSpec, search: dict[str, Any], baseline: str | None) -> None:
            key = spec.model_dump_json()
            if key in seen or any(n not in search for n in names):
                return
            seen.add(key)
            self.specs[ref] = spec
            self.search[ref] = {n: float(search[n]) for n in names}
            if baseline:
                self.baseline[ref] = baseline

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        for t in sorted(complete, key=lambda t: t.number):
            record = read_record(t.user_attrs)
            if record.spec is not None:
                add(trial_ref(t.number), record.spec, record.search, record.baseline)
        for b in recorded_baselines(study):
            if b.trial is None and b.state == "COMPLETE" and b.spec:
                add(f"baseline:{b.name}", b.spec, b.search, b.name)
        self.value = {r: weighted_value(space, s) for r, s in self.search.items()}
        self.refs = list(self.specs)

    def ranked(self, maximize: bool) -> list[str]:
        values = [self.value[r] for r in self.refs]
        return [self.refs[i] for i in top_k(values, len(values), maximize=maximize)]


def frontier(space: Space, cands: Candidates, options: Options) -> list[str]:
    """Frontier refs: ordered along the Pareto front (pareto mode) or best first (weighted mode)."""
    ranked = cands.ranked(value_direction(space) == "maximize")
    if space.mode == "weighted" or len(space.objectives) == 1:
        return ranked[:options.top_k]
    points = [[cands.search[r][o.name] for o in space.objectives] for r in cands.refs]
    maximize = [o.direction == "maximize" for o in space.objectives]
    on_front = pareto_front(points, maximize=maximize)
    # the best weighted sum lies on the front when every weight is positive; keep it even when it does not
    kept = spread(points, on_front, options.max_front, maximize=maximize, must_keep=[cands.refs.index(ranked[0])],
                  scale=[o.weight for o in space.objectives])
    return [cands.refs[i] for i in order_front(points, kept)]


def _method(specs: list[MergeSpec]) -> str:
    methods = sorted({s.method for s in specs})
    return methods[0] if len(specs) == 1 else "mixture of " + "+".join(methods)


def select_run(run_dir: str | Path, *, progress: bool = True, options: Options | None = None,
               backend: Any = None) -> Selection:
    """Select, interpolate, soup and re-score on select; score the fixed test set on test; write
    ``selection.json``. (The report is the next stage: ``search.report.render.render_report``.)

    ``backend``: the run's started execution backend (its workers hold the parents already: nothing is loaded
    again); None starts the space's own backend for the selection and closes it after.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    if options is not None and options.alphas is not None:
        check_alphas(options.alphas)  # bad knobs are refused before anything is read
    folder = RunFolder(run_dir)
    loaded = folder.loaded()
    space = loaded.space
    study = folder.study()
    cands = Candidates(space, study)
    if not cands.refs:
        raise UserError(f"the study in '{run_dir}' has no complete trial to select from", field="RUN_DIR",
                        fix="let the run finish some trials (`search status` shows them), then select again")
    options = (options or Options()).scaled(len(cands.refs))
    alphas = check_alphas(options.alphas or [])
    direction = value_direction(space)
    maximize = direction == "maximize"
    front = frontier(space, cands, options)
    # the baselines best on search go to select (the others cannot plausibly be the best there)
    baselines = [r for r in cands.ranked(maximize) if r in cands.baseline][:options.baselines]
    pairs = neighbour_pairs(front)
    pool = cands.ranked(maximize)[:options.soup_size]
    planned = len(set(front) | set(baselines)) + 2 * len(pairs) * len(alphas) + 2 * max(0, len(pool) - 1) + 3

    seconds: dict[str, float] = {}
    items: list[Item] = []
    log: list[SoupStep] = []
    owned = backend is None
    t0 = time.perf_counter()
    if owned:
        from search.study.loop import make_backend
        from search.study.trial import WorkerConfig

        backend = make_backend(loaded, WorkerConfig.from_space(loaded))
        backend.start()
    seconds["load"] = time.perf_counter() - t0
    try:
        with _Bar(progress, planned) as bar:
            scorer = Scorer(backend, cands.specs, on_score=bar.advance)
            t0 = time.perf_counter()
            for ref in front + [b for b in baselines if b not in front]:
                name = cands.baseline.get(ref)
                spec = cands.specs[ref]
                items.append(Item(
                    id=f"baseline-{name}" if name else f"trial-{_short(ref)}",
                    kind="baseline" if name else "trial",
                    label=f"baseline {name}" if name else f"{ref_label(ref)} {spec.method}", method=spec.method,
                    parts=[Part(ref=ref, coefficient=1.0)], frontier=ref in front, baseline=name,
                    search=cands.search[ref], search_value=cands.value[ref]))
            _score_items(space, scorer, items, search=False)
            seconds["frontier_and_baselines"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            interpolations = []
            for a, b in pairs:
                for alpha in alphas:
                    parts = interpolation_parts(a, b, alpha)
                    interpolations.append(Item(
                        id=f"interp-{_short(a)}-{_short(b)}-a{alpha:g}", kind="interpolation",
                        label=f"{ref_label(a)} → {ref_label(b)} at α={alpha:g}",
                        method=_method([cands.specs[a], cands.specs[b]]),
                        parts=[Part(ref=r, coefficient=c) for r, c in parts], alpha=alpha, ends=(a, b)))
            items += _score_items(space, scorer, interpolations, search=True)
            seconds["interpolation"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            if len(pool) > 1:
                def soup_value(refs: list[str]) -> float:  # one step at a time: each depends on the last
                    try:
                        return weighted_value(space, scorer.search(uniform(refs)))
                    except ScoringFailed:
                        return float("-inf") if maximize else float("inf")

                soup, _, steps = greedy_soup(pool, cands.value[pool[0]], soup_value, maximize=maximize)
                log = [SoupStep(ref=s.ref, score=s.score if math.isfinite(s.score) else None, accepted=s.accepted)
                       for s in steps]
                soups = []
                for kind, refs in (("greedy_soup", soup), ("uniform_soup", pool)):
                    listed = ", ".join(ref_label(r) for r in refs)
                    name = kind.replace("_", " ")
                    item = Item(id=kind.replace("_", "-"), kind=kind,  # type: ignore[arg-type]
                                label=f"{name} of {len(refs)} ({listed})",
                                method=_method([cands.specs[r] for r in refs]),
                                parts=[Part(ref=r, coefficient=c) for r, c in uniform(refs)])
                    if len(refs) == 1:  # the soup is its one ingredient: its search score is the candidate's
                        item.search, item.search_value = cands.search[refs[0]], cands.value[refs[0]]
                    soups.append(item)
                items += _score_items(space, scorer, soups, search=True)
            seconds["soups"] = time.perf_counter() - t0
        selection = _decide(run_dir, space, study, cands, options, items, front, log, scorer, progress, seconds)
    finally:
        if owned:
            backend.close()
    selection.seconds["total"] = time.perf_counter() - t_start
    write_selection(folder, selection)
    return selection


def _score_items(space: Space, scorer: Scorer, items: list[Item], *, search: bool) -> list[Item]:
    """Score items on select (and on search, when they are new mixtures) through every slot at once."""
    roles = ("search", "select") if search else ("select",)
    scorer.many([Request.of([(p.ref, p.coefficient) for p in it.parts],
                            *(r for r in roles if r == "select" or not it.search)) for it in items])
    for item in items:
        parts = [(p.ref, p.coefficient) for p in item.parts]
        try:
            if search and not item.search:
                item.search = scorer.result(parts, "search")
                item.search_value = weighted_value(space, item.search)
            item.select = scorer.result(parts, "select")
            item.select_value = weighted_value(space, item.select)
        except ScoringFailed as exc:
            item.error = str(exc)
    return items


def _decide(run_dir: Path, space: Space, study: Any, cands: Candidates, options: Options, items: list[Item],
            front: list[str], log: list[SoupStep], scorer: Scorer, progress: bool,
            seconds: dict[str, float]) -> Selection:
    """The winner on select; the test set fixed from select scores, then scored on test; the headline."""
    direction = value_direction(space)
    maximize = direction == "maximize"
    ok = [it for it in items if it.select_value is not None]
    if not ok:
        raise UserError("no selected candidate could be scored on the select role: "
                        + "; ".join(f"{it.id}: {it.error}" for it in items[:3]), field="objectives",
                        fix="check the evaluators' select data")

    def best(group: list[Item]) -> str | None:
        if not group:
            return None
        sign = 1.0 if maximize else -1.0
        return max(group, key=lambda it: (sign * it.select_value, it.kind != "baseline",  # type: ignore[operator]
                                          sign * (it.search_value or 0.0))).id

    winner = best(ok) or ""
    best_baseline = best([it for it in ok if it.kind == "baseline"])
    best_trial = best([it for it in ok if it.kind == "trial"])
    soup = next((it.id for it in ok if it.kind == "greedy_soup"), None)
    # The test set is fixed here, from select scores alone, before any test document is scored.
    test_set = {role: item_id for role, item_id in (("winner", winner), ("best baseline", best_baseline),
                                                    ("best search trial", best_trial), ("greedy soup", soup))
                if item_id}
    front_ids = (select_front(space, ok, options.test_front)
                 if space.mode == "pareto" and len(space.objectives) > 1 else [])
    no_test = None
    t0 = time.perf_counter()
    if has_test_role(space):
        by_id = {it.id: it for it in items}
        order = list(dict.fromkeys([*test_set.values(), *front_ids]))
        with _Bar(progress, len(order), label="testing") as bar:
            scorer.on_score = bar.advance
            scorer.many([Request.of([(p.ref, p.coefficient) for p in by_id[i].parts], "test") for i in order
                         if by_id[i].error is None])
            for item_id in order:
                tested(space, scorer, by_id[item_id], seed=space.seed)
    else:
        no_test = ("the objectives have no test role (a run folder from before the three roles, or a test "
                   "fraction of 0): the select scores chose the winner, so no unbiased figure is available")
    seconds["test"] = time.perf_counter() - t0

    used = sorted({p.ref for it in items for p in it.parts})
    headline = (compare(space, next(it for it in items if it.id == winner),
                        next(it for it in items if it.id == best_baseline), seed=space.seed)
                if best_baseline and no_test is None else None)
    return Selection(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), run_dir=str(run_dir.resolve()),
        mode=space.mode, value_direction=direction,  # type: ignore[arg-type]
        objectives=[ObjectiveInfo(name=o.name, metric=o.metric, direction=o.direction, weight=o.weight)
                    for o in space.objectives],
        options=options, specs={r: cands.specs[r] for r in used}, items=items, frontier=front, greedy_log=log,
        winner=winner, best_searched=best([it for it in ok if it.kind != "baseline"]),
        best_baseline=best_baseline, best_trial=best_trial, test_set=test_set,
        test_front=front_ids if no_test is None else [], headline=headline, no_test=no_test,
        facts=run_facts(space, study), seconds=dict(seconds),
    )


def select_front(space: Space, items: list[Item], keep: int) -> list[str]:
    """Ids of the items on the Pareto front of their select scores (every objective), ordered along it, at most
    ``keep`` that span it (the best on each objective first, :func:`~search.selection.pareto.spread`): the
    trade-off a multi-objective run reports on test.

    Fixed from select scores alone (like the rest of the test set), before any test document is scored. Two items
    with the same select scores are one point (the first kept).
    """
    if keep <= 0:
        return []
    names = [o.name for o in space.objectives]
    scored = [it for it in items if it.select_value is not None and all(n in it.select for n in names)]
    distinct: dict[tuple[float, ...], Item] = {}
    for it in scored:
        distinct.setdefault(tuple(it.select[n] for n in names), it)
    points = [list(p) for p in distinct]
    chosen = list(distinct.values())
    maximize = [o.direction == "maximize" for o in space.objectives]
    on_front = pareto_front(points, maximize=maximize)
    kept = spread(points, on_front, keep, maximize=maximize, scale=[o.weight for o in space.objectives])
    return [chosen[i].id for i in order_front(points, kept)]


def has_test_role(space: Space) -> bool:
    """Whether every objective's evaluator has a test role (a run from before the three roles has none)."""
    from evaluators.registry import parse_evaluator_spec

    return all(parse_evaluator_spec(o.evaluator).has_test for o in space.objectives)


def tested(space: Space, scorer: Any, item: Item, *, seed: int) -> Item:
    """Score ``item`` once on the test role: scores, weighted value and its interval (when every objective
    reports per-document values), per-document values kept for paired comparisons."""
    from search.selection.stats import mean_interval

    if item.error is not None:
        return item
    try:
        item.test, item.test_documents = scorer.test([(p.ref, p.coefficient) for p in item.parts])
    except ScoringFailed as exc:
        item.error = str(exc)
        return item
    item.test_value = weighted_value(space, item.test)
    item.test_intervals = {}
    for name, values in item.test_documents.items():
        iv = mean_interval([(1.0, values)], seed=seed)
        item.test_intervals[name] = IntervalRecord.of(iv)
    weights = space.signed_weights()
    if set(item.test_documents) == set(weights):
        iv = mean_interval([(w, item.test_documents[n]) for n, w in weights.items()], seed=seed)
        item.test_interval = IntervalRecord.of(iv)
    return item


def compare(space: Space, winner: Item, baseline: Item, *, seed: int) -> Headline:
    """The winner against the best baseline on test: the paired difference and the sentence that says it."""
    from search.selection.stats import comparison_sentence, in_points, paired_interval

    weights = space.signed_weights()
    other = f"the best hand-set merge ({baseline.label})"
    maximize = value_direction(space) == "maximize"
    if winner.id == baseline.id:
        return Headline(winner=winner.id, baseline=baseline.id,
                        sentence=f"the best hand-set merge won on select: the search did not beat {baseline.label}")
    have = set(winner.test_documents) & set(baseline.test_documents)
    if have != set(weights) or winner.test_value is None or baseline.test_value is None:
        missing = sorted(set(weights) - have)
        why = (f"objective(s) {', '.join(missing)} report no per-document test scores (only lm-eval metrics that "
               "are means over documents do)")
        if winner.test_value is None or baseline.test_value is None:  # a test score is missing altogether
            return Headline(winner=winner.id, baseline=baseline.id, sentence=f"not comparable with {other}: {why}")
        ahead = (winner.test_value > baseline.test_value) == maximize
        sentence = f"{'ahead of' if ahead else 'behind'} {other} on the weighted test score, with no interval: {why}"
        # the objectives that do have per-document scores each get their paired difference
        directions = {o.name: o.direction == "maximize" for o in space.objectives}
        per: dict[str, IntervalRecord] = {}
        said: list[str] = []
        for name in (n for n in weights if n in have):
            a, b = winner.test_documents[name], baseline.test_documents[name]
            diff = paired_interval([(1.0, a, b)], seed=seed)
            per[name] = IntervalRecord.of(diff)
            said.append(f"on {name}, " + comparison_sentence(diff, maximize=directions[name],
                                                              points=in_points([[a, b]]), other=baseline.label))
        if said:
            sentence += ". Per objective: " + "; ".join(said)
        return Headline(winner=winner.id, baseline=baseline.id, sentence=sentence, objectives=per)
    groups = [(w, winner.test_documents[n], baseline.test_documents[n]) for n, w in weights.items()]
    diff = paired_interval(groups, seed=seed)
    points = in_points([[a, b] for _, a, b in groups])
    return Headline(winner=winner.id, baseline=baseline.id,
                    difference=IntervalRecord.of(diff),
                    points=points, sentence=comparison_sentence(diff, maximize=maximize, points=points, other=other),
                    documents={n: len(winner.test_documents[n]) for n in weights})


def _short(ref: str) -> str:
    """A ref as it reads in an item id: the trial number, or the baseline's name."""
    kind, _, name = ref.partition(":")
    return name if kind == "trial" else f"baseline_{name}"


class _Bar:
    """A rich progress bar over the planned evaluations (or nothing)."""

    def __init__(self, enabled: bool, total: int, label: str = "selecting") -> None:
        self.enabled = enabled
        self.total = total
        self.label = label
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("select", total=self.total)
        return self

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
