"""Evaluator configuration: pydantic models (a union discriminated on ``type``), their validation into
``UserError``s that name the field, and :class:`SpecContext` (where a spec came from).

The implementations (``lm_eval.py``, ``perplexity.py``, ``python_fn.py``) import their spec from here; the
registry (``registry.py``) imports the implementations and builds them: dependencies point one way.

>>> spec = parse_evaluator_spec({"type": "perplexity", "data": "text.jsonl"})
>>> spec.type
'perplexity'
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from search.errors import UserError


class RoleFractions(BaseModel):
    """Each role's share of a data set that several roles read, split by content hash.

    Roles that read the same documents (local data; a task with one split; ``search`` and ``select`` on a task's
    validation split) divide them in proportion to their fractions among themselves: with the defaults, a single
    file is split 50/25/25 and a validation split 2:1 between search and select. ``test: 0`` means no test role.

    >>> RoleFractions().model_dump()
    {'search': 0.5, 'select': 0.25, 'test': 0.25}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    search: float = Field(0.5, gt=0.0, description="Share scored during the search.")
    select: float = Field(0.25, gt=0.0, description="Share the finalists are re-scored on and the winner picked on.")
    test: float = Field(0.25, ge=0.0, description="Share scored once at the end, for the report (0: no test role).")

    def among(self, roles: Any) -> dict[str, float]:
        """The fractions of ``roles`` only (those sharing one data set), roles with a zero share left out."""
        return {r: getattr(self, r) for r in roles if getattr(self, r) > 0}


class _SpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(
        None, description="How results name this evaluator; default: the task / data file / function name."
    )
    fractions: RoleFractions = Field(
        default_factory=RoleFractions,
        description="Shares of search / select / test where roles split one data set by content hash.",
    )
    legacy_two_roles: bool = Field(
        False, description="Set when a run folder from before the three roles is read (never needed in a space "
        "file): select reads what was then the held-out split, and there is no test role.",
    )

    @property
    def has_test(self) -> bool:
        """Whether this evaluator has a test role (not for old run folders, ``test: 0`` or ``test: null``)."""
        return _has_test(self)


def _has_test(spec: Any) -> bool:
    if spec.legacy_two_roles or spec.fractions.test == 0:
        return False
    split_map = getattr(spec, "split_map", None)
    return split_map is None or split_map.test is not None


