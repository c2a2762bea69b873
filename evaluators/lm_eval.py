"""Score a live model with lm-evaluation-harness tasks, in-process.

Built once per worker: a ``TaskManager`` over the local task folders (lm-eval's ~5 s scan of its built-in tasks
only when a task is not local), the task objects of each of our splits with their documents, and the fixed
document order. Each ``score`` call wraps the live model in lm-eval's ``HFLM`` (built on the first call and
reused while the same model object comes back, its weights swapped in place) and runs
``lm_eval.evaluator.evaluate`` on the chosen documents.

What lm-eval 0.4.13 does with its two selectors, and why we use ``samples``:

- ``limit=k`` scores the first ``k`` documents of the task's split in file order (``islice``). Nested, but the
  slice is the head of the file (often sorted by topic or difficulty), and it cannot pick a hash partition.
- ``samples={task: [ids]}`` scores exactly the documents whose position is in ``ids``, iterated in FILE order
  whatever the order of ``ids``; its logged ``doc_id`` maps positions back through ``ids``, so ``ids`` must be
  sorted to be labelled right. An EMPTY list (or a task missing from the dict) means ALL documents. Membership
  is tested with ``in`` for every document of the split (O(n*k) for a plain list).

So each call takes the first ``k`` of our fixed order (each task's documents in content-hash order, the tasks
interleaved in proportion to their sizes: a stratified sample), groups them by task, passes each task's ids
sorted (as a list whose ``in`` is a set lookup), and leaves tasks with no chosen document out of the task dict.
Not used, on purpose: ``use_cache`` (keyed on the request alone, so after a
weight swap it returns the old model's answers), ``cache_requests`` (its key ignores ``samples``: wrong prompts),
``simple_evaluate`` (a ``pip list`` subprocess, ~0.8 s, per call).
"""

from __future__ import annotations

import difflib
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from evaluators.protocol import SPLIT_NAMES, SplitName, check_device, check_split, resolve_limit
from evaluators.specs import LmEvalSpec, SpecContext
from evaluators.splits import assign_split, fingerprint, first, fixed_order, interleave, shared_documents

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager

_RESULT_KEYS_NOT_METRICS = {"alias", "name", "sample_len", "sample_count", "samples"}


class _IndexSet(list):  # type: ignore[type-arg]
    """Sorted document ids that lm-eval reads as a list, with an O(1) ``in``.

    lm-eval's ``Task.doc_iterator`` tests ``i in samples`` for every document of the split; with a plain list
    that is O(n*k) per call. This is still a list (the type lm-eval asks for), only faster to search.
    """

    def __init__(self, ids: Iterable[int]) -> None:
        super().__init__(sorted(ids))
        self._members = frozenset(self)

    def __contains__(self, item: object) -> bool:
        return item in self._members


class _ListedDocs:
    """A task's ``process_docs``: its evaluation split as a list of dicts, made once; other splits as before.

    With ``samples``, lm-eval walks every document of the split twice per call (``Task.doc_iterator``); from an
    Arrow dataset each row is decoded anew (~28 us): 1.2 s per call for a 20k-document split, whatever the
    slice. A list (a doc type lm-eval takes, as Python tasks return) makes that walk ~1 ms. This goes through
    the task's public config (``process_docs``), after the task has been built; lm-eval's own ``process_docs``,
    if the task has one, is applied first, once. Positions in this list are what ``samples`` ids refer to; our
    splits and orders hash the documents' content, so the list's order is free to choose.
    """

    def __init__(self, task: Task) -> None:
        self._original = task.config.process_docs
        self._source = task.dataset[_eval_split(task)]
        self._docs = list(self._original(self._source) if self._original else self._source)
        if task.get_config("output_type") == "loglikelihood_rolling":
            # lm-eval batches rolling windows in document order (other request types it sorts by length
            # itself): longest first, a batch pads little. On the demo text this cut padded tokens by 1.5x.
            self._docs.sort(key=lambda doc: -len(str(task.doc_to_target(doc))))

    def __call__(self, dataset: Any) -> Any:
        if dataset is self._source:
            return self._docs
        return self._original(dataset) if self._original else dataset


