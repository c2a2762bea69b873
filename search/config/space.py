"""The space file: what to merge, what to search, how to score it, and how long to look.

```yaml
base_model: models/base                 # paths are relative to this file
models: {code: models/code, chat: models/chat}
methods:
  task_arithmetic: {weight: [0.0, 1.2]}             # a range is searched
  ties: {weight: [0.0, 1.2], density: [0.1, 1.0]}
  dare_ties: {weight: [0.0, 1.2], density: 0.5}     # a value is fixed
granularity: {layer_groups: 4}                       # global | per_layer | {layer_groups: N, module_kinds: true}
objectives:
  - name: code
    evaluator: {type: lm_eval, task: demo_add, include_path: ../evaluators/tasks}
    metric: exact_match
sampler: {name: tpe}
pruner: {name: median, slices: [0.1, 0.3, 1.0]}
budget: {trials: 60, minutes: 30}
output: ../results/demo
```

Every field is documented in ``spaces/README.md``; ``spaces/schema.json`` is generated from these models
(``python -m search.config.schema spaces/schema.json``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.config.refine import Refine
from search.config.yaml_io import FieldError, load_model, located
from search.errors import UserError
from search.weights.gguf import model_folder

SamplerName = Literal["tpe", "cmaes", "nsgaii", "nsgaiii", "gp", "qmc", "random"]
PrunerName = Literal["none", "median", "successive_halving", "baseline", "pareto", "wilcoxon"]
Range = tuple[float, float]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Granularity(_Frozen):
    """How finely coefficients vary across the model.

    ``layer_groups`` splits the decoder layers into that many contiguous groups, each with its own value
    (``per_layer`` is one group per layer); tensors outside the layer stack take the first group's value, as in
    mergekit's gradients. ``module_kinds`` gives attention, mlp and norm tensors separate values (per group), and
    embeddings and lm_head one value each.
    """

    layer_groups: int = Field(1, ge=1, description="Contiguous groups of decoder layers, one value each.")
    per_layer: bool = Field(False, description="One value per decoder layer (overrides layer_groups).")
    module_kinds: bool = Field(False, description="Separate values for attention / mlp / norm / embedding / "
                                                  "lm_head tensors.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if data == "global":
            return {}
        if data == "per_layer":
            return {"per_layer": True}
        if data == "module_kinds":
            return {"module_kinds": True}
        if isinstance(data, str):
            raise ValueError(f"'{data}' is not a granularity: write global, per_layer, module_kinds, or a mapping "
                             "like {layer_groups: 4, module_kinds: true}")
        return data


class Objective(_Frozen):
    """One thing to optimise: an evaluator's metric on its ``search`` role; the finalists are re-scored on its
    ``select`` role (the winner is picked there) and a few fixed models once on its ``test`` role (the figures a
    report states). The evaluator decides which documents each role reads (``split_map``, ``fractions``)."""

    name: str = Field(description="Short name (used in reports and trial tables).", pattern=r"^[A-Za-z0-9_\-]+$")
    evaluator: dict[str, Any] = Field(description="An evaluator spec (type lm_eval | perplexity | python), "
                                                  "see evaluators/README.md.")
    metric: str = Field(description="The metric the evaluator returns that this objective reads.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Higher or lower is better.")
    weight: float = Field(1.0, description="Weight (>= 0) in the scalarised view (weighted sum of objectives); "
                                           "to prefer lower values set direction: minimize, not a negative weight.")

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: float) -> float:
        # A negative weight would fight `direction` (and the pruners, which read the weighted sum): one way only.
        if not value >= 0 or value == float("inf"):
            raise FieldError(f"weight {value} is not a finite number >= 0",
                             fix="give a weight >= 0; to prefer lower values of a metric set direction: minimize")
        return value


class Sampler(_Frozen):
    """An Optuna sampler by name, with its keyword arguments (e.g. ``{name: tpe, args: {n_startup_trials: 10}}``)."""

    name: SamplerName = Field("tpe", description="tpe | cmaes | nsgaii | nsgaiii | gp | qmc | random.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the Optuna sampler.")

    @model_validator(mode="after")
    def _builds(self) -> Sampler:
        if self.args:  # built once with them now, so a wrong one is refused at its line, not in the first trial
            from search.config.optuna_args import SAMPLERS, checked_args

            checked_args(SAMPLERS[self.name], self.args, what=f"sampler '{self.name}'")
        return self


class Pruner(_Frozen):
    """Early stopping: objectives are scored on growing slices of the search split.

    ``median`` / ``successive_halving`` are Optuna's pruners (single objective, on the scalarised value);
    ``baseline`` stops a candidate whose partial score falls below the best hand-set baseline's by ``margin``;
    ``pareto`` (multi-objective) stops one whose partial scores are dominated by the current front by ``margin``;
    ``wilcoxon`` (single objective, lm-eval evaluators) is Optuna's WilcoxonPruner: a paired signed-rank test,
    document by document, against the best trial.
    """

    name: PrunerName | None = Field(None, description="none | median | successive_halving | baseline | pareto | "
                                    "wilcoxon; "
                                    "default: median for one (weighted) objective, pareto for a Pareto study.")
    slices: list[float] = Field(default_factory=lambda: [0.25, 1.0],
                                description="Growing fractions of the search split; the last must be 1.0.")
    margin: float = Field(0.0, ge=0, description="Slack for baseline/pareto pruning, in metric units.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the Optuna pruner.")

    @field_validator("slices")
    @classmethod
    def _growing(cls, value: list[float]) -> list[float]:
        if not value or value[-1] != 1.0 or any(not 0 < v <= 1 for v in value) or value != sorted(set(value)):
            raise ValueError("slices must grow strictly within (0, 1] and end at 1.0, e.g. [0.1, 0.3, 1.0]")
        return value


class Budget(_Frozen):
    """When to stop: after this many finished trials and/or this much wall time (whichever comes first)."""

    trials: int | None = Field(50, ge=1, description="Sampled trials to finish (baselines do not count).")
    minutes: float | None = Field(None, gt=0, description="Wall-clock minutes for this start or resume.")
    max_consecutive_failures: int = Field(5, ge=1, description="Stop the run after this many failures in a row.")

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.trials is None and self.minutes is None:
            raise ValueError("give trials and/or minutes, or the run never ends")
        return self


class Resources(_Frozen):
    """Workers for the Ray backend: how many, and what each takes."""

    workers: int | None = Field(None, ge=1, description="Actors; default one per GPU, else 1.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (fractions share a GPU; a whole N > 1 "
                                                   "shards the working model over N GPUs).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs per actor.")

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"gpus_per_worker above 1 shards a model over whole GPUs: give 2, 3, ..., got {value}")
        return value


class Calibration(_Frozen):
    """Text the data-aware methods (fisher, regmean) compute their per-parent statistics on, once per run.

    Either ``task``, an lm-eval task an objective scores (its ``search`` role's documents only, never select or
    test: what chooses or reports a model is not what shaped it), or ``jsonl``, a file of texts.
    """

    task: str | None = Field(None, description="An lm-eval task named by an lm_eval objective: the first "
                                               "`documents` of its search role (prompt and answer).")
    jsonl: str | None = Field(None, description="A .jsonl file of texts (relative to the space file).")
    field: str = Field("text", description="The jsonl field holding a text.")
    documents: int = Field(64, ge=1, description="Documents to compute the statistics on.")
    max_length: int = Field(256, ge=2, description="Tokens per document (longer ones are cut).")

    @model_validator(mode="after")
    def _one_source(self) -> Calibration:
        if (self.task is None) == (self.jsonl is None):
            raise FieldError("give exactly one calibration source", fix="write either task: <an objective's lm-eval "
                             "task> or jsonl: <file of texts>")
        return self


ParamValue = Union[float, bool, Range]


class Space(_Frozen):
    """A search: parents, methods and their parameter ranges, granularity, objectives, sampler and budget."""

    base_model: str | None = Field(
        None, description="The model the fine-tunes were trained from (local HF folder). Leave it out to average "
                          "checkpoints of one run (methods that take no base: checkpoint_average, checkpoint_ema, "
                          "lawa, linear, karcher, multislerp, nuslerp).")
    models: dict[str, str] = Field(min_length=1, description="Fine-tunes by short name -> local HF folder.")
    methods: dict[str, dict[str, ParamValue]] = Field(
        min_length=1, description="Methods to search -> {parameter: [low, high] (searched) or value (fixed)}.")
    granularity: Granularity = Field(default_factory=Granularity, description="How finely coefficients vary.")
    objectives: list[Objective] = Field(min_length=1, description="What to score candidates on.")
    optimize: Literal["weighted", "pareto"] | None = Field(
        None, description="weighted: one scalarised objective; pareto: a multi-objective study. Default: pareto "
                          "with several objectives (weighted for cmaes/gp/qmc), weighted with one.")
    sampler: Sampler = Field(default_factory=Sampler, description="The Optuna sampler.")
    pruner: Pruner = Field(default_factory=Pruner, description="Early stopping on growing slices.")
    budget: Budget = Field(default_factory=Budget, description="When to stop.")
    baselines: bool = Field(True, description="Score the hand-set merges a mergekit user would try first.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Storage dtype of the parents and the working model; auto: the base's own "
                            "(torch_dtype in its config.json). Merge arithmetic is float32 per tensor.")
    placement: Literal["auto", "resident", "stream"] = Field(
        "auto", description="Where the parents live on a GPU run: resident (on the GPU), stream (pinned CPU "
                            "memory, copied per tensor), auto (resident when it fits). See `search plan`.")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the sampler and of stochastic methods.")
    output: str = Field("results/run", description="Run folder (relative to this file).")
    backend: Literal["inprocess", "ray"] = Field("inprocess", description="Who runs the trials.")
    ray_address: str | None = Field(None, description="Ray cluster address; none starts an embedded instance.")
    resources: Resources = Field(default_factory=Resources)
    storage: str | None = Field(None, description="Optuna storage URL; default: a journal file in the run folder.")
    trust_remote_code: bool = Field(False, description="Let transformers run code shipped with a model.")
    allow_pickle: bool = Field(False, description="Also read pytorch_model.bin (pickle) parents.")
    calibration: Calibration | None = Field(
        None, description="Calibration texts for the data-aware methods (fisher, regmean): their statistics are "
                          "computed once per run and kept in the run folder.")
    refine: Refine | None = Field(None, description="Gradient refinement of the best trial's coefficients after "
                                                    "the search (see search/config/refine.py).")

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str | None) -> str | None:
        fix = "write journal:PATH/TO/study.journal, or an RDB URL such as sqlite:///study.db (or leave it out)"
        if value is None:
            return value
        if value.startswith("journal:"):
            path = value.removeprefix("journal:")
            if not path.strip() or Path(path).is_dir():
                raise FieldError(f"'{value}' names no journal file", fix=fix)
            return value
        from sqlalchemy.engine import make_url

        try:
            make_url(value).get_dialect()
        except Exception as exc:  # sqlalchemy's own words say what is wrong with the URL
            raise FieldError(f"'{value}' is not a storage URL ({exc})", fix=fix) from None
        return value

    @field_validator("models")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"model name '{name}' may hold only letters, digits, '_' and '-'")
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from search.merging.spec import lookup_method

        for method_name, params in value.items():
            try:
                method = lookup_method(method_name, field=f"methods.{method_name}")
            except UserError as exc:
                raise ValueError(f"merge method '{method_name}' is unknown ({exc.fix})") from None
            known = {p.name: p for p in method.params}
            for pname, pvalue in params.items():
                spec = known.get(pname)
                if spec is None:
                    close = difflib.get_close_matches(str(pname), list(known), n=1)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    raise FieldError(f"'{pname}' is not a parameter of '{method_name}'", loc=(method_name, pname),
                                     fix=f"{hint}'{method_name}' takes: {', '.join(known) or 'nothing'}")
                values = list(pvalue) if isinstance(pvalue, (tuple, list)) else [pvalue]
                for v in values:
                    if spec.kind == "int" and isinstance(v, float) and v.is_integer():
                        v = int(v)  # ParamValue holds numbers as floats (lawa's k: 3 arrives as 3.0)
                    problem = spec.check(float(v) if spec.kind == "float" and not isinstance(v, bool) else v)
                    if problem:
                        raise ValueError(f"{method_name}: {problem}")
                if isinstance(pvalue, (tuple, list)) and pvalue[0] > pvalue[1]:
                    raise ValueError(f"{method_name}.{pname}: range [{pvalue[0]}, {pvalue[1]}] is reversed")
        return value

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value: list[Objective]) -> list[Objective]:
        seen: dict[str, int] = {}
        for i, o in enumerate(value):
            if o.name in seen:
                raise FieldError(f"objective name '{o.name}' is used twice (also objectives[{seen[o.name]}])",
                                 loc=(i, "name"), fix="give each objective its own name")
            seen[o.name] = i
        if value and all(o.weight == 0 for o in value):
            raise FieldError("every objective has weight 0: the weighted search would optimise a constant",
                             loc=(0, "weight"), fix="give at least one objective a weight > 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Space:
        from search.merging.spec import lookup_method

        for method_name, given in self.methods.items():
            method = lookup_method(method_name)
            if self.base_model is None and method.needs_base:
                raise ValueError(f"methods.{method_name}: '{method_name}' needs a base_model: add 'base_model', or "
                                 "average checkpoints with checkpoint_average, checkpoint_ema or lawa")
            problem = method.check_model_count([False] * len(self.models))
            if problem:
                raise ValueError(f"methods.{method_name}: {problem} (the base is not listed under models)")
            for pname, pvalue in given.items() if method.check_count is not None else ():
                high = pvalue[1] if isinstance(pvalue, (tuple, list)) else pvalue
                problem = method.check_count(len(self.models), {pname: high})
                if problem:
                    raise ValueError(f"methods.{method_name}.{pname}: {problem}")
        self._check_calibration()
        if self.mode == "pareto" and self.sampler.name in ("cmaes",):
            raise ValueError("the cmaes sampler optimises one objective: set optimize: weighted, or use tpe/nsgaii")
        if self.mode == "pareto" and self.pruner_name in ("median", "successive_halving", "baseline", "wilcoxon"):
            raise ValueError(f"pruner '{self.pruner.name}' needs one objective: use pruner name 'pareto' "
                             "(or 'none') with optimize: pareto")
        if self.mode == "weighted" and self.pruner_name == "pareto":
            raise ValueError("pruner 'pareto' needs optimize: pareto")
        if self.pruner.args:
            from search.config.optuna_args import PRUNERS, checked_args

            if self.pruner_name not in PRUNERS:
                raise FieldError(f"pruner '{self.pruner_name}' takes no arguments", loc=("pruner", "args"),
                                 fix="remove pruner.args (the baseline and pareto pruners take pruner.margin)")
            try:
                checked_args(PRUNERS[self.pruner_name], self.pruner.args, what=f"pruner '{self.pruner_name}'")
            except FieldError as exc:
                raise FieldError(str(exc), loc=("pruner", *exc.loc), fix=exc.fix) from None
        return self

    def statistics_kinds(self) -> tuple[str, ...]:
        """The per-parent statistics the searched methods read (``fisher``, ``gram``), sorted; () when none."""
        from search.merging.spec import lookup_method

        return tuple(sorted({k for k in (lookup_method(m).statistics for m in self.methods) if k is not None}))

    def _check_calibration(self) -> None:
        from search.merging.spec import lookup_method

        for method_name in self.methods:
            needs = lookup_method(method_name).statistics
            if needs is not None and self.calibration is None:
                raise FieldError(f"'{method_name}' merges by statistics of calibration data, and the space names "
                                 "none", loc=("methods", method_name),
                                 fix="add e.g. `calibration: {task: <an objective's lm-eval task>, documents: 64}` "
                                     "or `calibration: {jsonl: texts.jsonl, field: text}`")
        if self.calibration is None or self.calibration.task is None:
            return
        tasks = [t for o in self.objectives if o.evaluator.get("type") == "lm_eval"
                 for t in ([o.evaluator.get("task")] if isinstance(o.evaluator.get("task"), str)
                           else list(o.evaluator.get("task") or []))]
        if self.calibration.task not in tasks:
            close = difflib.get_close_matches(self.calibration.task, tasks, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise FieldError(f"'{self.calibration.task}' is not a task of an lm_eval objective (the calibration "
                             "reads a task's search documents)", loc=("calibration", "task"),
                             fix=f"{hint}name one of: {', '.join(tasks)}" if tasks else
                             "add an lm_eval objective with that task, or use calibration: {jsonl: FILE}")

    @property
    def mode(self) -> Literal["weighted", "pareto"]:
        if self.optimize is not None:
            return self.optimize
        if len(self.objectives) == 1 or self.sampler.name in ("cmaes", "gp", "qmc"):
            return "weighted"
        return "pareto"

    def signed_weights(self) -> dict[str, float]:
        """Objective -> its factor in the weighted view: its weight, negated for a minimised objective when the
        directions mix (the weighted sum is then maximised).

        >>> Space.model_construct(objectives=[Objective(name="a", evaluator={}, metric="m", weight=2.0)]
        ...                       ).signed_weights()
        {'a': 2.0}
        """
        dirs = {o.direction for o in self.objectives}
        return {o.name: (-o.weight if len(dirs) > 1 and o.direction == "minimize" else o.weight)
                for o in self.objectives}

    def weighted(self, scores: dict[str, float]) -> float:
        """The weighted view of a score per objective (see :meth:`signed_weights`)."""
        return sum(w * scores[name] for name, w in self.signed_weights().items())

    @property
    def pruner_name(self) -> str:
        """The pruner in use: the one named, else median (weighted) or pareto (multi-objective)."""
        if self.pruner.name is not None:
            return self.pruner.name
        return "pareto" if self.mode == "pareto" else "median"

    @property
    def relaxed(self) -> bool:
        """Samplers without categoricals (CMA-ES, GP, QMC) see the method choice as a continuous index."""
        return self.sampler.name in ("cmaes", "gp", "qmc")


class LoadedSpace(BaseModel):
    """A validated space with the file it came from and its paths made absolute."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    space: Space
    file: Path
    base_model: Path  # without a base in the space: the first model, a reference the deltas are taken from
    models: dict[str, Path]
    output: Path

    def with_ray(self, address: str) -> LoadedSpace:
        """The same space run on the Ray cluster at ``address`` (``auto`` or ``ray://host:port``)."""
        space = self.space.model_copy(update={"backend": "ray", "ray_address": address})
        return self.model_copy(update={"space": space})

    def fingerprint(self) -> str:
        """A hash of what determines the study (not the budget, output or backend, which may change on resume)."""
        return hashlib.sha256(json.dumps(study_defining(self.space), sort_keys=True).encode()).hexdigest()[:16]


