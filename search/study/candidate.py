"""One typed, versioned record per candidate, kept in ONE user attribute of its Optuna trial.

The driver writes it (:mod:`search.study.loop`); everything that reads a run — ``search status``, ``search
trials``, the pruners, selection, the report, export — reads it through :func:`record_of`, never through loose
attribute keys. A trial's state, values, parameters, intermediate values and times stay Optuna's own; the record
holds what Optuna has no field for: the merge spec, the search score per objective, the partial score of each
slice, the timings, and the notes on the candidate's history (interrupted, pruned at a step, a retry of, refined
from).

>>> rec = CandidateRecord(method="ties", search={"add": 0.5}, partials=[[0.4], [0.5]], retry_of=3)
>>> attrs = rec.attrs()                  # {RECORD_KEY: rec.dump()}: a trial's user attributes, all of them
>>> read_record(attrs).retry_of, read_record(attrs).slices_scored
(3, 2)

A stage that adds a candidate of its own (a refinement of trial 7, say) writes its record the same way: as a whole
trial, ``study.add_trial(optuna.trial.create_trial(..., user_attrs=CandidateRecord(refined_from=7, spec=spec,
search=scores, ...).attrs()))``, or enqueued for the driver to merge and score,
``study.enqueue_trial(params, user_attrs=CandidateRecord(refined_from=7).attrs())`` (the driver keeps
``retry_of`` / ``refined_from`` from the enqueued record and fills in the rest).

Run folders written before this record (version 0) kept the same facts under many keys (``method``, ``spec``
as a JSON string, ``search.<objective>``, ``partial_<step>``, ``merge_seconds``, ``retry_of``, ...):
:func:`read_record` reads those too, so old runs keep working (status, select, report, export, resume).
Hand-set baselines outside the searched space are not trials; the study keeps each under
``baseline:<name>`` (:data:`BASELINE_PREFIX`) as an :class:`OutsideBaseline`, which holds the same record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from search.errors import UserError
from search.merging.spec import MergeSpec

RECORD_KEY = "candidate"
RECORD_VERSION = 1
BASELINE_PREFIX = "baseline:"

# The keys older versions wrote one by one; their presence tells a version-0 trial.
LEGACY_KEYS = ("method", "spec", "baseline", "merge_seconds", "eval_seconds", "slices_scored", "fail_reason",
               "interrupted", "retry_of")


class CandidateRecord(BaseModel):
    """What a candidate is and what happened to it (Optuna keeps its state, values, parameters and times)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: int = RECORD_VERSION
    method: str | None = None
    # The spec is kept as data and validated when read (:attr:`spec`): status, progress and the trials table read
    # every record often and never need it, and validating a per-layer spec costs a millisecond or more.
    spec_data: dict[str, Any] | None = Field(None, alias="spec", description="the MergeSpec, as JSON data")
    baseline: str | None = Field(None, description="the hand-set baseline's name; None for a sampled candidate")
    search: dict[str, float] = Field(default_factory=dict, description="search-role score per objective (the last "
                                                                       "slice scored)")
    partials: list[list[float]] = Field(default_factory=list, description="per slice scored, the score per "
                                                                          "objective in the space's order")
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    fail_reason: str | None = None
    interrupted: bool = Field(False, description="cut off by a stop (or a lost worker); retried, not counted")
    pruned_at: int | None = Field(None, description="the slice (step) after which it was pruned")
    retry_of: int | None = Field(None, description="the trial number this one retries")
    refined_from: int | None = Field(None, description="the trial number whose coefficients were refined")

    @field_validator("spec_data", mode="before")
    @classmethod
    def _spec_as_data(cls, value: Any) -> Any:
        if isinstance(value, MergeSpec):
            return value.model_dump(mode="json")
        return json.loads(value) if isinstance(value, str) else value  # (version 0 kept it as a JSON string)

    @cached_property
    def spec(self) -> MergeSpec | None:
        """The candidate's merge spec (None while it runs, or for a trial that failed before it was recorded)."""
        return None if self.spec_data is None else MergeSpec.model_validate(self.spec_data)

    @property
    def slices_scored(self) -> int:
        return len(self.partials)

    def dump(self) -> dict[str, Any]:
        """The JSON value stored under :data:`RECORD_KEY`."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True) | {"version": self.version}

    def attrs(self) -> dict[str, Any]:
        """A trial's user attributes holding this record (for ``create_trial`` / ``enqueue_trial``)."""
        return {RECORD_KEY: self.dump()}