class LmEvalEvaluator:
    """lm-eval tasks on our ``search`` / ``select`` / ``test`` roles; see the module docstring for how slices are chosen.

    >>> ev = build_evaluator({"type": "lm_eval", "task": "demo_add", "include_path": "tasks"})  # doctest: +SKIP
    >>> ev.score(model, tokenizer, "search", limit=8)                                        # doctest: +SKIP
    {'exact_match': 0.25, 'demo_add/exact_match': 0.25}
    """

    def __init__(self, spec: LmEvalSpec, *, device: str, ctx: SpecContext) -> None:
        self.spec = spec
        self.device = device
        self.name = spec.name or "+".join(spec.task_names)
        self._ctx = ctx
        manager = self._task_manager()
        base = self._load(manager, spec.task_names)
        # our role -> {task name -> task object whose evaluation docs are that role's source}
        self._tasks: dict[SplitName, dict[str, Task]] = {s: {} for s in SPLIT_NAMES}
        # our role -> the fixed order of (task name, document position in the task's evaluation docs)
        self._order: dict[SplitName, list[tuple[str, int]]] = {}
        # our role -> the metric names every task of the evaluator reports (the slice-independent headline)
        self._shared_metrics: dict[SplitName, set[str]] = {}
        self._plans: dict[str, dict[SplitName, tuple[str, dict[str, float] | None]]] = {}
        for task_name, task in base.items():
            plan = self._plans[task_name] = self._split_plan(task_name, task)
            loaded: dict[str, Task] = {}
            for split, (task_split, _) in plan.items():
                if task_split not in loaded:
                    loaded[task_split] = task if task_split == _eval_split(task) else self._load_with_split(
                        manager, task_name, task_split)
                    self._configure(loaded[task_split])
                self._tasks[split][task_name] = loaded[task_split]
        fingerprints: dict[SplitName, list[str]] = {}
        for split in SPLIT_NAMES:
            per_task: dict[str, list[int]] = {}
            fingerprints[split] = []
            for task_name, obj in self._tasks[split].items():
                partition = self._plans[task_name][split][1]
                positions, fps = [], []
                for i, doc in enumerate(obj.eval_docs):
                    fp = fingerprint(doc)
                    if partition is None or assign_split(fp, partition) == split:
                        positions.append(i)
                        fps.append(fp)
                if positions:
                    per_task[task_name] = [positions[j] for j in fixed_order(fps)]
                fingerprints[split] += [f"{task_name}/{fp}" for fp in fps]
            if not per_task and self._tasks[split]:
                raise ctx.error("fractions", f"the {split!r} role has no documents",
                                "add documents, or change fractions / split_map")
            # each task in its own content-hash order, the tasks mixed in proportion (a stratified sample)
            self._order[split] = interleave(per_task)
            if self._tasks[split]:
                self._shared_metrics[split] = set.intersection(
                    *(_metric_names(t) for t in self._tasks[split].values()))
        for a, b, n in shared_documents(fingerprints):
            raise ctx.error("split_map", f"the {a!r} and {b!r} roles share {n} documents",
                            "give each role its own documents: name a split for each role, or the same split for "
                            "roles that should divide it (it is then partitioned by content hash)")
        self._check_metric()
        self._check_gen_kwargs()
        self._lm: Any = None
        self._lm_for: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------ the protocol
    def num_docs(self, split: SplitName) -> int:
        return len(self._order[check_split(split)])

    def score(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None,
              start: int = 0) -> dict[str, float]:
        """Metrics on documents ``[start, limit)`` of the split's fixed order (``start`` > 0: the next part of a
        growing slice, see :meth:`combinable`)."""
        return self._evaluate(model, tokenizer, split, limit, start, per_document=False)[0]

    def score_documents(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None,
                        start: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
        """``score`` and, for each metric that is a mean over documents, every document's value in the fixed
        order (from lm-eval's per-sample log, ``log_samples``): what intervals and paired tests need."""
        return self._evaluate(model, tokenizer, split, limit, start, per_document=True)

    def _evaluate(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None, start: int, *,
                  per_document: bool) -> tuple[dict[str, float], dict[str, list[float]]]:
        from lm_eval.evaluator import evaluate

        split = check_split(split)
        order = self._order[split]
        if not order:
            raise ValueError(f"evaluator {self.name!r} has no {split!r} role")
        check_device(model, self.device, self.name)
        chosen: dict[str, list[int]] = defaultdict(list)
        part = order[start: resolve_limit(limit, len(order))]
        for task_name, i in part:
            chosen[task_name].append(i)
        tasks = {name: self._tasks[split][name] for name in chosen}
        for task in tasks.values():
            # The sampler's RNG advances with every prompt it builds: reset it so a call does not depend on
            # the calls before it (same model, same slice -> same prompts).
            task.set_fewshot_seed(seed=self.spec.fewshot_seed)
        # Task objects are reused across calls: evaluate() rebuilds each task's requests from its documents
        # (build_all_requests), so nothing of an earlier call survives in them but the docs and the config.
        results = evaluate(
            lm=self._wrapper(model, tokenizer),
            task_dict={"tasks": tasks, "groups": {}, "group_map": {}},
            samples={name: _IndexSet(ids) for name, ids in chosen.items()},
            cache_requests=False,
            bootstrap_iters=0,
            log_samples=per_document,
        )
        assert results is not None  # rank 0 of a single process always gets results
        metrics = self._metrics(results["results"], {name: len(ids) for name, ids in chosen.items()},
                                self._shared_metrics[split])
        if not per_document:
            return metrics, {}
        return metrics, _per_document(results["samples"], part,
                                      [m for m in metrics if "/" not in m and self.combinable(m)])

    def combinable(self, metric: str) -> bool:
        """Whether ``metric`` is a mean over documents (every task aggregates it with lm-eval's ``mean``), so
        that its values on disjoint parts of a slice combine by their sizes: a growing slice then scores only
        its new documents. Per-task keys (``task/metric``) and non-mean aggregations (perplexity) do not."""
        from lm_eval.api.metrics import mean

        if "/" in metric:
            return False
        base = metric.partition(",")[0]
        return all(task.aggregation().get(base) is mean for task in self._tasks["search"].values())

    def tasks(self, split: SplitName) -> dict[str, Task]:
        """The lm-eval task objects scored on ``split`` (after a call, ``task.instances`` are its requests)."""
        return dict(self._tasks[check_split(split)])

    def documents(self, split: SplitName, limit: int | None = None) -> list[tuple[str, Any]]:
        """``(task name, document)`` for what ``score(..., split, limit)`` scores, in the fixed order."""
        order = self._order[check_split(split)]
        docs = {name: task.eval_docs for name, task in self._tasks[split].items()}
        return [(t, docs[t][i]) for t, i in first(order, resolve_limit(limit, len(order)))]

    # ------------------------------------------------------------------ building
    def _task_manager(self) -> TaskManager:
        from lm_eval.tasks import TaskManager

        paths = None
        if self.spec.include_path is not None:
            raw = [self.spec.include_path] if isinstance(self.spec.include_path, str) else self.spec.include_path
            paths = [self._ctx.path(p) for p in raw]
            for p in paths:
                if not p.is_dir():
                    raise self._ctx.error("include_path", f"folder {str(p)!r} does not exist",
                                          "give a folder of lm-eval task YAML files")
            local = TaskManager(include_path=[str(p) for p in paths], include_defaults=False)
            if all(name in local.all_tasks for name in self.spec.task_names):
                return local
        # lm-eval's built-in tasks: scanning them takes ~5 s, so only when a task is not in include_path.
        manager = TaskManager(include_path=[str(p) for p in paths] if paths else None, include_defaults=True)
        for name in self.spec.task_names:
            if name not in manager.all_tasks:
                close = difflib.get_close_matches(name, manager.all_tasks, n=3)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise self._ctx.error("task", f"unknown lm-eval task {name!r}",
                                      f"{hint}give a task of lm-eval or of a folder in include_path")
        return manager

    def _load(self, manager: TaskManager, names: list[str]) -> dict[str, Task]:
        try:
            loaded = manager.load(names)
        except Exception as exc:  # a task's YAML or data is user input: name it, keep the cause
            raise self._ctx.error("task", f"lm-eval could not load {names}: {type(exc).__name__}: {exc}",
                                  "check the task's YAML and its data files") from exc
        return dict(loaded["tasks"])

    def _load_with_split(self, manager: TaskManager, task_name: str, task_split: str) -> Task:
        # A task evaluates its test split (else its validation split). To evaluate another split the override
        # must be in the config the task is BUILT from (few-shot docs are fixed at construction), and lm-eval's
        # public way to override a registered task's config is a group entry: {"group": g, "task": [{...}]}.
        spec = {"group": f"merge_search::{task_name}::{task_split}",
                "task": [{"task": task_name, "test_split": task_split}]}
        try:
            return manager.load(spec)["tasks"][task_name]
        except Exception as exc:
            raise self._ctx.error("split_map", f"lm-eval could not load task {task_name!r} on its split "
                                  f"{task_split!r}: {type(exc).__name__}: {exc}",
                                  "name splits the task's data has") from exc

    def _split_plan(self, task_name: str, task: Task) -> dict[SplitName, tuple[str, dict[str, float] | None]]:
        """Our role -> (the task's split, the fractions of the roles it is partitioned among, or None when the
        role reads the whole split)."""
        available = _available_splits(task)
        spec = self.spec
        if spec.split_map is not None:
            m = spec.split_map
            named: dict[SplitName, str | None] = {"search": m.search, "select": m.select, "test": m.test}
            for ours, theirs in named.items():
                if theirs is not None and available is not None and theirs not in available:
                    raise self._ctx.error(f"split_map.{ours}", f"task {task_name!r} has no split {theirs!r}",
                                          f"use one of: {', '.join(available)}")
        else:
            val, test, own = task.config.validation_split, task.config.test_split, _eval_split(task)
            both = bool(val and test and val != test and (available is None or {val, test} <= set(available)))
            if spec.legacy_two_roles:  # as before the three roles: search/held-out = validation/test
                named = {"search": val, "select": test} if both else {"search": own, "select": own}
            else:
                named = {"search": val, "select": val, "test": test} if both else dict.fromkeys(SPLIT_NAMES, own)
        roles = {r: s for r, s in named.items() if s is not None and (r != "test" or spec.fractions.test > 0)}
        plan: dict[SplitName, tuple[str, dict[str, float] | None]] = {}
        for role, task_split in roles.items():
            sharing = [r for r, s in roles.items() if s == task_split]
            plan[role] = (task_split, spec.fractions.among(sharing) if len(sharing) > 1 else None)
        return plan

    def _configure(self, task: Task) -> None:
        # The same overrides lm-eval's simple_evaluate applies, through the same public Task.set_config.
        if isinstance(getattr(task, "dataset", None), dict) and not isinstance(task.config.process_docs, _ListedDocs):
            task.set_config(key="process_docs", value=_ListedDocs(task))
        if self.spec.gen_kwargs and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=dict(self.spec.gen_kwargs), update=True)
        if self.spec.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=self.spec.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)

    def _check_metric(self) -> None:
        if self.spec.metric is None:
            return
        for task_name, task in self._tasks["search"].items():
            names = _metric_names(task)
            if self.spec.metric not in names:
                raise self._ctx.error("metric", f"task {task_name!r} does not report {self.spec.metric!r}",
                                      f"use one of: {', '.join(sorted(names))}")

    def _check_gen_kwargs(self) -> None:
        if self.spec.gen_kwargs and not any(
            t.get_config("output_type") == "generate_until" for t in self._tasks["search"].values()
        ):
            raise self._ctx.error("gen_kwargs", "no task of this evaluator generates text",
                                  "remove gen_kwargs (they apply to generate_until tasks only)")

    # ------------------------------------------------------------------ scoring
    def _wrapper(self, model: Any, tokenizer: Any) -> Any:
        """lm-eval's HF wrapper around the live model: built once, reused while the same model comes back."""
        if self._lm_for is None or self._lm_for[0] is not model or self._lm_for[1] is not tokenizer:
            from lm_eval.models.huggingface import HFLM

            self._check_generation_config(model)
            self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.spec.batch_size,
                            max_length=self.spec.max_length, device=self.device)
            self._lm_for = (model, tokenizer)
        model.eval()
        return self._lm

    def _check_generation_config(self, model: Any) -> None:
        """lm-eval bounds generation with ``max_length`` (prompt + ``max_gen_toks``); a ``max_new_tokens`` in the
        model's generation_config.json takes precedence in transformers, so the task's limit would be ignored."""
        config_max = getattr(getattr(model, "generation_config", None), "max_new_tokens", None)
        if config_max is None:
            return
        for name, task in self._tasks["search"].items():
            if task.get_config("output_type") != "generate_until":
                continue
            wanted = (task.get_config("generation_kwargs") or {}).get("max_gen_toks", 256)
            if wanted != config_max:
                raise self._ctx.error(
                    "gen_kwargs", f"task {name!r} generates at most {wanted} tokens, but the model's "
                    f"generation_config.json sets max_new_tokens={config_max}, which transformers obeys instead",
                    f"remove max_new_tokens from the model's generation_config.json, or set gen_kwargs "
                    f"max_gen_toks: {config_max}")

    def _metrics(self, results: dict[str, dict[str, Any]], counts: dict[str, int],
                 shared: set[str]) -> dict[str, float]:
        """``task/metric`` for every task in the slice, and ``metric`` (for each metric all tasks of the
        evaluator report) averaged over the documents of the slice.

        The average weights each task by its number of scored documents: slices are stratified by task, so
        this is the same quantity on every slice, the whole split's micro-average (an unweighted mean of tasks
        would let a task with one document in a small slice count as much as one with fifty).
        """
        per_task: dict[str, dict[str, float]] = {}
        for task_name in counts:
            row: dict[str, float] = {}
            for key, value in results[task_name].items():
                if key in _RESULT_KEYS_NOT_METRICS or "_stderr" in key:
                    continue
                metric, _, filt = key.partition(",")
                name = metric if filt in ("", "none") else f"{metric},{filt}"
                if self.spec.metric is not None and name != self.spec.metric:
                    continue
                try:
                    row[name] = float(value)
                except (TypeError, ValueError):
                    continue  # lm-eval reports e.g. "N/A" for metrics it could not compute
            per_task[task_name] = row
        out: dict[str, float] = {}
        total = sum(counts.values())
        for name in sorted(shared & set.intersection(*(set(r) for r in per_task.values()))):
            out[name] = math.fsum(per_task[t][name] * counts[t] for t in per_task) / total
        for task_name, row in per_task.items():
            for name, value in row.items():
                out[f"{task_name}/{name}"] = value
        return out


