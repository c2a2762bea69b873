"""The demo space through every real part: bundled models, lm-eval in-process, a journal storage, Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.config.space import load_space
from search.study.baselines import recorded_baselines
from search.study.candidate import read_record
from search.study.loop import run_study
from search.study.storage import STUDY_NAME, open_storage

from demo_space import demo_space_data

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "spaces" / "demo.yaml"

pytestmark = pytest.mark.skipif(not (ROOT / "search" / "demo" / "models" / "demo-base").exists(),
                                reason="the demo models are not built (python -m search.demo.build)")


def small_demo(tmp_path: Path) -> Path:
    """The demo space, smaller: two skills, a short budget, and a pruner that may act from the first trial."""
    data = demo_space_data(("add", "rev"))
    data["budget"] = {"trials": 8}
    data["pruner"] = {"name": "median", "slices": [0.25, 1.0], "args": {"n_startup_trials": 0}}
    data["sampler"] = {"name": "tpe", "args": {"n_startup_trials": 4}}
    space = tmp_path / "demo.yaml"
    space.write_text(yaml.safe_dump(data))
    return space


def test_demo_space_small_budget(tmp_path: Path) -> None:
    space = small_demo(tmp_path)
    summary = run_study(load_space(space, output=tmp_path / "run"), progress=False)

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tmp_path / "run"))
    trials = study.get_trials(deepcopy=False)
    sampled = [t for t in trials if read_record(t.user_attrs).baseline is None]
    baselines = {b.name: b for b in recorded_baselines(study)}
    assert summary.finished == len(sampled) == 8
    assert {"task_arithmetic_0.5", "ties", "dare_ties", "uniform_soup", "only_add", "only_rev"} <= set(baselines)
    # each fine-tune alone is best at its own skill: the scores are real, not constants
    assert baselines["only_add"].search["add"] > baselines["only_rev"].search["add"] + 0.2
    assert baselines["only_rev"].search["rev"] > baselines["only_add"].search["rev"] + 0.2
    assert any(t.state == TrialState.PRUNED for t in sampled), "no candidate was stopped early"
    complete = [t for t in sampled if t.state == TrialState.COMPLETE]
    assert complete and all(0.0 <= read_record(t.user_attrs).search["add"] <= 1.0 for t in complete)
    pruned = [t for t in sampled if t.state == TrialState.PRUNED]
    assert all(read_record(t.user_attrs).slices_scored == 1 for t in pruned), "a pruned candidate scored only its slice"


@pytest.mark.slow
def test_search_start_prints_little_and_logs_the_libraries(tmp_path: Path) -> None:
    """`search start` (search, select, report) on the small demo: progress and results on the terminal, the
    libraries' chatter (lm-eval's kwargs notes, its wrapper's warnings, datasets, Optuna) in run.log."""
    import os
    import subprocess
    import sys

    space = small_demo(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "search.cli", "start", str(space), "-o", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    printed = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    print("\n".join(printed))
    assert done.returncode == 0, "\n".join(printed[-30:])
    assert len(printed) <= 40, "\n".join(printed)
    assert any(line.startswith("Result") for line in printed), printed
    log = (tmp_path / "run" / "run.log").read_text()
    assert "lm_eval" in log or "lm-eval" in log
    report = (tmp_path / "run" / "report.md").read_text()
    # the result leads the report: on test with intervals, or why not (a baseline won on select)
    assert "run.log" in report and "- Result" in report


def test_growing_slices_score_only_new_documents(tmp_path: Path) -> None:
    """25 % then 100 %: the second call scores the other 75 % and combines; the result equals one full scoring."""
    from search.merging.spec import MergeSpec
    from search.study.trial import ObjectiveConfig, Worker, WorkerConfig

    models = DEMO.parent / "../search/demo/models"
    evaluator = {"type": "lm_eval", "task": "demo_add", "include_path": str((DEMO.parent / "../evaluators/tasks")
                                                                             .resolve()), "batch_size": 64}
    config = WorkerConfig(base_model=str((models / "demo-base").resolve()),
                          models=(str((models / "demo-add").resolve()), str((models / "demo-rev").resolve())),
                          model_names=("add", "rev"),
                          objectives=(ObjectiveConfig("add", evaluator, "exact_match,strip"),),
                          space_file=str(tmp_path / "space.yaml"))
    worker = Worker(config)
    ev = next(iter(worker._evaluators.values()))
    calls: list[tuple[int | None, int]] = []
    score = ev.score

    def counting(model, tokenizer, split, limit=None, start=0):  # a spy on our own evaluator object
        calls.append((limit, start))
        return score(model, tokenizer, split, limit=limit, start=start)

    ev.score = counting
    spec = MergeSpec(method="task_arithmetic", model_parameters=({"weight": 0.6}, {"weight": 0.6}))
    worker.merge(spec)
    n = worker.num_docs("search")["add"]
    q = -(-n // 4)
    quarter = worker.score("search", 0.25)["add"]
    grown = worker.score("search", 1.0)["add"]
    assert calls == [(q, 0), (n, q)], calls
    worker.merge(spec)
    full = worker.score("search", 1.0)["add"]
    assert calls[-1] == (n, 0)
    assert abs(grown - full) < 1e-12 and 0 < full < 1 and quarter != full


@pytest.mark.slow
def test_wilcoxon_pruner_compares_documents(tmp_path: Path) -> None:
    """WilcoxonPruner on the small demo: every scored document is a step of its trial (the same ids in every
    trial), baselines inside the space carry theirs too, and candidates are stopped on a paired test."""
    data = yaml.safe_load(small_demo(tmp_path).read_text())
    data["pruner"] = {"name": "wilcoxon", "slices": [0.25, 1.0], "args": {"p_threshold": 0.5}}
    space = tmp_path / "wilcoxon.yaml"
    space.write_text(yaml.safe_dump(data))
    run_study(load_space(space, output=tmp_path / "run"), progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tmp_path / "run"))
    trials = study.get_trials(deepcopy=False)
    from search.study.loop import DOCUMENT_STRIDE

    per_objective = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            counts = [sum(1 for s in t.intermediate_values if s // DOCUMENT_STRIDE == k) for k in range(2)]
            per_objective.setdefault("complete", set()).add(tuple(counts))
        elif t.state == TrialState.PRUNED:
            assert read_record(t.user_attrs).slices_scored == 1
            counts = [sum(1 for s in t.intermediate_values if s // DOCUMENT_STRIDE == k) for k in range(2)]
            per_objective.setdefault("pruned", set()).add(tuple(counts))
    (full,) = per_objective["complete"]  # every complete trial (baselines inside the space too): all documents
    assert min(full) > 50
    assert "pruned" in per_objective, "no candidate was stopped"
    for counts in per_objective["pruned"]:  # a pruned one: the documents of its first slice, a quarter
        assert all(abs(c - n / 4) <= 1 for c, n in zip(counts, full))
