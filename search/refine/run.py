"""Refine one trial of a run by gradient descent on its coefficients and record the result as a trial.

``search refine RUN_DIR [--from N]`` (or ``refine:`` in the space, after the search and before selection):

1. everything that can refuse is checked before a model is loaded (exit 2, nothing written): the trial
   (``best``: the best finished trial of a method linear in its task vectors, on the search score; or a number),
   that its method is linear in its task vectors, that the space searches its ``weight`` / ``lambda``, that
   ``refine.bounds`` lie inside the space's ranges, that the objectives are lm-eval tasks;
2. the trial's merge is held fixed but for its searched ``weight`` / ``lambda`` values (``theta``, the space's
   granularity; see :mod:`search.refine.linear` for what is held fixed) and ``theta`` takes Adam steps on the
   loss of ``documents`` search documents (:mod:`search.refine.loss`), clipped to the bounds after each step;
3. every ``check_every`` steps (and before the first) the loss on as many select documents is computed; the
   best checked ``theta`` is kept, and refinement stops when it has not improved for ``patience`` checks;
4. the kept ``theta`` is merged by the normal path and scored on the whole search role like any trial, then
   added to the study in one call (``create_trial`` / ``add_trial``, the space's distributions), with the trial
   it came from (``refined_from``), the loss curve and the passes it cost. A crash before that call leaves
   nothing; running it again with the same settings finds the trial and does nothing.

Passes are counted in documents: one document through the model forward is 1, a backward 2 more (so a training
step over ``n`` documents costs ``3 n``, a check over ``m`` select documents ``m``); the tokens those forwards
compute (padding included) are counted too (``train_forward_tokens``, ``check_tokens``; a backward is about twice
its forward's tokens).

>>> result = refine_run(Path("results/demo"))               # doctest: +SKIP
>>> result.trial, result.source, result.curve[-1]           # doctest: +SKIP
(61, 17, {'step': 40, 'search_loss': 0.91, 'select_loss': 1.02})
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from search.config.refine import Refine
from search.errors import UserError
from search.refine.linear import REFINED, LinearMerge, check_bounds, linear_kind
from search.study.candidate import CandidateRecord, read_record



@dataclass
class RefineResult:
    """What a refinement did: the new trial's number, the trial it refined, its curve and its scores."""

    trial: int
    source: int
    curve: list[dict[str, float]]
    search: dict[str, float]
    stopped_early: bool
    passes: dict[str, int] = field(default_factory=dict)
    already_done: bool = False
    seconds: float = 0.0


@dataclass
class RefineJob:
    """A checked refinement, before any model is loaded: the run, its plan and study, the trial, the settings;
    ``done`` when the same refinement was recorded already."""

    loaded: Any
    plan: Any
    study: optuna.Study
    source: FrozenTrial
    settings: Refine
    done: RefineResult | None = None


def prepare_refine(run_dir: Path, *, settings: Refine | None = None, from_trial: int | None = None) -> RefineJob:
    """Every check of a refinement (UserError, nothing written), with the settings given, else the space's
    ``refine:``, else the defaults; ``from_trial`` overrides their ``from``."""
    loaded = _loaded(run_dir)
    settings = settings or loaded.space.refine or Refine()
    if from_trial is not None:
        settings = settings.model_copy(update={"from_": from_trial})
    plan, study, source = check_refine(loaded, settings)
    return RefineJob(loaded, plan, study, source, settings, done=_already(study, source, settings))


def refine_run(run_dir: Path, *, settings: Refine | None = None, from_trial: int | None = None,
               worker: Any = None, progress: bool = True, lock: bool = True,
               job: RefineJob | None = None) -> RefineResult:
    """Refine a trial of the run in ``run_dir`` (see the module docstring); ``worker`` reuses a loaded worker
    (the in-process backend's), else one is loaded here. ``lock``: hold the run's lock (False when the caller
    does). ``job``: from :func:`prepare_refine`, when the caller checked first."""
    from search.study import storage

    job = job or prepare_refine(run_dir, settings=settings, from_trial=from_trial)
    if job.done is not None:
        return job.done
    if not lock:
        return _refine(job, worker=worker, progress=progress)
    with storage.run_lock(run_dir):
        return _refine(job, worker=worker, progress=progress)


def _loaded(run_dir: Path) -> Any:
    from search.config.space import load_space
    from search.study.folder import RunFolder
    from search.study.storage import SPACE_COPY, adopt_roles, read_resolved

    resolved_file = RunFolder(run_dir).resolved_file
    if not resolved_file.exists():
        raise UserError(f"'{run_dir}' is not a run folder (it has no {resolved_file.name})", field="RUN_DIR",
                        fix="give the folder of a run made by `search start`")
    resolved = read_resolved(run_dir)
    space_file = Path(resolved["space_file"])
    if not space_file.exists():
        space_file = run_dir / SPACE_COPY
    return adopt_roles(load_space(space_file, output=run_dir))


