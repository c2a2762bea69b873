"""One worker's part of a trial: merge a candidate in place, then score it slice by slice.

A :class:`Worker` is built once per process (or Ray actor): it loads the parents, allocates the working model,
the tokenizer and the evaluators once, then serves candidates for the whole run. It knows nothing of Optuna or of
which backend calls it; the driver (``loop.py``) turns its answers into reports, prunes and tells.

>>> worker = Worker(WorkerConfig.from_space(loaded))       # doctest: +SKIP
>>> worker.merge(spec)                                     # in place, no disk; raises CandidateFailure on NaN  # doctest: +SKIP
>>> worker.score("search", 0.25)                           # {"add": 0.61, "reverse": 0.88}  # doctest: +SKIP
>>> worker.score_documents("test")                         # scores, and each document's value per objective  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.errors import UserError
from search.merging.spec import MergeSpec


class CandidateFailure(Exception):
    """A candidate that cannot be scored (NaN/inf weights or scores, out of memory): recorded as FAIL."""


@dataclass(frozen=True)
class ObjectiveConfig:
    """An objective as a worker needs it; it reads its evaluator's role of the phase (search, select, test)."""

    name: str
    evaluator: dict[str, Any]
    metric: str


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs, as plain picklable data (it crosses process boundaries for Ray)."""

    base_model: str
    models: tuple[str, ...]
    model_names: tuple[str, ...]
    objectives: tuple[ObjectiveConfig, ...]
    space_file: str
    dtype: str = "float32"          # the storage dtype, resolved (never "auto")
    device: str = "auto"
    placement: str = "resident"     # resident | stream, as the memory plan resolved it (search plan)
    gpus: int = 1                   # GPUs the working model is sharded over (resources.gpus_per_worker > 1)
    allow_pickle: bool = False
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # data-aware methods: the calibration block (a jsonl path made absolute) and kind -> statistics file
    calibration: dict[str, Any] | None = None
    statistics: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_space(cls, loaded: Any, device: str | None = None) -> WorkerConfig:
        from search.weights.dtypes import storage_dtype_name
        from search.weights.memory_plan import plan_for_space

        space = loaded.space
        wanted = space.resources.gpus_per_worker
        return cls(
            base_model=str(loaded.base_model),
            models=tuple(str(loaded.models[n]) for n in space.models),
            model_names=tuple(space.models),
            objectives=tuple(ObjectiveConfig(o.name, dict(o.evaluator), o.metric) for o in space.objectives),
            space_file=str(Path(loaded.file).resolve()),
            dtype=storage_dtype_name(space.dtype, loaded.base_model), device=device or space.device,
            placement=plan_for_space(loaded).placement, gpus=int(wanted) if wanted > 1 else 1,
            allow_pickle=space.allow_pickle,
            trust_remote_code=space.trust_remote_code,
            **statistics_config(loaded, storage_dtype_name(space.dtype, loaded.base_model)),
        )


class Worker:
    """Parents, working model, tokenizer and evaluators, loaded once; merges and scores candidates."""

    def __init__(self, config: WorkerConfig) -> None:
        from transformers import AutoTokenizer

        from evaluators.registry import build_evaluator
        from search.weights.parents import Parents, resolve_device
        from search.weights.placement import visible_devices

        self.config = config
        t0 = time.perf_counter()
        self.device = resolve_device(config.device)
        self.parents = Parents.load(config.base_model, list(config.models), dtype=getattr(torch, config.dtype),
                                    device=self.device, allow_pickle=config.allow_pickle,
                                    trust_remote_code=config.trust_remote_code,
                                    labels=[f"models.{n}" for n in config.model_names], source=config.space_file,
                                    placement=config.placement,  # type: ignore[arg-type]
                                    devices=visible_devices(config.gpus, self.device))
        self.model = self.parents.build_model()  # on the devices the parents merge on
        self.tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code)
        # objectives that share an evaluator spec share one evaluator (and one scoring pass)
        self._evaluators: dict[str, Any] = {}
        self._objective_key: dict[str, str] = {}
        for i, obj in enumerate(config.objectives):
            key = json.dumps(obj.evaluator, sort_keys=True)
            if key not in self._evaluators:
                self._evaluators[key] = build_evaluator(obj.evaluator, device=self.device.type,
                                                        config_file=config.space_file,
                                                        field=f"objectives[{i}].evaluator")
            self._objective_key[obj.name] = key
        self.current: MergeSpec | None = None
        # per candidate: the scored prefix of each (evaluator, role): its length, metrics and per-document values
        self._prefix: dict[tuple[str, str], tuple[int, dict[str, float], dict[str, list[float]]]] = {}
        try:  # a wrong metric name, or an evaluator that cannot score the base at all, is bad input: refuse it now
            self._score("search", 1.0, check_metrics=True)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"an evaluator failed on the base model before any trial: {describe_failure(exc)}",
                            file=config.space_file, field="objectives",
                            fix="check the evaluator configuration and code") from exc
        self.load_seconds = time.perf_counter() - t0

    def compute_statistics(self, progress: bool = True) -> dict[str, str]:
        """The run's statistics for its data-aware methods: computed once on this worker's parents and model and
        written to the run folder, or reused from there. Returns kind -> computed | reused."""
        from search.config.space import Calibration
        from search.statistics.calibration import jsonl_texts, task_texts
        from search.statistics.run import ensure_statistics
        from search.statistics.store import evaluator_tasks

        if not self.config.statistics:
            return {}
        assert self.config.calibration is not None
        calibration = Calibration.model_validate(self.config.calibration)
        if calibration.jsonl is not None:
            texts = jsonl_texts(calibration, self.config.space_file)
        else:
            key = next(self._objective_key[o.name] for o in self.config.objectives
                       if calibration.task in evaluator_tasks(o.evaluator))
            texts = task_texts(calibration, self._evaluators[key])
        self.current = None  # the working model holds parents while the statistics are computed
        self._prefix.clear()
        return ensure_statistics(self.parents, self.model, self.tokenizer, texts, dict(self.config.statistics),
                                 max_length=calibration.max_length, progress=progress,
                                 labels=self.config.model_names)

    def _attach_statistics(self) -> None:
        """Read the run's statistics files once, when a merge first needs them (another worker computed them)."""
        from search.statistics.store import load_statistics

        for kind, path in self.config.statistics:
            if kind not in self.parents.statistics:
                if not Path(path).exists():
                    raise CandidateFailure(f"the run's {kind} statistics ({path}) are not computed yet")
                self.parents.attach_statistics(load_statistics(Path(path), self.parents.num_models,
                                                               devices=self.parents.tensor_devices()))

    def merge(self, spec: MergeSpec) -> float:
        """Merge ``spec`` into the working model in place; seconds taken. NaN/inf weights fail the candidate."""
        t0 = time.perf_counter()
        self.current = None
        self._prefix.clear()
        if spec.merge_method.statistics is not None:
            self._attach_statistics()
        self.parents.merge_into(self.model, spec)
        bad = first_non_finite(self.model, self.parents.names)
        if bad is not None:
            raise CandidateFailure(f"merged weights hold NaN/inf (first in {bad})")
        self.current = spec
        return time.perf_counter() - t0

    def load_weights(self, fill: Callable[[dict[str, torch.Tensor]], None], label: Any) -> None:
        """Write weights made elsewhere (a soup, an interpolation) into the working model in place, then mark
        them loaded as ``label``. ``fill`` receives the model's state dict; NaN/inf weights fail the candidate."""
        self.current = None
        self._prefix.clear()
        self._attach_statistics()  # a mixture may hold data-aware candidates
        with torch.no_grad():
            fill(self.model.state_dict())
        bad = first_non_finite(self.model, self.parents.names)
        if bad is not None:
            raise CandidateFailure(f"weights hold NaN/inf (first in {bad})")
        self.current = label

    def _score_slice(self, key: str, evaluator: Any, split: str, limit: int, *,
                     per_document: bool = False) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Metrics on the first ``limit`` documents (and, with ``per_document``, each document's value). When the
        candidate already scored a shorter prefix and every metric its objectives read is a mean over documents,
        only the new documents are scored and combined: growing slices (25 % then 100 %) cost the full split
        once, not 1.25 times."""
        wanted = {o.metric for o in self.config.objectives if self._objective_key[o.name] == key}
        done = self._prefix.get((key, split))
        incremental = (done is not None and 0 < done[0] < limit and hasattr(evaluator, "combinable")
                       and all(evaluator.combinable(m) for m in wanted) and (not per_document or bool(done[2])))
        start = done[0] if incremental and done is not None else 0

        def call() -> tuple[dict[str, float], dict[str, list[float]]]:
            if per_document:
                return evaluator.score_documents(self.model, self.tokenizer, split, limit=limit, start=start)
            if start:
                return evaluator.score(self.model, self.tokenizer, split, limit=limit, start=start), {}
            return evaluator.score(self.model, self.tokenizer, split, limit=limit), {}

        with quiet_progress_bars():
            new, new_docs = call()
        if incremental and done is not None:
            n_done, previous, previous_docs = done
            metrics = combine_slices(previous, n_done, new, limit - n_done, wanted & set(previous) & set(new))
            docs = {m: previous_docs[m] + new_docs[m] for m in new_docs if m in previous_docs}
        else:
            metrics, docs = new, new_docs
        self._prefix[(key, split)] = (limit, metrics, docs)
        return metrics, docs

    def num_docs(self, split: str) -> dict[str, int]:
        return {name: self._evaluators[key].num_docs(split) for name, key in self._objective_key.items()}

    def has_role(self, phase: str) -> bool:
        """Whether every objective's evaluator has documents for ``phase`` (a run from before the three roles,
        or a test fraction of 0, has no test role)."""
        from evaluators.protocol import check_split

        return all(n > 0 for n in self.num_docs(check_split(phase)).values())

    def score(self, phase: str, fraction: float = 1.0) -> dict[str, float]:
        """Every objective's metric for the merged model, on the first ``fraction`` (nested slices) of the role
        ``phase`` ("search", "select" or "test")."""
        if self.current is None:
            raise RuntimeError("score() before a successful merge()")
        return self._score(phase, fraction)[0]

    def score_slice_documents(self, phase: str, fraction: float) -> tuple[dict[str, float], dict[str, list[float]]]:
        """``score`` and each document's value of the slice, per objective (for WilcoxonPruner's paired test);
        every objective's evaluator must report per-document values (lm-eval tasks)."""
        if self.current is None:
            raise RuntimeError("score_slice_documents() before a successful merge()")
        return self._score(phase, fraction, per_document=True)

    def score_documents(self, phase: str) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Every objective's metric on the whole role ``phase``, and each document's value (in the role's fixed
        order) for the objectives whose evaluator reports them (lm-eval tasks, metrics that are means)."""
        from evaluators.protocol import check_split

        if self.current is None:
            raise RuntimeError("score_documents() before a successful merge()")
        split = check_split(phase)
        done: dict[str, tuple[dict[str, float], dict[str, list[float]]]] = {}
        scores: dict[str, float] = {}
        per_doc: dict[str, list[float]] = {}
        for obj in self.config.objectives:
            key = self._objective_key[obj.name]
            evaluator = self._evaluators[key]
            if key not in done:
                with quiet_progress_bars():
                    if hasattr(evaluator, "score_documents"):
                        done[key] = evaluator.score_documents(self.model, self.tokenizer, split)
                    else:
                        done[key] = (evaluator.score(self.model, self.tokenizer, split), {})
            metrics, docs = done[key]
            scores[obj.name] = self._checked(obj, metrics)
            if obj.metric in docs:
                per_doc[obj.name] = docs[obj.metric]
        return scores, per_doc

    def _checked(self, obj: ObjectiveConfig, metrics: dict[str, float]) -> float:
        if obj.metric not in metrics:
            raise KeyError(f"objective '{obj.name}': evaluator returned no metric '{obj.metric}' "
                           f"(it returned {sorted(metrics)})")
        value = float(metrics[obj.metric])
        if value != value or value in (float("inf"), float("-inf")):
            raise CandidateFailure(f"objective '{obj.name}' scored {value}")
        return value

    def _score(self, phase: str, fraction: float, *, check_metrics: bool = False,
               per_document: bool = False) -> tuple[dict[str, float], dict[str, list[float]]]:
        from evaluators.protocol import check_split, slice_size

        split = check_split(phase)
        results: dict[tuple[str, str], dict[str, float]] = {}
        documents: dict[tuple[str, str], dict[str, list[float]]] = {}
        for obj in self.config.objectives:
            key = self._objective_key[obj.name]
            if (key, split) not in results:
                evaluator = self._evaluators[key]
                n = evaluator.num_docs(split)
                if check_metrics:  # 16 documents: enough for every task of a group to show its metrics
                    with quiet_progress_bars():
                        results[(key, split)] = evaluator.score(self.model, self.tokenizer, split, limit=min(n, 16))
                else:
                    results[(key, split)], documents[(key, split)] = self._score_slice(
                        key, evaluator, split, slice_size(n, fraction), per_document=per_document)
        out: dict[str, float] = {}
        for i, obj in enumerate(self.config.objectives):
            metrics = results[(self._objective_key[obj.name], split)]
            if check_metrics:
                if obj.metric not in metrics:
                    raise UserError(f"the evaluator returns no metric '{obj.metric}' (it returns: "
                                    f"{', '.join(sorted(metrics))})", file=self.config.space_file,
                                    field=f"objectives[{i}].metric", fix="use one of the metrics it returns")
                continue
            out[obj.name] = self._checked(obj, metrics)
        per_doc: dict[str, list[float]] = {}
        if per_document:
            for obj in self.config.objectives:
                docs = documents[(self._objective_key[obj.name], split)]
                if obj.metric not in docs:
                    raise CandidateFailure(f"objective '{obj.name}': metric '{obj.metric}' has no per-document "
                                           "values (it is not a mean over documents)")
                per_doc[obj.name] = docs[obj.metric]
        return out, per_doc


def statistics_config(loaded: Any, dtype: str) -> dict[str, Any]:
    """The calibration block (its jsonl path absolute) and kind -> file in the run folder, for the data-aware
    methods of the space (empty without them)."""
    from search.statistics.store import calibration_source, statistics_key, statistics_path

    space = loaded.space
    kinds = space.statistics_kinds()
    if not kinds or space.calibration is None:
        return {}
    calibration = space.calibration.model_dump(mode="json")
    if space.calibration.jsonl is not None:
        from search.statistics.calibration import jsonl_path

        calibration["jsonl"] = str(jsonl_path(space.calibration, loaded.file))
    source = calibration_source(space.calibration, loaded.file, space.objectives)
    models = [loaded.models[n] for n in space.models]
    files = tuple((kind, str(statistics_path(loaded.output, kind, statistics_key(
        kind, base=loaded.base_model, models=models, dtype=dtype, calibration=calibration, source=source))))
        for kind in kinds)
    return {"calibration": calibration, "statistics": files}


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide the tqdm bars lm-eval draws on every call (it passes ``disable=False`` itself, so TQDM_DISABLE cannot):
    they go to stderr, which is redirected for the call. Logging keeps its own stream and still shows."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def combine_slices(previous: dict[str, float], n_previous: int, new: dict[str, float], n_new: int,
                   metrics: set[str]) -> dict[str, float]:
    """Means over ``n_previous`` and ``n_new`` disjoint documents, combined into the mean over all of them.

    >>> combine_slices({"acc": 0.5}, 10, {"acc": 1.0}, 30, {"acc"})
    {'acc': 0.875}
    """
    total = n_previous + n_new
    return {m: (previous[m] * n_previous + new[m] * n_new) / total for m in metrics}


def first_non_finite(model: torch.nn.Module, names: list[str]) -> str | None:
    state = model.state_dict()
    for name in names:
        if not torch.isfinite(state[name]).all():
            return name
    return None


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a failed candidate, with out-of-memory named as such."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}".strip()
    if isinstance(exc, CandidateFailure):
        return str(exc)
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"