class SplitMap(BaseModel):
    """Which of the task's own splits each of our roles reads.

    Roles naming the same task split partition it by content hash (``fractions``); ``test: null`` means no test
    role (the report then has no test figures).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    search: str = Field(description="The task's split scored during the search, e.g. 'validation'.")
    select: str = Field(description="The task's split the winner is picked on, e.g. 'validation'.")
    test: str | None = Field(description="The task's split scored once at the end, e.g. 'test' (null: none).")


class LmEvalSpec(_SpecBase):
    """Score with lm-evaluation-harness tasks, in-process on the live model."""

    type: Literal["lm_eval"]
    task: str | list[str] = Field(description="A task, group or tag name, or a list of them.")
    include_path: str | list[str] | None = Field(
        None, description="Folder(s) of local task YAML files; lm-eval's built-in tasks load only when needed."
    )
    metric: str | None = Field(
        None, description="Report only this metric (e.g. 'exact_match' or 'exact_match,strict-match')."
    )
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples per prompt; default: the task's.")
    fewshot_seed: int = Field(1234, description="Seed of the few-shot sampler, reset before every call.")
    batch_size: int | Literal["auto"] = Field(8, description="Requests per forward pass / generate call.")
    max_length: int | None = Field(None, ge=1, description="Context length; default: the model config's.")
    split_map: SplitMap | None = Field(
        None,
        description="Our role -> the task's split. Default: search and select partition the validation split "
        "and test is the test split, when the task has both; else its one evaluation split partitioned three ways.",
    )
    gen_kwargs: dict[str, Any] | None = Field(
        None, description="Merged into generative tasks' generation_kwargs (max_gen_toks, until, ...)."
    )

    @field_validator("task")
    @classmethod
    def _task_not_empty(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or any(not n.strip() for n in names):
            raise ValueError("name at least one task, with no empty names")
        return value

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size must be at least 1 (or 'auto')")
        return value

    @property
    def task_names(self) -> list[str]:
        return [self.task] if isinstance(self.task, str) else list(self.task)


class PerplexitySpec(_SpecBase):
    """Token-level perplexity of local text: ``.jsonl`` (one document per line) or text (blank-line paragraphs)."""

    type: Literal["perplexity"]
    data: str | list[str] = Field(description="Text or jsonl file(s).")
    field: str = Field("text", description="The jsonl field holding a document's text.")
    max_length: int = Field(512, ge=2, description="Tokens per forward window.")
    stride: int | None = Field(
        None, ge=1, description="New tokens scored per window of a long document (< max_length); "
        "default max_length // 2, so each scored token sees at least half a window of context.",
    )
    batch_size: int = Field(8, ge=1, description="Windows per forward pass.")
    add_bos: bool = Field(True, description="Prepend the tokenizer's BOS token, so the first token is scored.")


class PythonSpec(_SpecBase):
    """Call a user function ``function(model, tokenizer, docs) -> dict[str, float]`` on jsonl documents."""

    type: Literal["python"]
    function: str = Field(description="'package.module:function' (importable) or 'path/to/file.py:function'.")
    data: str = Field(description="A jsonl file, one document (any JSON value) per line.")


EvaluatorSpec = Annotated[Union[LmEvalSpec, PerplexitySpec, PythonSpec], Field(discriminator="type")]
EVALUATOR_TYPES: tuple[str, ...] = ("lm_eval", "perplexity", "python")

_ADAPTER: TypeAdapter[Any] = TypeAdapter(EvaluatorSpec)


def parse_evaluator_spec(data: Mapping[str, Any] | BaseModel, *, file: str | Path | None = None,
                         field: str = "evaluator") -> LmEvalSpec | PerplexitySpec | PythonSpec:
    """Validate plain data into a spec; a problem raises UserError naming ``field.<sub-field>`` and the fix."""
    if isinstance(data, (LmEvalSpec, PerplexitySpec, PythonSpec)):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise _user_error(exc, data, file=file, field=field) from None


def _user_error(exc: ValidationError, data: Any, *, file: str | Path | None, field: str) -> UserError:
    errors = exc.errors()
    # A misspelt field shows as both "extra" and "missing": report the misspelling, which says more.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind = err["type"]
    loc = [str(p) for p in err["loc"]]
    if loc and loc[0] in EVALUATOR_TYPES:  # pydantic puts the union's tag first
        loc = loc[1:]
    where = ".".join([field, *loc])
    if kind in ("union_tag_not_found", "union_tag_invalid", "model_attributes_type", "dict_type"):
        got = data.get("type") if isinstance(data, Mapping) else type(data).__name__
        return UserError(f"unknown evaluator type {got!r}", file=file, field=f"{field}.type",
                         fix=f"set type to one of: {', '.join(EVALUATOR_TYPES)}")
    if kind == "extra_forbidden":
        spec_cls = {"lm_eval": LmEvalSpec, "perplexity": PerplexitySpec, "python": PythonSpec}[data["type"]]
        known = sorted(spec_cls.model_fields)
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return UserError(f"is not a field of a {data['type']} evaluator", file=file, field=where,
                         fix=f"{hint}the fields are: {', '.join(known)}")
    if kind == "missing":
        return UserError("is required", file=file, field=where, fix="add it (see evaluators/README.md)")
    return UserError(f"{err['msg']} (got {err.get('input')!r})", file=file, field=where,
                     fix="see evaluators/README.md for what this field takes")


class SpecContext:
    """Where a spec came from: resolves its relative paths and builds UserErrors that name its fields."""

    def __init__(self, *, file: str | Path | None, field: str, base_dir: Path) -> None:
        self.file = file
        self.field = field
        self.base_dir = base_dir

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def error(self, sub_field: str, message: str, fix: str) -> UserError:
        return UserError(message, file=self.file, field=f"{self.field}.{sub_field}", fix=fix)

    def existing_file(self, sub_field: str, value: str) -> Path:
        p = self.path(value)
        if not p.is_file():
            raise self.error(sub_field, f"file {str(p)!r} does not exist",
                             "give the path of an existing file (relative paths start at the space file's folder)")
        return p