def check_refine(loaded: Any, settings: Refine) -> tuple[Any, optuna.Study, FrozenTrial]:
    """Every refusal, before any model is loaded: the plan, the study and the trial to refine."""
    from search.weights.layout import load_layout
    from search.refine.documents import check_objectives
    from search.study import storage
    from search.study.space_to_optuna import build_plan

    space = loaded.space
    check_objectives(loaded)
    layout = load_layout(loaded.base_model, trust_remote_code=space.trust_remote_code, source=str(loaded.file))
    plan = build_plan(space, layout.num_layers)
    journal = storage.journal_path(loaded.output, space)
    if journal is not None and not journal.exists():
        raise UserError(f"'{loaded.output}' has no study yet", field="RUN_DIR", fix="run `search start` first")
    try:
        study = optuna.load_study(study_name=storage.STUDY_NAME, storage=storage.open_storage(loaded.output, space))
    except KeyError:
        raise UserError(f"'{loaded.output}' holds no study yet", field="RUN_DIR",
                        fix="run `search start` first") from None
    source = pick_trial(study, space, settings.from_)
    method = read_record(source.user_attrs).method
    if linear_kind(method) is None:
        raise UserError(f"trial {source.number} merges with '{method}', which is not linear in its task vectors: "
                        "its coefficients cannot be refined by gradient", field="refine.from",
                        fix="refine a trial of task_arithmetic, linear, ties, dare_linear, dare_ties, "
                            "breadcrumbs(_ties) or della(_linear) (refine.from: best picks the best such trial)")
    refined = tuple(p for p in plan.searched[method] if p.param in REFINED)
    if not refined:
        raise UserError(f"the space searches no weight or lambda of '{method}': nothing to refine",
                        field=f"methods.{method}", fix="give weight (or lambda) a range to search")
    check_bounds(refined, settings.bounds)
    return plan, study, source


def check_space(loaded: Any) -> None:
    """The checks a space's ``refine:`` allows before the search starts (UserError): lm-eval objectives, a
    method linear in its task vectors whose weight or lambda is searched, bounds inside the space's ranges."""
    from search.weights.layout import load_layout
    from search.refine.documents import check_objectives
    from search.study.space_to_optuna import build_plan

    space = loaded.space
    settings = space.refine or Refine()
    check_objectives(loaded)
    layout = load_layout(loaded.base_model, trust_remote_code=space.trust_remote_code, source=str(loaded.file))
    plan = build_plan(space, layout.num_layers)
    refinable = {m: tuple(p for p in plan.searched[m] if p.param in REFINED)
                 for m in plan.methods if linear_kind(m) is not None}
    refinable = {m: r for m, r in refinable.items() if r}
    if not refinable:
        raise UserError("refine needs a method linear in its task vectors whose weight or lambda is searched; "
                        f"this space searches {', '.join(plan.methods)}", file=loaded.file, field="refine",
                        fix="add task_arithmetic (or ties, dare_ties, linear, ...) with a weight range to methods, "
                            "or remove 'refine'")
    named = {p.param for r in refinable.values() for p in r}
    for pname in settings.bounds:
        if pname not in named:
            raise UserError(f"refine.bounds names '{pname}', which no refinable method searches", file=loaded.file,
                            field=f"refine.bounds.{pname}", fix=f"bound one of: {', '.join(sorted(named))}")
    for refined in refinable.values():
        try:
            check_bounds(refined, settings.bounds, every_name=False)
        except UserError as exc:
            raise UserError(exc.message, file=loaded.file, field=exc.field, fix=exc.fix) from None


def _linear_method(t: FrozenTrial) -> bool:
    method = read_record(t.user_attrs).method
    return method is not None and linear_kind(method) is not None


