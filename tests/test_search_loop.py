"""The search loop through real parts: tiny real models, a real journal storage, real evaluators, real Optuna."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.config.space import load_space
from search.errors import UserError
from search.study.baselines import recorded_baselines
from search.study.candidate import read_record
from search.study.loop import run_study
from search.study.storage import JOURNAL, STUDY_NAME, open_storage

FLAKY = '''
import math, os
CALLS = {"n": 0}

def score(model, tokenizer, docs):
    """Real scoring (mean lm_head weight), except: the 3rd call gives NaN and the 5th raises."""
    CALLS["n"] += 1
    if CALLS["n"] == 3:
        return {"score": math.nan}
    if CALLS["n"] == 5:
        raise RuntimeError("evaluator exploded on purpose")
    import torch
    with torch.no_grad():
        return {"score": float(model.lm_head.weight.mean()) + float(os.environ.get("SLEEP_SCORE", "0")) * 0}
'''

SLOW = '''
import time, torch
def score(model, tokenizer, docs):
    time.sleep(0.15)
    with torch.no_grad():
        return {"score": float(model.lm_head.weight.abs().mean())}
'''


@pytest.fixture()
def world(tmp_path: Path, family: tuple[Path, list[Path]]) -> Path:
    base, fts = family
    random.seed(0)
    with open(tmp_path / "text.jsonl", "w") as f:
        for _ in range(40):
            words = ["".join(random.choice("abcde") for _ in range(4)) for _ in range(6)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(10)))
    (tmp_path / "flaky_eval.py").write_text(FLAKY)
    (tmp_path / "slow_eval.py").write_text(SLOW)
    (tmp_path / "paths.json").write_text(json.dumps({"base": str(base), "fts": [str(p) for p in fts]}))
    return tmp_path


def write_space(root: Path, **changes: object) -> Path:
    paths = json.loads((root / "paths.json").read_text())
    space = {
        "base_model": paths["base"],
        "models": {"a": paths["fts"][0], "b": paths["fts"][1]},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.5]}, "ties": {"weight": [0.0, 1.5], "density": [0.2, 1.0]}},
        "granularity": {"layer_groups": 2},
        "objectives": [{"name": "ppl", "evaluator": {"type": "perplexity", "data": "text.jsonl", "max_length": 64},
                        "metric": "perplexity", "direction": "minimize"}],
        "sampler": {"name": "tpe"},
        "pruner": {"name": "median", "slices": [0.3, 1.0], "args": {"n_startup_trials": 2}},
        "budget": {"trials": 10},
        "output": "run",
    }
    space.update(changes)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def trials_of(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    return study.get_trials(deepcopy=False)


def test_study_has_baselines_trials_and_prunes(world: Path) -> None:
    loaded = load_space(write_space(world))
    summary = run_study(loaded, progress=False)
    run_dir = world / "run"
    assert (run_dir / JOURNAL).exists() and (run_dir / "resolved.json").exists() and (run_dir / "space.yaml").exists()
    trials = trials_of(run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    records = recorded_baselines(study)
    assert {b.name for b in records} == {"task_arithmetic_0.3", "task_arithmetic_0.5", "task_arithmetic_0.7",
                                         "task_arithmetic_1.0", "ties", "dare_ties", "uniform_soup", "only_a",
                                         "only_b"}
    assert all(b.state == "COMPLETE" and b.search["ppl"] > 1 for b in records)
    # inside the space, a baseline is a trial the sampler learns from; outside (another method), it is kept
    # beside the trials so that samplers needing one shared space (CMA-ES, GP) are not thrown back to random
    baselines = [t for t in trials if read_record(t.user_attrs).baseline is not None]
    assert {read_record(t.user_attrs).baseline for t in baselines} == {"task_arithmetic_0.3", "task_arithmetic_0.5",
                                                              "task_arithmetic_0.7", "task_arithmetic_1.0", "ties"}
    sampled = [t for t in trials if read_record(t.user_attrs).baseline is None]
    assert len(sampled) == 10 == summary.finished
    assert any(t.state == TrialState.PRUNED for t in sampled), "the median pruner never stopped a candidate"
    for t in sampled:
        assert read_record(t.user_attrs).method in ("task_arithmetic", "ties")
        names = [n for n in t.params if n != "method"]
        assert names and all(n.startswith(read_record(t.user_attrs).method + ".") for n in names)
        assert any(".layer_group_1.model_b" in n for n in names), names
    # a baseline inside the space carries the same parameters as a sampled trial would
    ta = next(t for t in baselines if read_record(t.user_attrs).baseline == "task_arithmetic_0.5")
    assert ta.params["method"] == "task_arithmetic"
    assert ta.params["task_arithmetic.weight.layer_group_0.model_a"] == 0.5


def test_failures_are_recorded_and_the_run_goes_on(world: Path) -> None:
    space = write_space(world, objectives=[{"name": "s", "evaluator": {
        "type": "python", "function": "flaky_eval.py:score", "data": "docs.jsonl"}, "metric": "score"}],
        pruner={"name": "none", "slices": [1.0]}, baselines=False, budget={"trials": 6})
    summary = run_study(load_space(space), progress=False)
    trials = trials_of(world / "run")
    failed = [t for t in trials if t.state == TrialState.FAIL]
    reasons = sorted(read_record(t.user_attrs).fail_reason for t in failed)
    assert len(failed) == 2, reasons
    assert any("nan" in r.lower() for r in reasons) and any("exploded on purpose" in r for r in reasons)
    assert summary.finished == 6 and summary.complete == 4


def test_nan_weights_fail_the_candidate(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from search.merging.spec import MergeSpec
    from search.study.trial import CandidateFailure, ObjectiveConfig, Worker, WorkerConfig

    base, fts = family
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": f"ab cd {w}"}) + "\n" for w in "abcdefghij"))
    config = WorkerConfig(base_model=str(base), models=(str(fts[0]),), model_names=("a",),
                          objectives=(ObjectiveConfig("p", {"type": "perplexity", "data": str(tmp_path / "text.jsonl")},
                                                      "perplexity"),), space_file=str(tmp_path / "x.yaml"))
    worker = Worker(config)
    with pytest.raises(CandidateFailure, match="NaN/inf"):
        worker.merge(MergeSpec(method="task_arithmetic", model_parameters=({"weight": float("inf")},)))
    worker.merge(MergeSpec(method="task_arithmetic", model_parameters=({"weight": 0.5},)))
    assert worker.score("search")["p"] > 1.0


def test_consecutive_failures_stop_the_run(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (world / "bad_eval.py").write_text("CALLS = [0]\ndef score(model, tokenizer, docs):\n    CALLS[0] += 1\n"
                                       "    if CALLS[0] > 1:\n        raise ValueError('always')\n"
                                       "    return {'score': 1.0}\n")
    space = write_space(world, objectives=[{"name": "s", "evaluator": {
        "type": "python", "function": "bad_eval.py:score", "data": "docs.jsonl"}, "metric": "score"}],
        pruner={"name": "none", "slices": [1.0]}, baselines=False,
        budget={"trials": 10, "max_consecutive_failures": 3})
    with pytest.raises(SystemExit) as exc:
        main(["start", str(space), "--quiet", "--no-select"])
    assert exc.value.code == 1
    assert "3 candidates failed in a row" in capsys.readouterr().err
    assert len([t for t in trials_of(world / "run") if t.state == TrialState.FAIL]) == 3


def test_changed_space_is_refused(world: Path) -> None:
    run_study(load_space(write_space(world, budget={"trials": 1}, baselines=False)), progress=False)
    before = (world / "run" / JOURNAL).stat().st_size
    changed = write_space(world, budget={"trials": 1}, baselines=False,
                          methods={"ties": {"weight": [0.0, 1.0], "density": [0.2, 1.0]}})
    with pytest.raises(UserError, match="methods"):
        run_study(load_space(changed), progress=False)
    assert (world / "run" / JOURNAL).stat().st_size == before
    # a larger budget is not a change of space: it resumes
    run_study(load_space(write_space(world, budget={"trials": 2}, baselines=False)), progress=False)
    assert len(trials_of(world / "run")) == 2


def test_sigkill_then_resume_loses_nothing(world: Path) -> None:
    space = write_space(world, objectives=[{"name": "s", "evaluator": {
        "type": "python", "function": "slow_eval.py:score", "data": "docs.jsonl"}, "metric": "score"}],
        pruner={"name": "none", "slices": [0.5, 1.0]}, baselines=False, budget={"trials": 12})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "start", str(space), "--quiet", "--no-select"], cwd=world, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_dir = world / "run"
    deadline = time.monotonic() + 120
    finished: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if (run_dir / JOURNAL).exists():
            try:
                finished = [t for t in trials_of(run_dir) if t.state.is_finished()]
            except KeyError:  # the journal file exists a moment before the study is written into it
                continue
            if len(finished) >= 4:
                break
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.state, t.values, t.params) for t in trials_of(run_dir) if t.state.is_finished()}
    assert len(before) >= 4
    main(["resume", str(run_dir), "--quiet", "--no-select"])
    after = trials_of(run_dir)
    for t in after:
        if t.number in before:
            assert (t.state, t.values, t.params) == before[t.number], f"trial {t.number} changed"
    counted = [t for t in after if t.state.is_finished() and not read_record(t.user_attrs).interrupted]
    assert len(counted) == 12, "the resumed run reaches its budget"
    interrupted = [t for t in after if read_record(t.user_attrs).interrupted]
    for t in interrupted:  # a trial killed mid-run is failed and retried once with the same parameters
        if not t.params:  # killed between ask and its first suggest: no proposal to retry, the sampler goes on
            continue
        retry = [r for r in after if read_record(r.user_attrs).retry_of == t.number]
        # (a kill during its suggest calls leaves only part of the parameters: the retry keeps those)
        assert len(retry) == 1 and retry[0].params.items() >= t.params.items(), \
            (t.number, t.params, read_record(t.user_attrs), [(r.number, r.state, r.user_attrs) for r in after])


def test_pareto_study_with_front_pruning(world: Path) -> None:
    from search.study.pruning import dominated_by_front

    random.seed(1)
    with open(world / "text2.jsonl", "w") as f:
        for _ in range(40):
            f.write(json.dumps({"text": " ".join("".join(random.choice("vwxyz") for _ in range(5))
                                                 for _ in range(5))}) + "\n")
    ppl = {"type": "perplexity", "max_length": 64}
    space = write_space(world, objectives=[
        {"name": "abc", "evaluator": {**ppl, "data": "text.jsonl"}, "metric": "perplexity", "direction": "minimize"},
        {"name": "vwx", "evaluator": {**ppl, "data": "text2.jsonl"}, "metric": "perplexity", "direction": "minimize"}],
        optimize="pareto", sampler={"name": "tpe"}, pruner={"name": "pareto", "slices": [0.3, 1.0]},
        budget={"trials": 12})
    run_study(load_space(space), progress=False)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(world / "run"))
    assert len(study.directions) == 2 and study.metric_names == ["abc", "vwx"]
    front = [read_record(t.user_attrs).partials[0] for t in study.best_trials]
    assert front and all(len(t.values) == 2 for t in study.best_trials)
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        # a pruned candidate's partial scores were dominated by a trial of the front at the same slice
        others = [read_record(o.user_attrs).partials[0]
                  for o in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if o.number < t.number]
        assert dominated_by_front(read_record(t.user_attrs).partials[0], others, [False, False], margin=0.0)


QUICK = "def score(model, tokenizer, docs):\n    return {'score': float(model.lm_head.weight.mean())}\n"


@pytest.mark.parametrize("sampler", [{"name": "random"}, {"name": "tpe", "args": {"n_startup_trials": 4}}],
                         ids=["random", "tpe"])
def test_resumes_repeat_no_proposal(world: Path, sampler: dict) -> None:
    """A seeded sampler re-made on every resume would replay its first draws; derived seeds do not."""
    (world / "quick_eval.py").write_text(QUICK)
    for total in (3, 6, 9, 12):  # a start and three resumes, each a new driver and a new sampler object
        space = write_space(world, objectives=[{"name": "s", "evaluator": {
            "type": "python", "function": "quick_eval.py:score", "data": "docs.jsonl"}, "metric": "score"}],
            pruner={"name": "none", "slices": [1.0]}, baselines=False, budget={"trials": total}, sampler=sampler,
            seed=5)
        run_study(load_space(space), progress=False)
    trials = [t for t in trials_of(world / "run") if read_record(t.user_attrs).retry_of is None]
    assert len(trials) == 12
    proposals = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(proposals)) == len(proposals), "a resumed run proposed a candidate it had already tried"


def test_derived_seeds_and_constant_liar() -> None:
    from search.config.space import Space
    from search.study.samplers import derived_seed, make_sampler

    space = Space.model_validate({"base_model": "b", "models": {"a": "a"}, "methods": {"linear": {}},
                                  "objectives": [{"name": "x", "evaluator": {}, "metric": "m"}], "seed": 3})
    assert derived_seed(3, 0) == 3 and len({derived_seed(3, n) for n in range(50)}) == 50
    assert make_sampler(space, workers=4)._constant_liar  # (Optuna 5's default too; kept explicit for workers)
    seeded = space.model_copy(update={"sampler": space.sampler.model_copy(update={"args": {"seed": 11}})})

    def first_draw(sampler: optuna.samplers.BaseSampler) -> float:
        return optuna.create_study(sampler=sampler).ask().suggest_float("x", 0.0, 1.0)

    # a seed given in sampler.args is derived on resume as the space's seed is
    resumed = first_draw(make_sampler(seeded, trials_so_far=6))
    assert resumed == first_draw(make_sampler(space.model_copy(update={"seed": 11}), trials_so_far=6))
    assert resumed != first_draw(make_sampler(seeded))


class TwoSlots:
    """Two slots over one real in-process worker, jobs run in the order they were submitted: enough to have a
    trial in flight on one slot while another fails."""

    slots = 2

    def __init__(self, config: object) -> None:
        from search.backends.inprocess import InProcessBackend

        self.inner = InProcessBackend(config)  # type: ignore[arg-type]
        self.queue: list[tuple[int, object]] = []

    def start(self) -> None:
        self.inner.start()

    def submit(self, slot: int, job: object) -> None:
        self.queue.append((slot, job))

    def wait(self) -> object:
        from search.backends.inprocess import run_job

        slot, job = self.queue.pop(0)
        return run_job(self.inner.worker, slot, job)  # type: ignore[arg-type]

    def close(self) -> None:
        self.inner.close()


def test_run_aborted_leaves_no_trial_running(world: Path) -> None:
    from search.study.loop import RunAborted
    from search.study.trial import WorkerConfig

    (world / "bad_eval.py").write_text("CALLS = [0]\ndef score(model, tokenizer, docs):\n    CALLS[0] += 1\n"
                                       "    if CALLS[0] > 1:\n        raise ValueError('always')\n"
                                       "    return {'score': 1.0}\n")
    loaded = load_space(write_space(world, objectives=[{"name": "s", "evaluator": {
        "type": "python", "function": "bad_eval.py:score", "data": "docs.jsonl"}, "metric": "score"}],
        pruner={"name": "none", "slices": [1.0]}, baselines=False,
        budget={"trials": 10, "max_consecutive_failures": 2}))
    with pytest.raises(RunAborted):
        run_study(loaded, backend=TwoSlots(WorkerConfig.from_space(loaded)), progress=False)
    trials = trials_of(world / "run")
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    cut = [t for t in trials if read_record(t.user_attrs).interrupted]
    assert cut and all(read_record(t.user_attrs).fail_reason == "the run stopped itself" for t in cut)
