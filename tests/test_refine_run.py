"""`search refine` through the real parts: the bundled demo models, lm-eval tasks in-process, a journal study,
selection and export; and its refusals (exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.study.candidate import read_record
from search.study.storage import STUDY_NAME, open_storage
from demo_space import demo_space_data
from tiny import snapshot

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (ROOT / "search" / "demo" / "models" / "demo-base").exists(),
                                 reason="the demo models are not built (python -m search.demo.build)")]


def _space(root: Path, methods: dict, trials: int, refine: dict | None) -> Path:
    """The demo space, small: two skills, a few trials, no baselines, no pruning."""
    data = demo_space_data(("add", "rev"))
    data.update(methods=methods, budget={"trials": trials}, baselines=False, seed=1,
                pruner={"name": "none", "slices": [1.0]}, sampler={"name": "tpe", "args": {"n_startup_trials": 3}})
    if refine is not None:
        data["refine"] = refine
    root.mkdir(parents=True, exist_ok=True)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(run: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run))


def _exit_code(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from search.config.space import load_space
    from search.study.loop import run_study

    root = tmp_path_factory.mktemp("refine_demo")
    space = _space(root, {"task_arithmetic": {"weight": [0.0, 1.2]},
                          "ties": {"weight": [0.0, 1.5], "density": [0.3, 1.0]}}, 2,
                   {"steps": 4, "documents": 16, "check_every": 1, "patience": 3, "lr": 0.02})
    run_study(load_space(space, output=root / "run"), progress=False)
    return root / "run"


def test_refined_trial_is_recorded_selected_and_exported(demo_run: Path, capsys: pytest.CaptureFixture) -> None:
    from search.selection.select import select_run

    run = demo_run
    before = _study(run).get_trials(deepcopy=False)
    linear = [t for t in before if t.state == TrialState.COMPLETE]
    best = max(linear, key=lambda t: (0.25 * read_record(t.user_attrs).search["add"]
                                      + 0.25 * read_record(t.user_attrs).search["rev"], -t.number))

    assert _exit_code(["refine", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"refined trial {best.number} -> trial {len(before)}" in out

    trials = _study(run).get_trials(deepcopy=False)
    assert len(trials) == len(before) + 1
    new = trials[-1]
    assert new.state == TrialState.COMPLETE and read_record(new.user_attrs).refined_from == best.number
    # the loss on the search documents dropped
    curve = new.user_attrs["refine_curve"]
    search = [p["search_loss"] for p in curve if "search_loss" in p]
    checked = [p["select_loss"] for p in curve if "select_loss" in p]
    assert len(search) >= 2 and min(search[1:]) < search[0]
    # the same distributions as the trial it came from; only weight/lambda values move, and only when a check
    # on the select documents improved on the source (else the source's coefficients are kept)
    assert new.distributions == best.distributions
    moved = {k for k in best.params if new.params[k] != best.params[k]}
    assert all(".weight." in k or ".lambda." in k for k in moved)
    assert bool(moved) == (min(checked[1:]) < checked[0])
    assert new.user_attrs["refine_passes"]["train"] == 3 * 16 * len(search)
    # scored by the normal path on the search role: the value is the weighted view of its scores
    record = read_record(new.user_attrs)
    assert new.value == pytest.approx(0.25 * record.search["add"] + 0.25 * record.search["rev"])
    assert record.version >= 1 and record.spec is not None and record.spec.method == read_record(best.user_attrs).method

    assert _exit_code(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert f"refined #{new.number}" in status and f"from #{best.number}" in status
    assert f"{len(before)}/{len(before)}" in status, "a refined trial does not count toward the budget"

    # again with the same settings: nothing new
    assert _exit_code(["refine", str(run), "--quiet"]) == 0
    assert "refined already" in capsys.readouterr().out
    assert len(_study(run).get_trials(deepcopy=False)) == len(trials)

    select_run(run, progress=False)
    record = (run / "selection.json").read_text()
    if not moved:  # the very merge of its source: selection keeps one candidate per distinct merge (the first)
        assert f'"trial:{best.number}"' in record
        return
    assert f'"trial:{new.number}"' in record, "the refined trial takes part in selection"

    assert _exit_code(["export", str(run), "--pick", str(new.number), "--out", str(run.parent / "export")]) == 0
    exported = list((run.parent / "export").iterdir())
    assert any(p.is_dir() and (p / "config.json").exists() for p in exported)
    assert any(p.name.endswith(".mergekit.yaml") for p in exported)


def test_bounds_outside_the_space_are_refused(demo_run: Path, capsys: pytest.CaptureFixture) -> None:
    from search.study.storage import read_resolved

    space_file = Path(read_resolved(demo_run)["space_file"])
    text = space_file.read_text()
    data = yaml.safe_load(text)
    data["refine"] = {"bounds": {"weight": [0.0, 2.0]}}
    space_file.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        before = snapshot(demo_run)
        assert _exit_code(["refine", str(demo_run)]) == 2
        err = capsys.readouterr().err
        assert "outside the space's range" in err and "refine.bounds.weight" in err
        assert snapshot(demo_run) == before
    finally:
        space_file.write_text(text)


def test_refusals_of_a_run_without_a_linear_method(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from search.config.space import load_space
    from search.study.loop import run_study

    nonlinear = {"nuslerp": {"weight": [0.1, 1.0]}}
    # `search start` with refine on a space that cannot be refined: refused before the run folder exists
    space = _space(tmp_path / "a", nonlinear, 1, {"steps": 2})
    assert _exit_code(["start", str(space), "-o", str(tmp_path / "a" / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "refine needs a method linear in its task vectors" in err
    assert "memory plan" not in err  # the refusal is the first thing the user reads
    assert not (tmp_path / "a" / "run").exists()

    space = _space(tmp_path / "b", nonlinear, 1, None)
    run = tmp_path / "b" / "run"
    run_study(load_space(space, output=run), progress=False)
    before = snapshot(run)
    assert _exit_code(["refine", str(run)]) == 2
    err = capsys.readouterr().err
    assert "no finished trial of a method linear in its task vectors" in err and "Fix:" in err
    assert _exit_code(["refine", str(run), "--from", "0"]) == 2
    err = capsys.readouterr().err
    assert "merges with 'nuslerp', which is not linear in its task vectors" in err
    assert _exit_code(["refine", str(run), "--from", "7"]) == 2
    assert "trial 7 is not a finished trial" in capsys.readouterr().err
    assert snapshot(run) == before