def pick_trial(study: optuna.Study, space: Any, wanted: str | int) -> FrozenTrial:
    """The trial ``refine.from`` names: a number, or the best finished black-box trial of a linear method."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if read_record(t.user_attrs).spec_data is not None and t.params]
    if wanted != "best":
        for t in complete:
            if t.number == wanted:
                return t
        raise UserError(f"trial {wanted} is not a finished trial of this run", field="refine.from",
                        fix="give the number of a complete trial (see `search trials RUN_DIR`), or 'best'")
    candidates = [t for t in complete if _linear_method(t) and read_record(t.user_attrs).refined_from is None]
    if not candidates:
        methods = ", ".join(sorted(space.methods))
        raise UserError(f"the run has no finished trial of a method linear in its task vectors (its methods: "
                        f"{methods})", field="refine.from",
                        fix="search task_arithmetic, linear, ties, dare_* , breadcrumbs* or della* too, and let a "
                            "trial of it finish (or remove 'refine')")
    maximize = space.mode == "pareto" or all(o.direction == "maximize" for o in space.objectives) or \
        len({o.direction for o in space.objectives}) > 1

    def score(t: FrozenTrial) -> float:
        return space.weighted({o.name: float(read_record(t.user_attrs).search[o.name]) for o in space.objectives})

    ranked = sorted(candidates, key=lambda t: (score(t), -t.number) if maximize else (-score(t), -t.number))
    return ranked[-1]


def _already(study: optuna.Study, source: FrozenTrial, settings: Refine) -> RefineResult | None:
    """The refined trial of the same source and settings, when one was recorded already."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if read_record(t.user_attrs).refined_from == source.number and t.user_attrs.get("refine") == _settings_key(settings,
                                                                                                          source):
            return RefineResult(trial=t.number, source=source.number, curve=list(t.user_attrs.get("refine_curve", [])),
                                search=dict(read_record(t.user_attrs).search),
                                stopped_early=bool(t.user_attrs.get("refine_stopped_early")),
                                passes=dict(t.user_attrs.get("refine_passes", {})), already_done=True)
    return None


def _settings_key(settings: Refine, source: FrozenTrial) -> dict[str, Any]:
    return {**settings.described(), "from": source.number}


def _refine(job: RefineJob, *, worker: Any, progress: bool) -> RefineResult:
    from search.refine.documents import role_examples
    from search.refine.loss import encode

    t0 = time.perf_counter()
    loaded, plan, study, source, settings = job.loaded, job.plan, job.study, job.source, job.settings
    space = loaded.space
    if worker is None:
        from search.study.trial import Worker, WorkerConfig

        worker = Worker(WorkerConfig.from_space(loaded))
    evaluators: dict[str, Any] = {}
    weights = {o.name: (o.weight if space.mode == "weighted" else 1.0) for o in space.objectives}
    train = encode(worker.tokenizer, role_examples(loaded, "search", settings.documents, evaluators=evaluators),
                   weights)
    check = encode(worker.tokenizer, role_examples(loaded, "select", settings.documents, evaluators=evaluators),
                   weights)
    devices = {n: t.device for n, t in worker.model.state_dict().items()}
    merge = LinearMerge.build(worker.parents, plan, dict(source.params), settings.bounds, devices=devices)
    fit = optimise(worker.model, merge, train, check, settings, progress=progress)
    params = {**source.params, **merge.values(fit.theta)}
    return record(loaded, plan, study, source, settings, worker, params, fit, seconds=time.perf_counter() - t0)


@dataclass
class Fit:
    """The kept coefficients, the curve, whether patience ran out, and the document passes spent."""

    theta: torch.Tensor
    curve: list[dict[str, float]]
    stopped_early: bool
    passes: dict[str, int]


