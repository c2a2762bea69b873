"""The typed candidate record and the run-folder object: written by the loop, read by every stage, and run folders
written before the record (tests/fixtures/run_v0, made by the old writer) keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from search.errors import UserError
from search.merging.spec import MergeSpec
from search.study.candidate import RECORD_KEY, CandidateRecord, read_outside_baseline, read_record
from search.study.folder import RunFolder

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0"


def test_record_round_trips_through_one_attribute() -> None:
    spec = MergeSpec(method="ties", model_parameters=({"weight": 0.5, "density": 0.4}, {"weight": [0.1, 0.9],
                                                                                          "density": 0.5}))
    record = CandidateRecord(method="ties", spec=spec, search={"a": 0.25}, partials=[[0.2], [0.25]],
                             merge_seconds=1.5, pruned_at=None, retry_of=4, refined_from=2)
    stored = json.loads(json.dumps({RECORD_KEY: record.dump()}))  # what the journal keeps
    again = read_record(stored)
    assert again == record and again.version == 1 and again.slices_scored == 2
    assert again.spec is not None and again.spec.model_parameters[1]["weight"] == [0.1, 0.9]


def test_old_trial_attributes_read_as_a_record() -> None:
    spec = MergeSpec(method="task_arithmetic", model_parameters=({"weight": 0.3}, {"weight": 0.7}))
    old = {"method": "task_arithmetic", "spec": spec.model_dump_json(), "search.a": 0.5, "search.b": 2.0,
           "partial_0": [0.4, 2.5], "partial_1": [0.5, 2.0], "merge_seconds": 0.2, "eval_seconds": 1.0,
           "slices_scored": 2, "fail_reason": "cut off", "interrupted": True, "retry_of": 7}
    record = read_record(old)
    assert record.version == 0 and record.spec == spec and record.search == {"a": 0.5, "b": 2.0}
    assert record.partials == [[0.4, 2.5], [0.5, 2.0]] and record.interrupted and record.retry_of == 7
    assert read_record({"retry_of": 3}).retry_of == 3  # enqueued by an old driver, asked by a new one
    outside = read_outside_baseline({"name": "only_a", "state": "COMPLETE", "spec": spec.model_dump_json(),
                                     "search": {"a": 0.1}, "values": None, "intermediate": {"0": 0.3},
                                     "partials": [[0.1]], "trial": None, "fail_reason": None})
    assert outside.record.baseline == "only_a" and outside.intermediate == {0: 0.3}
    assert outside.record.spec == spec


def test_a_record_from_a_newer_version_is_refused() -> None:
    with pytest.raises(UserError, match="newer merge-search"):
        read_record({RECORD_KEY: {"version": 99, "method": "x"}})


def test_folder_writes_atomically_inside_itself(tmp_path: Path) -> None:
    from search.statistics.store import statistics_path

    folder = RunFolder(tmp_path / "run")
    assert statistics_path(folder.path, "gram", "k").parent == folder.statistics_dir  # the statistics' own place
    path = folder.write_bytes(folder.report_files / "trials.csv", b"a,b")
    assert path == tmp_path / "run" / "report_files" / "trials.csv"
    assert path.read_bytes() == b"a,b" and not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError):
        folder.write_text(tmp_path / "elsewhere.txt", "no")
    with pytest.raises(UserError, match="search select"):
        folder.read_json("selection.json")


def legacy_run(root: Path, family: tuple[Path, list[Path]]) -> Path:
    """The fixture run folder with its placeholders filled in: the family's models, the space's folder."""
    base = family[0].parent
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("README.md", "resolved.json", "space.yaml"))
    run = root / "run"
    run.mkdir()
    shutil.move(root / "study.journal", run / "study.journal")
    for name in ("resolved.json", "space.yaml"):
        text = (FIXTURE / name).read_text().replace("@FAMILY@", str(base)).replace("@ROOT@", str(root))
        (run / name).write_text(text)
    shutil.copy(run / "space.yaml", root / "space.yaml")
    return run


def test_a_run_folder_from_before_the_record_reads_through_the_folder(tmp_path: Path,
                                                                      family: tuple[Path, list[Path]]) -> None:
    from search.study.progress import status_of, trials_frame

    folder = RunFolder(legacy_run(tmp_path / "w", family))
    study = folder.study()
    records = folder.records(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert records and all(r.version == 0 and r.spec is not None and r.method == r.spec.method
                           for r in records.values())
    pruned = [n for n, t in trials.items() if t.state == TrialState.PRUNED]
    assert pruned and all(records[n].slices_scored == 1 and len(records[n].partials[0]) == 2 for n in pruned)
    status = status_of(folder.space, study)
    assert (status.done, status.complete, status.pruned, status.baselines) == (6, 1, 5, 9)
    baselines = {b.name: b for b in folder.baselines(study)}
    assert baselines["only_a"].trial is None and baselines["only_a"].spec is not None  # outside the space
    assert set(baselines["only_a"].search) == {"abc", "xyz"}
    frame = trials_frame(folder.space, study, list(baselines.values()))
    assert len(frame) == len(trials) + sum(b.trial is None for b in baselines.values())
    complete = frame[frame.state == "COMPLETE"]
    assert complete["search.abc"].notna().all()
    assert set(complete[complete.baseline.isna()]["method"]) <= {"task_arithmetic", "ties"}
    assert {"dare_ties", "linear"} <= set(complete["method"])  # baselines: a trial (ties) or outside the space
    assert any(c.startswith("params_") for c in frame.columns)  # Optuna's trials_dataframe underneath


@pytest.mark.slow
def test_an_old_run_folder_resumes_selects_and_exports(tmp_path: Path, family: tuple[Path, list[Path]],
                                                       single_thread: None) -> None:
    """Resumed by the new driver (records of both versions in one study), then selected, reported, exported."""
    from search.cli import main
    from search.study.progress import status_of

    run = legacy_run(tmp_path / "w", family)
    space = yaml.safe_load((tmp_path / "w" / "space.yaml").read_text())
    space["budget"]["trials"] = 8
    (tmp_path / "w" / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    main(["start", str(tmp_path / "w" / "space.yaml"), "--quiet"])  # a failure exits (SystemExit) with its code
    folder = RunFolder(run)
    study = folder.study()
    records = folder.records(study)
    assert {r.version for r in records.values()} == {0, 1}
    new = [t for t in study.get_trials(deepcopy=False) if records[t.number].version == 1]
    assert all(set(t.user_attrs) == {RECORD_KEY} for t in new)  # one attribute per trial
    assert all(records[t.number].pruned_at == records[t.number].slices_scored - 1
               for t in new if t.state == TrialState.PRUNED)
    assert all(records[t.number].spec is not None for t in new if t.state == TrialState.COMPLETE)
    assert status_of(folder.space, study).done == 8
    selection = json.loads(folder.selection_file.read_text())
    assert selection["winner"] and folder.report_html.exists() and folder.report_md.exists()
    main(["export", str(run), "--pick", "best"])
    assert (folder.export_dir / selection["winner"] / "config.json").exists()