class OutsideBaseline(BaseModel):
    """A hand-set baseline outside the searched space, kept as a study attribute (``baseline:<name>``) rather than
    a trial: samplers that learn from the parameters all trials share would otherwise fall back to random."""

    model_config = ConfigDict(extra="forbid")

    name: str
    state: str  # COMPLETE | FAIL
    values: list[float] | None = None
    intermediate: dict[int, float] = Field(default_factory=dict)  # scalarised partial score per slice
    record: CandidateRecord

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True) | {"record": self.record.dump()}


def read_record(attrs: Mapping[str, Any]) -> CandidateRecord:
    """The record in a trial's user attributes; a trial written before the record (version 0) is read from its
    loose keys. A record written by a newer version is refused with what to do."""
    if RECORD_KEY in attrs:
        data = attrs[RECORD_KEY]
        data = json.loads(data) if isinstance(data, str) else dict(data)
        version = int(data.get("version", RECORD_VERSION))
        if version > RECORD_VERSION:
            raise UserError(f"a trial record of version {version} was written by a newer merge-search (this one "
                            f"reads up to version {RECORD_VERSION})", field="study.journal",
                            fix="upgrade merge-search to read this run folder")
        return CandidateRecord.model_validate(data)
    return _legacy_record(attrs)


def _legacy_record(attrs: Mapping[str, Any]) -> CandidateRecord:
    spec = attrs.get("spec")
    steps = sorted(int(k.removeprefix("partial_")) for k in attrs
                   if k.startswith("partial_") and k.removeprefix("partial_").isdigit())
    return CandidateRecord(
        version=0,
        method=attrs.get("method"),
        spec=spec if isinstance(spec, str) and spec else None,
        baseline=attrs.get("baseline"),
        search={k.removeprefix("search."): float(v) for k, v in attrs.items() if k.startswith("search.")},
        partials=[list(attrs[f"partial_{s}"]) for s in steps],
        merge_seconds=float(attrs.get("merge_seconds", 0.0)),
        eval_seconds=float(attrs.get("eval_seconds", 0.0)),
        fail_reason=attrs.get("fail_reason"),
        interrupted=bool(attrs.get("interrupted", False)),
        retry_of=attrs.get("retry_of"),
        refined_from=attrs.get("refined_from"),
    )


def read_outside_baseline(value: Mapping[str, Any]) -> OutsideBaseline:
    """A ``baseline:<name>`` study attribute; version 0 kept the record's fields at the top level."""
    if "record" in value:
        data = dict(value)
        return OutsideBaseline(name=data["name"], state=data["state"], values=data.get("values"),
                               intermediate={int(k): v for k, v in data.get("intermediate", {}).items()},
                               record=read_record({RECORD_KEY: data["record"]}))
    spec = value.get("spec")
    return OutsideBaseline(
        name=value["name"], state=value["state"], values=value.get("values"),
        intermediate={int(k): v for k, v in (value.get("intermediate") or {}).items()},
        record=CandidateRecord(
            version=0, method=json.loads(spec)["method"] if spec else None,
            spec=spec or None, baseline=value["name"],
            search=dict(value.get("search") or {}), partials=[list(p) for p in value.get("partials") or []],
            fail_reason=value.get("fail_reason")))


def objective_partials(record: CandidateRecord, names: Sequence[str]) -> list[dict[str, float]]:
    """The partial scores of a record as ``{objective: score}`` per slice (``names`` in the space's order)."""
    return [dict(zip(names, p)) for p in record.partials]
