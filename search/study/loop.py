"""The ask/tell driver: baselines first, then sampled candidates, each merged and scored slice by slice.

The driver owns the Optuna study; workers (through a :class:`~search.backends.base.Backend`) only merge and score.
Every slot holds at most one candidate in flight; when a slot's job returns, the driver reports, prunes, tells,
and asks the next trial for that slot. With the in-process backend there is one slot; with Ray, one per actor.

>>> summary = run_study(load_space("spaces/demo.yaml"))     # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.backends.base import Backend, Job, JobResult
from search.config.space import LoadedSpace, Space
from search.errors import UserError
from search.merging.spec import MergeSpec
from search.study import storage
from search.study.baselines import (
    STUDY_ATTR_PREFIX,
    Baseline,
    hand_set_baselines,
    recorded_baselines,
)
from search.study.candidate import RECORD_KEY, CandidateRecord, OutsideBaseline, read_record
from search.study.folder import RunFolder
from search.study.progress import RunProgress, counted
from search.study.pruning import dominated_by_front, make_pruner
from search.study.samplers import make_sampler
from search.study.space_to_optuna import (
    SearchPlan,
    build_plan,
    distributions,
    params_for_uniform,
    spec_from_params,
    suggest,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


SEARCH_SECONDS = "search_seconds"
DOCUMENT_STRIDE = 1_000_000  # wilcoxon step ids: objective k's document i is step k * stride + i


class RunAborted(Exception):
    """The run stopped itself (too many failures in a row); the study so far is kept."""


@dataclass
class InFlight:
    """A candidate on a slot: its trial (None for a baseline), spec, and what it has scored so far."""

    spec: MergeSpec
    params: dict[str, Any]
    trial: optuna.Trial | None = None
    baseline: Baseline | None = None
    step: int = -1
    partials: list[dict[str, float]] = field(default_factory=list)
    documents: dict[str, list[float]] = field(default_factory=dict)  # wilcoxon: per-document values so far
    reported: set[int] = field(default_factory=set)  # wilcoxon: steps (documents) already reported
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    retry_of: int | None = None
    refined_from: int | None = None


@dataclass
class RunSummary:
    run_dir: Path
    finished: int
    complete: int
    pruned: int
    failed: int
    baselines: int
    seconds: float
    already_finished: bool = False  # the run had reached its budget before this start: nothing was run


def summarize(study: optuna.Study, run_dir: Path, seconds: float, *, already_finished: bool = False) -> RunSummary:
    trials = study.get_trials(deepcopy=False)
    sampled = [t for t in trials if counted(t)]
    return RunSummary(
        run_dir=run_dir, finished=len(sampled),
        complete=sum(t.state == TrialState.COMPLETE for t in sampled),
        pruned=sum(t.state == TrialState.PRUNED for t in sampled),
        failed=sum(t.state == TrialState.FAIL for t in sampled),
        baselines=len(recorded_baselines(study)), seconds=seconds, already_finished=already_finished,
    )


def directions(space: Space) -> list[str]:
    if space.mode == "pareto":
        return [o.direction for o in space.objectives]
    dirs = {o.direction for o in space.objectives}
    return [dirs.pop()] if len(dirs) == 1 else ["maximize"]


def scalarize(space: Space, scores: dict[str, float]) -> float:
    """The weighted view: sum of weight x score (scores of minimised objectives negated when directions mix)."""
    return space.weighted(scores)


def create_study(run_dir: Path, space: Space, store: Any = None, *, workers: int = 1) -> optuna.Study:
    """Create or load the run's study; on a resume the sampler is re-seeded from the trials it holds, so that it
    repeats none of its earlier proposals (see ``search.study.samplers``)."""
    study = optuna.create_study(
        study_name=storage.STUDY_NAME, storage=store or storage.open_storage(run_dir, space), load_if_exists=True,
        sampler=make_sampler(space, workers=workers),
        pruner=make_pruner(space.pruner_name, space.pruner.margin, space.pruner.args),
        directions=directions(space),
    )
    held = len(study.get_trials(deepcopy=False))
    if held:
        study.sampler = make_sampler(space, trials_so_far=held, workers=workers)
    return study


class Driver:
    """Runs one study to its budget on a backend."""

    def __init__(self, loaded: LoadedSpace, run_dir: Path, backend: Backend, plan: SearchPlan, *,
                 progress: bool = True) -> None:
        self.loaded = loaded
        self.space = loaded.space
        self.run_dir = run_dir
        self.backend = backend
        self.plan = plan
        self.storage = storage.open_storage(run_dir, self.space)
        self.study = create_study(run_dir, self.space, self.storage, workers=backend.slots)
        with warnings.catch_warnings():  # experimental since Optuna 3.2; the dashboard labels objectives with it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([o.name for o in self.space.objectives] if self.space.mode == "pareto"
                                        else ["weighted"])
        self.study_id = self.storage.get_study_id_from_name(storage.STUDY_NAME)
        self.fractions = self.space.pruner.slices
        self.maximize = [o.direction == "maximize" for o in self.space.objectives]
        # Wilcoxon compares trials document by document: the slices come back with each document's value
        self.wilcoxon = self.space.pruner_name == "wilcoxon"
        self.slots: dict[int, InFlight | None] = {i: None for i in range(backend.slots)}
        self.consecutive_failures = 0
        self.last_failure = ""
        self.deadline: float | None = None
        self.progress = RunProgress(self.space, enabled=progress)

    # -- recovery ---------------------------------------------------------------------------------------------
    def recover(self, reason: str = "interrupted: the run stopped while this trial ran") -> int:
        """Trials left RUNNING by a driver that died are marked failed (interrupted) and enqueued again once.

        One driver runs a study (the run lock), so every RUNNING trial is one it cut off, or this driver's own
        when it is interrupted (also one asked but not yet on a slot).
        """
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            self._fail_interrupted(t, reason)
        return len(stale)

    def _fail_interrupted(self, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        """Fail a trial that was cut off; enqueue its parameters again unless it was itself a retry."""
        record = read_record(trial.user_attrs).model_copy(update={"fail_reason": reason, "interrupted": True})
        # The trial object of a dead driver is gone: set its record through the storage's public API.
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, trial.number)
        self.storage.set_trial_user_attr(trial_id, RECORD_KEY, record.dump())
        self.study.tell(trial.number, state=TrialState.FAIL)
        if record.retry_of is None and trial.params:
            self._enqueue_retry(trial.params, trial.number)

    def _enqueue_retry(self, params: dict[str, Any], number: int) -> None:
        """Enqueue a cut-off trial's parameters once more; the retry's record says which trial it retries."""
        self.study.enqueue_trial(params, user_attrs=CandidateRecord(retry_of=number).attrs(), skip_if_exists=False)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        if self.space.budget.minutes is not None:
            self.deadline = time.monotonic() + 60 * self.space.budget.minutes
        pending_baselines = deque(self._missing_baselines()) if self.space.baselines else deque()
        self.progress.start(done=self._done(), baselines_left=len(pending_baselines), study=self.study)
        try:
            while True:
                for slot, current in self.slots.items():
                    if current is None:
                        work = self._next_work(pending_baselines)
                        if work is None:
                            break
                        self.slots[slot] = work
                        self.backend.submit(slot, Job("merge", spec=work.spec))
                if all(v is None for v in self.slots.values()):
                    break
                self._handle(self.backend.wait())
        except (KeyboardInterrupt, RunAborted) as exc:
            # No trial is left RUNNING: those in flight (and one asked but not yet on a slot) are failed as
            # interrupted and enqueued again.
            self.recover("interrupted by the user" if isinstance(exc, KeyboardInterrupt) else "the run stopped itself")
            for slot in self.slots:
                self.slots[slot] = None
            raise
        finally:
            self.progress.stop()
            # search seconds of every start and resume, for the run facts (selection's are its own)
            spent = float(self.study.user_attrs.get(SEARCH_SECONDS, 0.0)) + time.perf_counter() - t0
            self.study.set_user_attr(SEARCH_SECONDS, round(spent, 3))
        return self.summary(time.perf_counter() - t0)

    def summary(self, seconds: float) -> RunSummary:
        return summarize(self.study, self.run_dir, seconds)

    def _done(self) -> int:
        return sum(counted(t) for t in self.study.get_trials(deepcopy=False))

    def _in_flight(self) -> int:
        return sum(1 for v in self.slots.values() if v is not None and v.trial is not None)

    def _budget_left(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return False
        trials = self.space.budget.trials
        return trials is None or self._done() + self._in_flight() < trials

    def _missing_baselines(self) -> list[Baseline]:
        have = {b.name for b in recorded_baselines(self.study)}
        return [b for b in hand_set_baselines(self.plan.model_names, seed=self.space.seed,
                                              has_base=self.plan.has_base) if b.name not in have]

    def _next_work(self, baselines: deque[Baseline]) -> InFlight | None:
        if baselines:
            b = baselines.popleft()
            return InFlight(spec=b.spec, params=params_for_uniform(self.plan, b.spec.method, b.uniform) or {},
                            baseline=b)
        if not self._budget_left():
            return None
        trial = self.study.ask()
        params = suggest(trial, self.plan)
        spec = spec_from_params(params, self.plan)
        enqueued = read_record(trial.user_attrs)  # a retry (or a refinement) was enqueued with its record
        current = InFlight(spec=spec, params={k: v for k, v in trial.params.items()}, trial=trial,
                           retry_of=enqueued.retry_of, refined_from=enqueued.refined_from)
        trial.set_user_attr(RECORD_KEY, self._record(current, spec=False).dump())  # what runs, while it runs
        return current

    def _handle(self, result: JobResult) -> None:
        current = self.slots[result.slot]
        assert current is not None
        if not result.ok:
            self._finish(result.slot, current, TrialState.FAIL, reason=result.error, lost=result.worker_lost)
            return
        if result.job.kind == "merge":
            current.merge_seconds = float(result.value)
            self._submit_score(result.slot, current, 0)
            return
        current.eval_seconds += result.seconds
        if self.wilcoxon:
            scores, current.documents = result.value
            current.partials.append(dict(scores))
            self._report_documents(current)
        else:
            current.partials.append(dict(result.value))
        step = current.step
        if step == len(self.fractions) - 1:
            self._finish(result.slot, current, TrialState.COMPLETE)
        elif self._should_prune(current, step):
            self._finish(result.slot, current, TrialState.PRUNED)
        else:
            self._submit_score(result.slot, current, step + 1)

    def _submit_score(self, slot: int, current: InFlight, step: int) -> None:
        current.step = step
        self.backend.submit(slot, Job("score", split="search", fraction=self.fractions[step],
                                      per_document=self.wilcoxon))

    def _steps(self, documents: dict[str, list[float]]) -> dict[int, float]:
        """WilcoxonPruner's instances: one step per (objective, document), the same ids in every trial (an
        objective's documents are in its role's fixed order), valued in the weighted view."""
        weights = self.space.signed_weights()
        return {k * DOCUMENT_STRIDE + i: weights[o.name] * v
                for k, o in enumerate(self.space.objectives) for i, v in enumerate(documents[o.name])}

    def _report_documents(self, current: InFlight) -> None:
        if current.trial is None:
            return
        steps = self._steps(current.documents)
        for step in sorted(set(steps) - current.reported):
            current.trial.report(steps[step], step)
            current.reported.add(step)

    def _should_prune(self, current: InFlight, step: int) -> bool:
        scores = current.partials[-1]
        if current.trial is None:
            return False  # baselines are always scored in full
        if self.space.mode == "weighted":
            if not self.wilcoxon:  # (wilcoxon: the documents were reported as they came)
                current.trial.report(scalarize(self.space, scores), step)
            return current.trial.should_prune()
        current.trial.set_user_attr(RECORD_KEY, self._record(current, spec=False).dump())
        if self.space.pruner_name != "pareto":
            return False
        front = [p.partials[step] for p in map(read_record, (t.user_attrs for t in self.study.best_trials))
                 if len(p.partials) > step]
        partial = [scores[o.name] for o in self.space.objectives]
        return dominated_by_front(partial, front, self.maximize, self.space.pruner.margin)

    def _record(self, current: InFlight, state: TrialState | None = None, *, reason: str | None = None,
                lost: bool = False, spec: bool = True) -> CandidateRecord:
        """The candidate's record as it stands (``state``: how it ended, when it has). While it runs, the record
        is written without the spec (the trial's parameters say it; the journal need not hold it twice)."""
        partials = [[scores[o.name] for o in self.space.objectives] for scores in current.partials]
        return CandidateRecord(
            method=current.spec.method, spec=current.spec if spec else None,
            baseline=current.baseline.name if current.baseline is not None else None,
            search=dict(current.partials[-1]) if current.partials else {}, partials=partials,
            merge_seconds=round(current.merge_seconds, 4), eval_seconds=round(current.eval_seconds, 4),
            fail_reason=reason or None, interrupted=lost and current.retry_of is None,
            pruned_at=current.step if state == TrialState.PRUNED else None,
            retry_of=current.retry_of, refined_from=current.refined_from)

    def _finish(self, slot: int, current: InFlight, state: TrialState, *, reason: str | None = None,
                lost: bool = False) -> None:
        self.slots[slot] = None
        record = self._record(current, state, reason=reason, lost=lost)
        final = current.partials[-1] if current.partials else None
        values: list[float] | None = None
        if state == TrialState.COMPLETE and final is not None:
            values = ([final[o.name] for o in self.space.objectives] if self.space.mode == "pareto"
                      else [scalarize(self.space, final)])
        if current.trial is None:
            self._add_baseline(current, state, values, record)
        else:
            current.trial.set_user_attr(RECORD_KEY, record.dump())
            if record.interrupted:
                self.study.tell(current.trial, state=TrialState.FAIL)
                self._enqueue_retry(current.params, current.trial.number)
            elif state == TrialState.COMPLETE:
                self.study.tell(current.trial, values if len(values or []) > 1 else values[0])  # type: ignore[index]
            else:
                self.study.tell(current.trial, state=state)
        self._count_failure(state, reason)
        self.progress.update(self.study, done=self._done(), finished_state=state, baseline=current.baseline)

    def _add_baseline(self, current: InFlight, state: TrialState, values: list[float] | None,
                      record: CandidateRecord) -> None:
        intermediate = {}
        if self.wilcoxon and current.documents:  # a best trial must hold every document, as sampled ones do
            intermediate = self._steps(current.documents)
        elif self.space.mode == "weighted":
            intermediate = {i: scalarize(self.space, s) for i, s in enumerate(current.partials)}
        params = current.params
        assert current.baseline is not None
        if not params:  # outside the space: a study attribute, not a trial (see baselines.STUDY_ATTR_PREFIX)
            outside = OutsideBaseline(name=current.baseline.name, state=state.name, values=values,
                                      intermediate=intermediate, record=record)
            self.study.set_user_attr(STUDY_ATTR_PREFIX + outside.name, outside.dump())
            return
        dists = distributions(self.plan, current.spec.method)
        trial = optuna.trial.create_trial(
            state=state, values=values, params=params, distributions={k: dists[k] for k in params},
            user_attrs=record.attrs(), intermediate_values=intermediate,
        )
        self.study.add_trial(trial)

    def _count_failure(self, state: TrialState, reason: str | None) -> None:
        if state != TrialState.FAIL:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        self.last_failure = reason or ""
        limit = self.space.budget.max_consecutive_failures
        if self.consecutive_failures >= limit:
            raise RunAborted(f"{self.consecutive_failures} candidates failed in a row (last: {self.last_failure}); "
                             f"the study so far is kept in {self.run_dir}. Fix the cause and run `search resume "
                             f"{self.run_dir}`")


def open_backend(loaded: LoadedSpace) -> tuple[LoadedSpace, Backend]:
    """The space as it will run (a run folder from before the three roles keeps its two roles) and its backend,
    not started: the caller runs the stages on it (``run_study``, then ``select_run``) and closes it."""
    from search.study.trial import WorkerConfig

    loaded = storage.adopt_roles(loaded)
    return loaded, make_backend(loaded, WorkerConfig.from_space(loaded))


def run_study(loaded: LoadedSpace, *, backend: Backend | None = None, progress: bool = True,
              select: bool = False) -> RunSummary:
    """Start or resume the study of a space: validate everything, then run to the budget.

    With ``backend`` (from :func:`open_backend`), the caller owns it: it is started here if it is not, and left
    running for the next stage (selection scores on the same workers); without, one is made and closed here.
    ``select``: the caller selects next, so a run that reached its budget counts as finished (nothing is run)
    only once its selection is made.
    """
    import sys

    owned = backend is None
    if owned:
        loaded, backend = open_backend(loaded)
    else:
        loaded = storage.adopt_roles(loaded)
    assert backend is not None
    space = loaded.space
    try:
        # Everything that can refuse bad input runs before any model is loaded or the run folder is written.
        plan = validate_run(loaded)
        note = storage.repair_before_start(loaded.output, space)
        if note:
            print(f"note: {note}", file=sys.stderr)
        finished = finished_run(loaded, select=select)
        if finished is not None:
            return finished
        backend.start()
        with storage.run_lock(loaded.output):
            run_dir, _ = storage.prepare_run_dir(loaded)
            journal = storage.journal_path(run_dir, space)
            if journal is not None:
                note = storage.repair_torn_tail(journal, run_dir)
                if note:
                    print(f"note: {note}", file=sys.stderr)
            driver = Driver(loaded, run_dir, backend, plan, progress=progress)
            driver.recover()
            prepare_statistics(backend, progress=progress)
            return driver.run()
    finally:
        if owned:
            backend.close()


def prepare_statistics(backend: Backend, *, progress: bool = True) -> dict[str, str]:
    """The statistics of the space's data-aware methods (fisher, regmean), computed once on the first worker and
    written to the run folder (or reused from it: a resume computes nothing); the other workers read the file."""
    import sys

    config = getattr(backend, "config", None)  # both backends keep the WorkerConfig their workers are built from
    if config is None or not config.statistics:
        return {}
    backend.submit(0, Job("statistics", progress=progress))
    result = backend.wait()
    if not result.ok:
        raise RunAborted(f"the calibration statistics could not be computed: {result.error}")
    for kind, status in result.value.items():
        if progress:
            print(f"statistics: {kind} {status} ({dict(config.statistics)[kind]})", file=sys.stderr)
    return dict(result.value)


def validate_run(loaded: LoadedSpace) -> SearchPlan:
    """Everything `search start` checks before it loads a model or writes: :func:`preflight`, then the model's
    layout (its config, on the meta device) and the search plan. Bad input raises UserError; nothing is written.
    """
    from search.config.yaml_io import located
    from search.weights.layout import load_layout

    try:
        preflight(loaded)
        layout = load_layout(loaded.base_model, trust_remote_code=loaded.space.trust_remote_code,
                             source=str(loaded.file))
        return build_plan(loaded.space, layout.num_layers)
    except UserError as exc:
        raise located(exc) from None


def finished_run(loaded: LoadedSpace, *, select: bool) -> RunSummary | None:
    """The summary of a run folder that already reached its trial budget (every baseline scored, nothing left
    running, and its selection made when ``select``): starting it again must not score or append anything."""
    run_dir, space = loaded.output, loaded.space
    journal = storage.journal_path(run_dir, space)
    if space.budget.trials is None or not RunFolder(run_dir).resolved_file.exists():
        return None
    if journal is not None and not journal.exists():
        return None
    if select and not RunFolder(run_dir).has_selection:
        return None
    try:
        study = optuna.load_study(study_name=storage.STUDY_NAME, storage=storage.open_storage(run_dir, space))
    except KeyError:
        return None
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials) or sum(counted(t) for t in trials) < space.budget.trials:
        return None
    if space.baselines:
        have = {b.name for b in recorded_baselines(study)}
        names = tuple(space.models)
        if any(b.name not in have for b in hand_set_baselines(names, seed=space.seed)):
            return None
    return summarize(study, run_dir, 0.0, already_finished=True)


