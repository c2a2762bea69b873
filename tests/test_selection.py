"""Selection through real parts: a real study on tiny models, real evaluators, select re-scoring, a test set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState
from selection_world import finished_run

from search.cli import main
from search.errors import UserError
from search.selection.pareto import dominates, neighbour_pairs, pareto_front, spread, top_k
from search.selection.record import Options, read_selection
from search.report.render import render_report
from search.selection.select import select_run
from search.selection.soups import greedy_soup
from search.study.baselines import recorded_baselines
from search.study.candidate import read_record
from search.study.storage import STUDY_NAME, open_storage

pytestmark = pytest.mark.usefixtures("single_thread")


points = st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=2), min_size=1, max_size=25)


@given(points, st.lists(st.booleans(), min_size=2, max_size=2))
def test_front_is_exactly_the_undominated_points(pts: list[list[int]], maximize: list[bool]) -> None:
    front = set(pareto_front(pts, maximize=maximize))
    for i, p in enumerate(pts):
        dominated = any(dominates(q, p, maximize=maximize) for q in pts)
        assert (i in front) == (not dominated)
    # every point off the front is dominated by a point on it
    for i, p in enumerate(pts):
        if i not in front:
            assert any(dominates(pts[j], p, maximize=maximize) for j in front)


@given(st.lists(st.floats(-5, 5), min_size=1, max_size=12), st.data())
@settings(max_examples=60)
def test_greedy_soup_never_scores_below_its_best_ingredient(values: list[float], data: st.DataObject) -> None:
    # any soup score the caller reports: the greedy soup only moves when it does not drop
    soup_scores = data.draw(st.lists(st.floats(-10, 10), min_size=len(values), max_size=len(values)))
    ranked = [str(i) for i in top_k(values, len(values), maximize=True)]
    calls = iter(soup_scores)
    _, score, log = greedy_soup(ranked, values[int(ranked[0])], lambda ids: next(calls), maximize=True)
    assert score >= values[int(ranked[0])] == max(values)
    assert score == max([values[int(ranked[0])]] + [s.score for s in log if s.accepted])


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(40, 60)), min_size=1, max_size=30),
       st.integers(3, 8), st.data())
@settings(max_examples=80)
def test_spread_keeps_every_objectives_best_and_must_keep(pts: list[tuple[float, float, float]], keep: int,
                                                          data: st.DataObject) -> None:
    maximize = [True, True, False]
    front = pareto_front(pts, maximize=maximize)
    must = data.draw(st.lists(st.sampled_from(range(len(pts))), max_size=1))
    kept = spread(pts, front, keep, maximize=maximize, must_keep=must)
    assert len(kept) == min(keep, len(set(front) | set(must))) and len(set(kept)) == len(kept)
    assert set(must) <= set(kept) and set(kept) <= set(front) | set(must)
    for j, up in enumerate(maximize):  # the best value of each objective on the front is kept, room allowing
        best = (max if up else min)(pts[i][j] for i in front)
        if keep < len(maximize) + len(must):
            break
        assert any(pts[i][j] == best for i in kept), (j, kept)


def test_spread_reaches_the_third_objectives_best_that_an_ordered_thinning_drops() -> None:
    # v5 of the alignment run, on search: sorted by safety, the most helpful point sat between two even picks
    pts = [[0.0, 0.575, 52.2], [0.0, 0.9, 53.5], [0.05, 0.8, 53.1], [0.275, 0.875, 54.0], [0.65, 0.55, 53.2],
           [0.925, 0.3, 52.8], [0.975, 0.675, 54.4], [1.0, 0.0, 52.7], [1.0, 0.575, 55.8], [1.0, 0.7, 54.8]]
    front = pareto_front(pts, maximize=[True, True, False])
    kept = spread(pts, front, 6, maximize=[True, True, False], scale=[1.0, 1.0, 0.01])  # the space's weights
    assert 1 in kept and 0 in kept and 9 in kept  # most helpful, most fluent, safest (the most helpful of those)
    assert 7 not in kept  # (1.0, 0.0): all of the helpfulness of #9 for 2 ppl, worth 0.02 of a rate here


def test_pairs() -> None:
    assert neighbour_pairs([1, 2]) == [(1, 2)]



def _search_scores(run_dir: Path, names: list[str]) -> dict[str, list[float]]:
    """ref -> search scores of every complete candidate: trials, and baselines kept outside the trials."""
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    out = {f"trial:{t.number}": [read_record(t.user_attrs).search[n] for n in names]
           for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE}
    out.update({f"baseline:{b.name}": [b.search[n] for n in names]
                for b in recorded_baselines(study) if b.trial is None and b.state == "COMPLETE"})
    return out


def _best_baselines(run_dir: Path, k: int) -> set[str]:
    """The ``k`` complete baselines with the best weighted search value (here minimised perplexities)."""
    from search.study.folder import RunFolder

    space = RunFolder(run_dir).loaded().space
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    done = [b for b in recorded_baselines(study) if b.state == "COMPLETE"]
    assert len(done) > k, "the fixture must have more baselines than are re-scored, or this tests nothing"
    return {b.name for b in sorted(done, key=lambda b: space.weighted(b.search))[:k]}


def test_frontier_point_is_never_dominated_on_the_search_split(run: Path) -> None:
    selection = read_selection(run)
    names = [o.name for o in selection.objectives]
    maximize = [o.direction == "maximize" for o in selection.objectives]
    scores = _search_scores(run, names)
    assert len(selection.frontier) >= 2
    for ref in selection.frontier:
        for other, theirs in scores.items():
            assert not dominates(theirs, scores[ref], maximize=maximize), f"{other} dominates {ref}"
    # and the frontier holds every undominated trial up to max_front (the tiny study's front is small)
    undominated = {n for n, s in scores.items() if not any(dominates(o, s, maximize=maximize)
                                                            for o in scores.values())}
    distinct = {json.dumps(s) for n, s in scores.items() if n in undominated}
    assert len(selection.frontier) == min(len(distinct), selection.options.max_front)
    for j, up in enumerate(maximize):  # whatever the front's size, the best on each objective is on it
        best = (max if up else min)(s[j] for s in scores.values())
        assert any(scores[r][j] == best for r in selection.frontier), names[j]


def test_selection_items_are_scored_on_search_and_select(run: Path) -> None:
    selection = read_selection(run)
    kinds = {it.kind for it in selection.items}
    assert {"trial", "baseline", "interpolation", "greedy_soup", "uniform_soup"} <= kinds
    names = [o.name for o in selection.objectives]
    scores = _search_scores(run, names)
    # the baselines best on search are re-scored on select (and any on the frontier)
    best = _best_baselines(run, selection.options.baselines)
    assert best <= {it.baseline for it in selection.items if it.kind == "baseline"}
    assert {it.baseline for it in selection.items if it.kind == "baseline" and not it.frontier} <= best
    for it in selection.items:
        assert it.error is None
        assert set(it.select) == set(it.search) == set(names), it.id
        assert abs(sum(p.coefficient for p in it.parts) - 1.0) < 1e-12
        if it.kind in ("trial", "baseline"):  # search scores are the study's own
            assert [it.search[n] for n in names] == scores[it.refs[0]]
    # the select role is other data: the scores differ from the search role's
    assert all(it.select != it.search for it in selection.items)
    # interpolations: every neighbouring pair and the two ends, at every alpha
    pairs = neighbour_pairs(selection.frontier)
    got = {(tuple(it.ends), it.alpha) for it in selection.items if it.kind == "interpolation"}
    assert got == {(p, a) for p in pairs for a in selection.options.alphas}


def test_winner_is_the_best_on_select_and_soup_beats_its_best_ingredient(run: Path) -> None:
    selection = read_selection(run)
    assert selection.value_direction == "minimize"  # two perplexities
    best = min(selection.items, key=lambda it: it.select_value)
    assert selection.winner_item.select_value == best.select_value
    assert selection.item(selection.best_baseline).kind == "baseline"
    soup = selection.item("greedy-soup")
    # the soup starts from the best candidate on the search split, and never scores worse than it there
    best_single = min(it.search_value for it in selection.items if it.kind in ("trial", "baseline"))
    assert selection.single(soup.refs[0]).search_value == best_single
    assert soup.search_value <= best_single
    assert [s.ref for s in selection.greedy_log if s.accepted] == soup.refs


def test_a_set_fixed_on_select_is_scored_on_test_and_nothing_else_is(run: Path) -> None:
    selection = read_selection(run)
    sign = 1.0  # minimised perplexities: lower is better
    assert selection.test_set["winner"] == selection.winner
    assert selection.test_set["best baseline"] == selection.best_baseline
    assert selection.test_set["greedy soup"] == "greedy-soup"
    trials = [it for it in selection.items if it.kind == "trial"]
    assert selection.test_set["best search trial"] == min(trials, key=lambda it: sign * it.select_value).id
    tested = set(selection.test_set.values()) | set(selection.test_front)  # pareto mode: the select front too
    for it in selection.items:
        assert bool(it.test) == (it.id in tested), it.id
        if it.test:  # the test role is other data again
            assert it.test != it.select and it.test_value == pytest.approx(sum(it.test.values()))
    # perplexity is no mean over documents: no per-document values, so no interval, and the report says why
    assert selection.headline is not None and selection.headline.difference is None
    assert "report no per-document test scores" in selection.headline.sentence
    winner, baseline = selection.item(selection.winner), selection.item(selection.best_baseline)
    if winner.id != baseline.id:  # the point estimates still say which is ahead (perplexity: lower is better)
        ahead = winner.test_value < baseline.test_value
        assert selection.headline.sentence.startswith("ahead of" if ahead else "behind")
    assert "Result" in (run / "report.md").read_text()


def test_pareto_mode_scores_the_select_front_on_test(run: Path) -> None:
    selection = read_selection(run)
    names = [o.name for o in selection.objectives]
    maximize = [o.direction == "maximize" for o in selection.objectives]
    front = selection.test_front
    assert 2 <= len(front) <= selection.options.test_front
    select = {it.id: [it.select[n] for n in names] for it in selection.items if it.select_value is not None}
    for item_id in front:  # each point is undominated on select among every model scored there
        assert not any(dominates(other, select[item_id], maximize=maximize) for other in select.values())
        assert selection.item(item_id).test  # and it was scored on test, like the fixed test set
    assert [select[i] for i in front] == sorted(select[i] for i in front)  # in order along the front
    # no other model was scored on test
    tested = set(selection.test_set.values()) | set(front)
    assert {it.id for it in selection.items if it.test} == tested
    # perplexity reports no per-document values: no interval per objective either
    assert all(not selection.item(i).test_intervals for i in front)


def test_select_front_spans_the_front_and_keeps_the_ends() -> None:
    from search.config.space import Objective, Space
    from search.selection.record import Item, Part
    from search.selection.select import select_front

    space = Space.model_construct(objectives=[Objective(name="safe", evaluator={}, metric="m"),
                                              Objective(name="help", evaluator={}, metric="m")])
    # a front of 6 (safety up, helpfulness down), one dominated point, one duplicate of a front point
    points = [(0.0, 1.0), (0.2, 0.9), (0.4, 0.7), (0.6, 0.5), (0.8, 0.3), (1.0, 0.0), (0.3, 0.3), (0.2, 0.9)]
    items = [Item(id=f"m{i}", kind="trial", label=f"m{i}", method="task_arithmetic",
                  parts=[Part(ref=f"trial:{i}", coefficient=1.0)], select={"safe": a, "help": b},
                  select_value=a + b) for i, (a, b) in enumerate(points)]
    assert select_front(space, items, 10) == ["m0", "m1", "m2", "m3", "m4", "m5"]
    assert select_front(space, items, 3) == ["m0", "m3", "m5"]  # both ends, then the point adding the most area
    assert select_front(space, items, 0) == []


def test_each_objective_gets_its_own_test_interval() -> None:
    from search.config.space import Objective, Space
    from search.selection.record import Item, Part
    from search.selection.select import tested
    from search.selection.stats import mean_interval

    space = Space.model_construct(objectives=[Objective(name="safe", evaluator={}, metric="m"),
                                              Objective(name="help", evaluator={}, metric="m")])
    docs = {"safe": [1.0] * 30 + [0.0] * 10, "help": [1.0] * 5 + [0.0] * 35}

    class Scorer:
        def test(self, parts: list) -> tuple[dict, dict]:
            return {n: sum(v) / len(v) for n, v in docs.items()}, docs

    item = tested(space, Scorer(), Item(id="m", kind="trial", label="m", method="task_arithmetic",
                                         parts=[Part(ref="trial:0", coefficient=1.0)]), seed=0)
    for name, values in docs.items():
        iv, want = item.test_intervals[name], mean_interval([(1.0, values)], seed=0)
        assert (iv.estimate, iv.low, iv.high) == (want.estimate, want.low, want.high)
        assert iv.low < item.test[name] < iv.high
    assert item.test_intervals["help"].high < item.test_intervals["safe"].low  # 0.125 against 0.75, 40 documents


def test_select_works_on_an_interrupted_run(run: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report*", "selection.json", "export"))
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(copy))
    study.ask()  # a trial left RUNNING, as a killed driver leaves it
    main(["select", str(copy), "--alphas", "0.5", "--max-front", "3", "--soup-size", "3", "--baselines", "1",
          "--quiet"])
    assert f"winner {read_selection(copy).winner}" in capsys.readouterr().out
    selection = read_selection(copy)
    assert selection.facts.running == 1 and selection.facts.done == 10
    assert len(selection.frontier) == 3
    assert {it.alpha for it in selection.items if it.kind == "interpolation"} == {0.5}
    # one baseline re-scored on select: the best on search (and any other on the frontier)
    assert selection.options.baselines == 1
    rescored = {it.baseline for it in selection.items if it.kind == "baseline" and not it.frontier}
    every = {it.baseline for it in selection.items if it.kind == "baseline"}
    assert rescored <= _best_baselines(copy, 1) <= every
    assert (copy / "report.html").exists() and (copy / "report.md").exists()


@pytest.mark.parametrize("objectives", [1, 2])
def test_weighted_mode_keeps_the_top_k(objectives: int, tmp_path: Path,
                                       family: tuple[Path, list[Path]]) -> None:
    def objective(name: str) -> dict:
        return {"name": name, "evaluator": {"type": "perplexity", "data": f"{name}.jsonl", "max_length": 64},
                "metric": "perplexity", "direction": "minimize", "weight": 0.5}

    chosen = [objective("abc"), objective("xyz")][:objectives]
    run_dir = finished_run(tmp_path, family, key=f"weighted-{tmp_path}", objectives=chosen,
                           optimize="weighted", sampler={"name": "tpe"}, budget={"trials": 6},
                           baselines=False)
    selection = select_run(run_dir, progress=False, options=Options(top_k=3, alphas=[0.5]))
    render_report(run_dir, selection=selection)
    names = [o["name"] for o in chosen]
    values = sorted(0.5 * sum(v) for v in _search_scores(run_dir, names).values())
    assert [selection.single(r).search_value for r in selection.frontier] == pytest.approx(values[:3])
    assert len([it for it in selection.items if it.kind == "interpolation"]) == 3  # 2 neighbours + the ends
    assert (run_dir / "report_files" / "front.png").is_file()  # the alpha curves of the weighted view


def test_select_refuses_what_it_cannot_use(tmp_path: Path, family: tuple[Path, list[Path]],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from selection_world import write_space

    from search.config.space import load_space
    from search.study.loop import create_study
    from search.study.storage import prepare_run_dir

    with pytest.raises(SystemExit) as exc:
        main(["select", str(tmp_path)])
    assert exc.value.code == 2 and "not a run folder" in capsys.readouterr().err
    loaded = load_space(write_space(tmp_path, family[0], family[1]))
    run_dir, _ = prepare_run_dir(loaded)
    create_study(run_dir, loaded.space)  # a run that has not finished a trial yet
    with pytest.raises(UserError, match="no complete trial"):
        select_run(run_dir, progress=False)
    with pytest.raises(SystemExit) as exc:
        main(["select", str(run_dir), "--alphas", "0.5,1.0"])
    assert exc.value.code == 2 and "--alphas" in capsys.readouterr().err
    assert not (run_dir / "selection.json").exists()


def test_a_headline_without_per_document_scores_still_says_who_is_ahead() -> None:
    from search.config.space import Objective, Space
    from search.selection.record import Item, Part
    from search.selection.select import compare

    space = Space.model_construct(objectives=[
        Objective(name="acc", evaluator={}, metric="m"),
        Objective(name="fluency", evaluator={}, metric="perplexity", direction="minimize", weight=0.01)])

    def item(name: str, acc: float, ppl: float) -> Item:
        it = Item(id=name, kind="trial", label=name, method="task_arithmetic",
                  parts=[Part(ref=f"trial:{name}", coefficient=1.0)], test={"acc": acc, "fluency": ppl})
        it.test_value = acc - 0.01 * ppl
        it.test_documents = {"acc": [acc] * 4}  # perplexity has none
        return it

    behind = compare(space, item("w", 0.5, 50.0), item("b", 0.9, 50.0), seed=0)
    assert behind.difference is None
    assert behind.sentence.startswith("behind the best hand-set merge (b) on the weighted test score")
    assert "fluency report no per-document test scores" in behind.sentence
    assert compare(space, item("w", 0.9, 40.0), item("b", 0.9, 50.0), seed=0).sentence.startswith("ahead of")
    # the objectives with per-document scores still get their paired difference with an interval
    assert set(behind.objectives) == {"acc"}
    assert behind.objectives["acc"].estimate == pytest.approx(-0.4)
    assert "Per objective: on acc, worse than b by 40.0 points (95% CI" in behind.sentence
    tied = compare(space, item("w", 0.9, 40.0), item("b", 0.9, 50.0), seed=0)
    assert "on acc, not distinguishable from b" in tied.sentence