def _per_document(samples: dict[str, list[dict[str, Any]]], part: list[tuple[str, int]],
                  metrics: list[str]) -> dict[str, list[float]]:
    """Each metric's value per document of ``part`` (the scored slice, in our fixed order), from lm-eval's
    logged samples: one entry per (document, filter), the metric's value under its own name."""
    logged = {(task, ex["doc_id"], ex["filter"]): ex for task, rows in samples.items() for ex in rows}
    out: dict[str, list[float]] = {}
    for metric in metrics:
        name, _, filt = metric.partition(",")
        out[metric] = [float(logged[(task, i, filt or "none")][name]) for task, i in part]
    return out


def _eval_split(task: Task) -> str:
    """The split lm-eval evaluates a task on: its test split, else its validation split."""
    return task.config.test_split or task.config.validation_split


def _available_splits(task: Task) -> list[str] | None:
    dataset = getattr(task, "dataset", None)
    return sorted(dataset.keys()) if hasattr(dataset, "keys") else None


def _metric_names(task: Task) -> set[str]:
    """The names ``score`` reports for a task: ``metric``, or ``metric,filter`` for a filter other than none."""
    filters = [f["name"] for f in (task.config.filter_list or [])] or ["none"]
    return {m if f == "none" else f"{m},{f}" for m in task.aggregation() for f in filters}