def optimise(model: torch.nn.Module, merge: LinearMerge, train: Any, check: Any, settings: Refine, *,
             progress: bool = True) -> Fit:
    """Adam on ``theta`` with clipping to the bounds, early stopping on the select loss (see the module
    docstring). Pure with respect to ``model``: its own weights are never written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = model.get_input_embeddings().weight.device  # where the documents enter the model
    train_pieces = [b.to(device) for b in train.split(settings.batch_size)]
    check_pieces = [b.to(device) for b in check.split(settings.batch_size)]
    theta = merge.theta0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=settings.lr)
    best_theta, best_select, bad = theta.detach().clone(), float("inf"), 0
    curve: list[dict[str, float]] = []
    passes = {"train": 0, "check": 0, "train_forward_tokens": 0, "check_tokens": 0}
    train_tokens = sum(int(b.input_ids.numel()) for b in train_pieces)  # padded: what the model computes
    check_tokens = sum(int(b.input_ids.numel()) for b in check_pieces)
    stopped = False
    columns = (TextColumn("refining"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
               TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("refine", total=settings.steps, loss="")
        for step in range(settings.steps + 1):
            if step % settings.check_every == 0 or step == settings.steps:
                select_loss = evaluate_loss(model, merge, theta.detach(), check_pieces, settings.loss)
                passes["check"] += len(check)
                passes["check_tokens"] += check_tokens
                curve.append({"step": step, "select_loss": select_loss})
                if select_loss < best_select - 1e-9:
                    best_select, best_theta, bad = select_loss, theta.detach().clone(), 0
                else:
                    bad += 1
                    if bad >= settings.patience:
                        stopped = step < settings.steps
                        break
            if step == settings.steps:
                break
            optimizer.zero_grad()
            search_loss = loss_and_grad(model, merge, theta, train_pieces, settings.loss)
            passes["train"] += 3 * len(train)
            passes["train_forward_tokens"] += train_tokens
            optimizer.step()
            with torch.no_grad():
                theta.copy_(torch.maximum(torch.minimum(theta, merge.high), merge.low))
            if curve and curve[-1]["step"] == step:
                curve[-1]["search_loss"] = search_loss  # one point per step: its select loss (when checked) and
            else:                                       # its search loss, both at the coefficients before the step
                curve.append({"step": step, "search_loss": search_loss})
            bar.update(task, advance=1, loss=f"loss {search_loss:.4f}")
    return Fit(theta=best_theta, curve=curve, stopped_early=stopped, passes=passes)


def loss_and_grad(model: torch.nn.Module, merge: LinearMerge, theta: torch.Tensor, pieces: list[Any],
                  loss: str) -> float:
    """The loss at ``theta``; its gradient accumulated into ``theta.grad``. The merged weights are built once;
    each piece of documents backpropagates into them, and then they into ``theta`` (one merge per step)."""
    from search.refine.loss import batch_loss

    merged = merge.weights(theta)
    leaves = {n: w.detach().requires_grad_(w.requires_grad) for n, w in merged.items()}
    total = 0.0
    for piece in pieces:
        value = batch_loss(model, {**merge.fixed, **leaves}, piece, loss)
        value.backward()
        total += value.item()
    outs = [w for n, w in merged.items() if w.requires_grad and leaves[n].grad is not None]
    torch.autograd.backward(outs, grad_tensors=[leaves[n].grad for n, w in merged.items()
                                                if w.requires_grad and leaves[n].grad is not None])
    return total


def evaluate_loss(model: torch.nn.Module, merge: LinearMerge, theta: torch.Tensor, pieces: list[Any],
                  loss: str) -> float:
    """The loss at ``theta``, no gradient."""
    from search.refine.loss import batch_loss

    with torch.no_grad():
        merged = {**merge.fixed, **merge.weights(theta)}
        return float(sum(float(batch_loss(model, merged, piece, loss)) for piece in pieces))


def record(loaded: Any, plan: Any, study: optuna.Study, source: FrozenTrial, settings: Refine, worker: Any,
           params: dict[str, Any], fit: Fit, *, seconds: float) -> RefineResult:
    """Merge and score the refined candidate by the normal path, then add it to the study in one call."""
    from search.study.loop import DOCUMENT_STRIDE, scalarize
    from search.study.space_to_optuna import distributions, spec_from_params

    space = loaded.space
    spec = spec_from_params(params, plan)
    merge_seconds = worker.merge(spec)
    t0 = time.perf_counter()
    intermediate: dict[int, float] = {}
    if space.pruner_name == "wilcoxon":  # a best trial must hold every document's value, as sampled ones do
        scores, documents = worker.score_slice_documents("search", 1.0)
        signed = space.signed_weights()
        intermediate = {k * DOCUMENT_STRIDE + i: signed[o.name] * v for k, o in enumerate(space.objectives)
                        for i, v in enumerate(documents[o.name])}
    else:
        scores = worker.score("search", 1.0)
    eval_seconds = time.perf_counter() - t0
    values = ([scores[o.name] for o in space.objectives] if space.mode == "pareto"
              else [scalarize(space, scores)])
    last = len(space.pruner.slices) - 1
    if not intermediate and space.mode == "weighted":
        intermediate = {last: values[0]}
    record = CandidateRecord(method=spec.method, spec=spec, search=dict(scores),
                             partials=[[scores[o.name] for o in space.objectives]],
                             merge_seconds=round(merge_seconds, 4), eval_seconds=round(eval_seconds, 4),
                             refined_from=source.number)
    attrs: dict[str, Any] = {
        **record.attrs(),
        "refine": _settings_key(settings, source),
        "refine_curve": fit.curve,
        "refine_stopped_early": fit.stopped_early,
        "refine_passes": fit.passes,
        "refine_seconds": round(seconds, 3),
    }
    dists = distributions(plan, spec.method)
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, values=values, params=params,
                                      distributions={k: dists[k] for k in params}, user_attrs=attrs,
                                      intermediate_values=intermediate)
    study.add_trial(trial)
    number = max(t.number for t in study.get_trials(deepcopy=False))
    return RefineResult(trial=number, source=source.number, curve=fit.curve, search=dict(scores),
                        stopped_early=fit.stopped_early, passes=fit.passes, seconds=seconds)