def study_defining(space: Space) -> dict[str, Any]:
    data = space.model_dump(mode="json")
    # refine runs after the study: adding it to a finished run's space must not refuse the run folder
    for key in ("budget", "output", "backend", "ray_address", "resources", "storage", "device", "placement",
                "refine"):
        data.pop(key, None)
    return data


def load_space(path: str | Path, *, output: str | Path | None = None) -> LoadedSpace:
    """Read and validate a space file; resolve and check its paths (relative to the file)."""
    path = Path(path)
    space = load_model(Space, path, what="space file")
    root = path.resolve().parent

    def resolve(value: str, field: str, must_exist: bool = True) -> Path:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (root / p).resolve()
        if must_exist and not p.exists():
            raise located(UserError(f"path '{value}' does not exist (resolved to {p})", file=path, field=field,
                                    fix="give a local Hugging Face model folder, relative to the space file"))
        if not must_exist:
            return p
        try:  # a GGUF parent is read from its dequantized, cached HF folder (converted once)
            return model_folder(p, dtype=space.dtype, file=path, field=field)
        except UserError as exc:
            raise located(exc) from None

    models = {name: resolve(p, f"models.{name}") for name, p in space.models.items()}
    out = Path(output) if output is not None else resolve(space.output, "output", must_exist=False)
    base = resolve(space.base_model, "base_model") if space.base_model is not None else next(iter(models.values()))
    if space.calibration is not None and space.calibration.jsonl is not None:
        from search.config.calibration_file import check_jsonl

        try:
            check_jsonl(space.calibration, path)
        except UserError as exc:
            raise located(exc) from None
    return LoadedSpace(space=space, file=path, base_model=base, models=models, output=out)