def preflight(loaded: LoadedSpace) -> None:
    """Check parents, evaluator specs, device, output and task names on the driver (cheap), so bad input fails
    before any work."""
    from evaluators.registry import parse_evaluator_spec
    from search.study import preflight as checks
    from search.weights.checks import check_parents

    space = loaded.space
    checks.check_device(space.device, file=loaded.file,
                        local=not (space.backend == "ray" and space.ray_address is not None))
    checks.check_output(loaded.output, file=loaded.file)
    checks.check_not_running(loaded.output, file=loaded.file)
    journal = storage.journal_path(loaded.output, space)
    if journal is not None and journal.exists():
        health = storage.check_journal(journal)
        if health.damaged:
            raise storage.damaged_error(health, loaded.output)
    parents = [("base_model", loaded.base_model)] + [(f"models.{n}", p) for n, p in loaded.models.items()]
    check_parents(parents, source=str(loaded.file), allow_pickle=space.allow_pickle).close()
    for i, obj in enumerate(space.objectives):
        parse_evaluator_spec(obj.evaluator, file=loaded.file, field=f"objectives[{i}].evaluator")
    checks.check_lm_eval_tasks(loaded)
    make_sampler(space)  # the space's validation built it once already; this names the file if it fails
    make_pruner(space.pruner_name, space.pruner.margin, space.pruner.args)
    storage.check_same_space(loaded)
    if space.pruner_name == "wilcoxon":
        for i, obj in enumerate(space.objectives):
            if obj.evaluator.get("type") != "lm_eval":
                raise UserError("pruner 'wilcoxon' compares candidates document by document, which only lm_eval "
                                "evaluators report", file=loaded.file, field=f"objectives[{i}].evaluator.type",
                                fix="use pruner median or successive_halving with this evaluator")


def make_backend(loaded: LoadedSpace, config: Any) -> Backend:
    if loaded.space.backend == "ray":
        try:
            from search.backends.ray import RayBackend
        except ImportError as exc:
            raise UserError("backend 'ray' is not available in this version", file=loaded.file, field="backend",
                            fix="use backend: inprocess") from exc
        return RayBackend(loaded, config)
    from search.backends.inprocess import InProcessBackend

    return InProcessBackend(config)
