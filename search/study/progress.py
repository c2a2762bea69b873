"""What a person watches: a live progress bar during a run, and the same facts read back from a run folder.

``search status RUN_DIR`` and ``search trials RUN_DIR`` read the study's storage only, so they work on a run in
progress (in another process), a finished one, or one that was killed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config.space import Space


def best_scores(space: Space, scored: list[dict[str, float]]) -> dict[str, float]:
    """Best score per objective over a list of ``{objective: search score}`` mappings."""
    best: dict[str, float] = {}
    for o in space.objectives:
        values = [s[o.name] for s in scored if o.name in s]
        if values:
            best[o.name] = max(values) if o.direction == "maximize" else min(values)
    return best


def search_scores(trials: list[FrozenTrial]) -> list[dict[str, float]]:
    """The ``search.<objective>`` attributes of the complete trials."""
    return [{k.removeprefix("search."): v for k, v in t.user_attrs.items() if k.startswith("search.")}
            for t in trials if t.state == TrialState.COMPLETE]


def counted(t: FrozenTrial) -> bool:
    """Whether a finished trial counts toward the budget (baselines, refined trials and interrupted attempts do
    not)."""
    if "baseline" in t.user_attrs or "refined_from" in t.user_attrs or t.user_attrs.get("interrupted"):
        return False
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class Status:
    """The state of a run, as `search status` prints it."""

    done: int
    budget: int | None
    running: int
    complete: int
    pruned: int
    failed: int
    baselines: int
    best: dict[str, float]
    best_baseline: dict[str, float]
    trials_per_minute: float | None
    eta_minutes: float | None
    failures: list[tuple[int, str]]  # counted failures: (trial number, reason)
    interrupted: list[tuple[int, str]] = field(default_factory=list)  # cut off by a stop; retried, not counted
    driver: dict[str, Any] | None = None  # the live driver's lock record; None: no driver holds the run
    live: bool = True  # False when read from a run folder whose driver is gone
    refined: list[tuple[int, int]] = field(default_factory=list)  # (trial, the trial it was refined from)

    @property
    def state(self) -> str:
        if self.live:
            return "running" + _driver_text(self.driver)
        if self.budget is not None and self.done >= self.budget and not self.running:
            return "finished"
        return "stopped (driver not running)"


def _driver_text(driver: dict[str, Any] | None) -> str:
    if not driver:
        return ""
    parts = [f"pid {driver['pid']}" if "pid" in driver else "", f"on {driver['host']}" if "host" in driver else "",
             f"since {driver['started']}" if "started" in driver else ""]
    text = " ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def status_of(space: Space, study: optuna.Study, *, driver: dict[str, Any] | None = None,
              live: bool | None = None) -> Status:
    """The facts of a run. ``driver`` is the live driver's lock record (see ``storage.driver_of``); ``live`` says
    whether one runs (default: whether ``driver`` is given)."""
    from search.study.baselines import recorded_baselines

    trials = study.get_trials(deepcopy=False)
    sampled = [t for t in trials if counted(t)]
    baselines = recorded_baselines(study)
    rate = None
    finished = sorted((t.datetime_complete for t in sampled if t.datetime_complete), key=lambda d: d)
    starts = [t.datetime_start for t in sampled if t.datetime_start]
    if len(finished) >= 2 and starts:
        minutes = (finished[-1] - min(starts)).total_seconds() / 60
        rate = len(finished) / minutes if minutes > 0 else None
    budget = space.budget.trials
    live = driver is not None if live is None else live
    eta = (budget - len(sampled)) / rate if (rate and budget is not None and live) else None
    failed = [t for t in sampled if t.state == TrialState.FAIL]
    cut = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")]
    return Status(
        done=len(sampled), budget=budget,
        running=sum(t.state == TrialState.RUNNING for t in trials),
        complete=sum(t.state == TrialState.COMPLETE for t in sampled),
        pruned=sum(t.state == TrialState.PRUNED for t in sampled),
        failed=len(failed),
        baselines=len(baselines), best=best_scores(space, search_scores(trials)),
        best_baseline=best_scores(space, [b.search for b in baselines if b.state == "COMPLETE"]),
        trials_per_minute=rate, eta_minutes=eta,
        failures=[(t.number, t.user_attrs.get("fail_reason", "?")) for t in failed],
        interrupted=[(t.number, t.user_attrs.get("fail_reason", "?")) for t in cut],
        driver=driver, live=live,
        refined=[(t.number, int(t.user_attrs["refined_from"])) for t in trials
                 if "refined_from" in t.user_attrs and t.state == TrialState.COMPLETE],
    )


def render_status(status: Status, run_dir: Path) -> Any:
    from rich.table import Table

    table = Table(title=f"merge-search run {run_dir}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    left = f" ({max(0, status.budget - status.done)} left)" if status.budget is not None else ""
    table.add_row("state", status.state)
    if status.live:
        doing = f"; running {status.running}"
    else:  # no driver: a trial still marked running was cut off, and the next start retries it
        doing = f"; {status.running} cut off (retried on resume)" if status.running else ""
    table.add_row("trials", f"{status.done}/{status.budget or '∞'}{left}{doing}")
    extra = f" (+{len(status.interrupted)} interrupted, retried, not counted)" if status.interrupted else ""
    table.add_row("outcome", f"complete {status.complete}, pruned {status.pruned}, failed {status.failed}{extra}; "
                             f"baselines {status.baselines}")
    for name, value in status.best.items():
        base = status.best_baseline.get(name)
        vs = f"  (best baseline {base:.4f})" if base is not None else ""
        table.add_row(f"best {name}", f"{value:.4f}{vs}")
    if status.trials_per_minute:
        table.add_row("speed", f"{status.trials_per_minute:.1f} trials/min")
    if status.eta_minutes is not None:
        table.add_row("ETA", f"{status.eta_minutes:.1f} min")
    for number, reason in status.failures[-5:]:
        table.add_row(f"failed #{number}", reason)
    for number, reason in status.interrupted[-3:]:
        table.add_row(f"interrupted #{number}", reason)
    for number, source in status.refined:
        table.add_row(f"refined #{number}", f"from #{source} (gradient refinement; not counted in the budget)")
    return table


class RunProgress:
    """A rich progress bar over the sampled trials, with the best score per objective and the speed."""

    def __init__(self, space: Space, *, enabled: bool = True) -> None:
        self.space = space
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None
        self._baselines_left = 0

    def start(self, *, done: int, baselines_left: int, study: optuna.Study) -> None:
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._baselines_left = baselines_left
        self._progress = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                  TextColumn("{task.description}"))
        self._progress.start()
        self._task = self._progress.add_task(self._describe(study), total=self.space.budget.trials, completed=done)

    def update(self, study: optuna.Study, *, done: int, finished_state: TrialState, baseline: Any) -> None:
        if not self.enabled or self._progress is None:
            return
        if baseline is not None:
            self._baselines_left = max(0, self._baselines_left - 1)
        self._progress.update(self._task, completed=done, description=self._describe(study))

    def _describe(self, study: optuna.Study) -> str:
        status = status_of(self.space, study, live=True)
        best = " ".join(f"{k}={v:.3f}" for k, v in status.best.items()) or "-"
        speed = f"{status.trials_per_minute:.1f}/min" if status.trials_per_minute else ""
        phase = f"baselines left {self._baselines_left} | " if self._baselines_left else ""
        return f"{phase}best {best} | pruned {status.pruned} failed {status.failed} {speed}"

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def trials_frame(space: Space, trials: list[FrozenTrial], baselines: list[Any] | None = None) -> Any:
    """One row per trial (and per baseline kept outside the trials): number, state, method, baseline, search
    score per objective, times, failure reason."""
    import json

    import pandas as pd

    rows = []
    in_trials = {t.user_attrs.get("baseline") for t in trials}
    for b in baselines or []:
        if b.name in in_trials:
            continue
        row = {"number": None, "state": b.state, "method": json.loads(b.spec)["method"] if b.spec else None,
               "baseline": b.name}
        row.update({f"search.{o.name}": b.search.get(o.name) for o in space.objectives})
        row["value"] = b.values[0] if b.values and len(b.values) == 1 else None
        row["fail_reason"] = b.fail_reason
        rows.append(row)
    for t in trials:
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name, "method": t.user_attrs.get("method"),
            "baseline": t.user_attrs.get("baseline"),
        }
        for o in space.objectives:
            row[f"search.{o.name}"] = t.user_attrs.get(f"search.{o.name}")
        row["value"] = t.values[0] if t.values and len(t.values) == 1 else None
        row["slices_scored"] = t.user_attrs.get("slices_scored")
        row["merge_seconds"] = t.user_attrs.get("merge_seconds")
        row["eval_seconds"] = t.user_attrs.get("eval_seconds")
        row["duration_s"] = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        row["fail_reason"] = t.user_attrs.get("fail_reason")
        row["retry_of"] = t.user_attrs.get("retry_of")
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)
