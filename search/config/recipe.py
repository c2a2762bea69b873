"""A mergekit merge recipe (YAML), validated, as ``search merge`` reads it.

Existing mergekit configs for the methods we share run unchanged:

```yaml
merge_method: ties
base_model: models/base
models:
  - model: models/code
    parameters: {weight: 1.0, density: [0.2, 0.8]}    # a gradient along the layers
  - model: models/chat
    parameters:
      weight: [{filter: self_attn, value: 0.3}, {value: 0.7}]
parameters: {normalize: true}
dtype: float32
tokenizer_source: base
```

A model (or the base) may be a LoRA adapter applied to a model, written as mergekit writes it:
``models/base+adapters/code`` (or ``{model: models/base, lora: adapters/code}``); an adapter folder alone is applied
to ``base_model``. Beyond mergekit: a condition may match a module kind (``{kind: mlp, value: 0.5}``), and ``seed`` makes the random
methods (dare, della) reproducible. Frankenmerges (``slices``/``modules``) and ``tokenizer_source: union`` are not
supported: they change the architecture or the vocabulary, which a weight search does not.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.config.yaml_io import load_model
from search.errors import UserError
from search.merging.coefficients import Setting
from search.merging.spec import IgnoredParameterWarning, MergeSpec
from search.methods import METHODS
from search.weights.gguf import model_folder
from search.weights.sources import ParentRef, parse_reference

DTypeName = Literal["float32", "float16", "bfloat16", "float64"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
}


class RecipeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    parameters: dict[str, Setting] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        return reference_text(value)


class Recipe(BaseModel):
    """mergekit's ``MergeConfiguration`` for ``models``-style merges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    merge_method: str
    base_model: str | None = None
    models: list[RecipeModel] = Field(min_length=1)
    parameters: dict[str, Setting] | None = None
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    tokenizer_source: Literal["base"] | str | None = None
    chat_template: str | None = None
    seed: int | None = None

    @field_validator("base_model", mode="before")
    @classmethod
    def _base_reference(cls, value: Any) -> Any:
        return None if value is None else reference_text(value)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("slices", "modules"):
                if key in data:
                    raise ValueError(f"'{key}' (frankenmerges) is not supported: merge-search merges models of one "
                                     "architecture tensor by tensor; use 'models:'")
            if "tokenizer" in data:
                raise ValueError("'tokenizer' (vocabulary surgery) is not supported; use 'tokenizer_source: base'")
            if data.get("tokenizer_source") == "union":
                raise ValueError("tokenizer_source 'union' is not supported: the parents must share one tokenizer; "
                                 "use 'tokenizer_source: base'")
        return data

    def spec(self) -> MergeSpec:
        """The method and settings, with the base's position in ``models`` when it is listed there.

        As in mergekit, an unlisted ``base_model`` is one more input: methods that ignore the base (linear,
        karcher, passthrough) merge it as a model, after the listed ones. Parameters the method does not take
        are left out (mergekit ignores them; :meth:`ignored_parameters` names them).
        """
        base_index = next((i for i, m in enumerate(self.models) if m.model == self.base_model), None)
        model_parameters = [dict(m.parameters or {}) for m in self.models]
        method = METHODS.get(self.merge_method)
        appended = (self.base_model is not None and base_index is None and method is not None
                    and method.takes_base and not method.excludes_base)
        if appended:
            model_parameters.append({})
            base_index = len(model_parameters) - 1
        return MergeSpec(
            method=self.merge_method,
            parameters=dict(self.parameters or {}),
            model_parameters=tuple(model_parameters),
            base_index=base_index,
            seed=self.seed,
            has_base=self.base_model is not None,
            base_appended=appended,
        ).without_ignored()

    def ignored_parameters(self) -> list[str]:
        """The fields of parameters mergekit would silently ignore for this method (see MergeSpec)."""
        spec = MergeSpec(method=self.merge_method, parameters=dict(self.parameters or {}),
                         model_parameters=tuple(dict(m.parameters or {}) for m in self.models))
        return spec.ignored_parameters()

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return DTYPES[self.dtype] if self.dtype else None

    @property
    def output_dtype(self) -> torch.dtype | None:
        name = self.out_dtype or self.dtype
        return DTYPES[name] if name else None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; any problem is a UserError naming file, line, field and fix.

    Parameters the method does not take (but another does) are ignored with an :class:`IgnoredParameterWarning`,
    as mergekit ignores them silently.
    """
    path = Path(path)
    recipe = load_model(Recipe, path, what="recipe")
    ignored = recipe.ignored_parameters()
    if ignored:
        warnings.warn(IgnoredParameterWarning(
            f"{path}: merge method '{recipe.merge_method}' does not take {', '.join(ignored)}; ignored, as mergekit "
            "ignores them"), stacklevel=2)
    recipe.spec().check(file=str(path))
    return recipe


def reference_text(value: Any) -> Any:
    """mergekit's model reference as one string: ``MODEL`` or ``MODEL+ADAPTER`` (its mapping form
    ``{model: ..., lora: ...}``, each a path or ``{path: ...}``, is folded into that). Revisions are refused:
    nothing is fetched from a hub."""
    def path_of(part: Any, where: str) -> str:
        if isinstance(part, dict):
            if set(part) - {"path"} or "path" not in part:
                raise ValueError(f"{where}: only {{path: ...}} is supported (revisions and hub fetching are not)")
            part = part["path"]
        if not isinstance(part, str):
            raise ValueError(f"{where} must be a path")
        if "@" in part and not Path(part).exists():
            raise ValueError(f"'{part}': revisions are not supported; give a local folder")
        return part

    if isinstance(value, dict):
        unknown = set(value) - {"model", "lora"}
        if unknown or "model" not in value:
            raise ValueError(f"a model reference takes 'model' and 'lora', got {sorted(value)}")
        model = path_of(value["model"], "model")
        return model if value.get("lora") is None else f"{model}+{path_of(value['lora'], 'lora')}"
    if isinstance(value, str):
        for part in value.split("+", 1):
            path_of(part, "model")
    return value


def resolve_reference(reference: str, recipe_file: Path, *, field: str, dtype: str | None = None) -> ParentRef:
    """A model reference (``MODEL``, an adapter folder, or ``MODEL+ADAPTER``) with each part found on disk; a
    GGUF model is replaced by its dequantized, cached HF folder (in ``dtype``)."""
    given = Path(reference).expanduser()
    if "+" in reference and not given.exists() and not (recipe_file.parent / given).exists():
        model, _, adapter = reference.partition("+")
        ref = ParentRef(model=resolve_model_path(model, recipe_file, field=field),
                        adapter=resolve_model_path(adapter, recipe_file, field=field))
    else:
        ref = parse_reference(resolve_model_path(reference, recipe_file, field=field))
    if ref.model is None:
        return ref
    return ParentRef(model=model_folder(ref.model, dtype=dtype, file=recipe_file, field=field), adapter=ref.adapter)


def resolve_model_path(reference: str, recipe_file: Path, *, field: str) -> Path:
    """A model reference as a local folder: as given (from the working directory), else beside the recipe."""
    given = Path(reference).expanduser()
    if given.exists():
        return given
    beside = recipe_file.parent / given
    if not given.is_absolute() and beside.exists():
        return beside
    raise UserError(f"model path '{reference}' does not exist (looked in the working directory and beside "
                    f"the recipe)", file=recipe_file, field=field,
                    fix="give the path of a local Hugging Face model folder (nothing is fetched from a hub)")
