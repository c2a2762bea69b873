"""``search merge RECIPE OUT_DIR``: merge a recipe once, streaming tensor by tensor, into an HF folder.

Only one tensor of each parent is in memory at a time (read lazily with ``safe_open``), so several 7B parents merge
on a CPU machine with a few GB free. The method math is the same as the search's in-memory merges.

>>> merge_recipe("recipe.yaml", "out/merged")   # doctest: +SKIP
PosixPath('out/merged')
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from search.config.recipe import Recipe, load_recipe, resolve_model_path, resolve_reference
from search.errors import UserError
from search.merging.spec import MergeSpec
from search.weights.checks import CheckedParents, check_parents
from search.weights.deltas import TensorDeltas, merge_tensor
from search.weights.layout import ModelLayout
from search.weights.sources import base_value, delta_parts
from search.weights.writer import DEFAULT_SHARD_BYTES, ModelFolderWriter, check_destination


def merge_recipe(recipe_path: str | Path, out_dir: str | Path, *, allow_pickle: bool = False,
                 overwrite: bool = False, trust_remote_code: bool = False,
                 max_shard_bytes: int = DEFAULT_SHARD_BYTES, device: str = "cpu", progress: bool = True) -> Path:
    """Validate everything first (recipe, paths, parents, destination), then merge and write atomically."""
    recipe_path = Path(recipe_path)
    out_dir = Path(out_dir)
    recipe = load_recipe(recipe_path)
    spec = recipe.spec()
    method = spec.merge_method
    if method.needs_base and recipe.base_model is None:
        raise UserError(f"merge method '{method.name}' needs a base model", file=recipe_path, field="base_model",
                        fix="add 'base_model: <path of the model the others were fine-tuned from>'")
    if not method.takes_base and recipe.base_model is not None:
        raise UserError(f"merge method '{method.name}' takes no base model: it averages the listed checkpoints",
                        file=recipe_path, field="base_model",
                        fix="remove 'base_model' and list the checkpoints under 'models', oldest first")
    if method.statistics is not None:
        raise UserError(f"merge method '{method.name}' reads statistics of calibration data, which a one-shot merge "
                        "does not compute", file=recipe_path, field="merge_method",
                        fix=f"search it in a space with a `calibration:` source (methods: {{{method.name}: {{}}}}), "
                            "then `search export` the run")
    check_destination(out_dir, overwrite=overwrite)
    parents = _check(recipe, recipe_path, allow_pickle)
    try:
        layout = load_layout(parents.paths[0], trust_remote_code=trust_remote_code, source=str(recipe_path))
        with ModelFolderWriter(out_dir, source=_tokenizer_source(recipe, recipe_path, parents),
                               max_shard_bytes=max_shard_bytes, dtype=recipe.output_dtype,
                               overwrite=overwrite) as writer:
            _merge_tensors(spec, recipe, parents, layout, writer, device=device, progress=progress)
            return writer.finish(card=model_card(recipe, parents),
                                 extra_files={"mergekit_config.yml": recipe_path.read_text()})
    finally:
        parents.close()


def _check(recipe: Recipe, recipe_path: Path, allow_pickle: bool) -> CheckedParents:
    listed = []
    if recipe.base_model is not None:
        listed.append(("base_model", resolve_reference(recipe.base_model, recipe_path, field="base_model",
                                                       dtype=recipe.dtype)))
    listed += [(f"models[{i}].model", resolve_reference(m.model, recipe_path, field=f"models[{i}].model",
                                                        dtype=recipe.dtype))
               for i, m in enumerate(recipe.models)]
    return check_parents(listed, source=str(recipe_path), allow_pickle=allow_pickle)


def load_layout(path: Path, *, trust_remote_code: bool = False, source: str | None = None) -> ModelLayout:
    """The layout of the architecture in ``path/config.json`` (custom code only with ``trust_remote_code``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"transformers cannot read the config of '{path}' ({exc})", file=source, field="base_model",
                        fix="use a transformers model type, or pass --trust-remote-code if the model "
                            "ships its own code and you trust it") from exc
    return ModelLayout.from_config(config)


def _tokenizer_source(recipe: Recipe, recipe_path: Path, parents: CheckedParents) -> Path:
    source = recipe.tokenizer_source
    if source in (None, "base"):
        return parents.paths[0]
    return resolve_model_path(source, recipe_path, field="tokenizer_source")


def _merge_tensors(spec: MergeSpec, recipe: Recipe, parents: CheckedParents, layout: ModelLayout,
                   writer: ModelFolderWriter, *, device: str, progress: bool) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    method = spec.merge_method
    has_base = recipe.base_model is not None
    reference = parents.parents[0]
    models = parents.parents[1:] if has_base else parents.parents
    if spec.base_appended:  # mergekit merges an unlisted base as one more input, after the listed ones
        models = [*models, reference]
    names = parents.reference.names
    columns = (TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("merge", total=len(names))
        for name in names:
            dense = reference.dense_value(name, reference, dtype=recipe.compute_dtype, device=device)
            if not dense.is_floating_point():
                writer.add(name, dense)
                bar.advance(task)
                continue
            dtype = dense.dtype
            parts = delta_parts(reference, models, name, dense, dtype=dtype, device=device)
            deltas = TensorDeltas.build(dense.shape, parts, dtype=dtype, device=torch.device(device))
            base = base_value(reference, name, dtype=dtype, device=device) if reference.adapter else dense
            params = spec.tensor_params(name, layout)
            merged = merge_tensor(method, base, deltas, params, seed=spec.tensor_seed(name))
            if not torch.isfinite(merged).all():
                raise UserError(f"merging '{name}' gave NaN or inf values", field="parameters",
                                fix="check the weights (a normalize over weights summing to 0?)")
            writer.add(name, merged)
            del deltas, merged, base, dense, parts
            bar.advance(task)


def model_card(recipe: Recipe, parents: CheckedParents) -> str:
    """A README.md naming the parents, the method and the parameters."""
    parent_lines = "\n".join(f"- `{label}`: `{p.ref}`" for label, p in zip(parents.labels, parents.parents))
    params = yaml.safe_dump(recipe.model_dump(exclude_none=True, mode="json"), sort_keys=False)
    return (
        "---\nlibrary_name: transformers\ntags: [merge, merge-search]\n---\n"
        f"# Merged model ({recipe.merge_method})\n\n"
        "Made with merge-search (`search merge`).\n\n"
        f"## Parents\n\n{parent_lines}\n\n"
        f"## Method\n\n`{recipe.merge_method}`\n\n"
        f"## Recipe\n\n```yaml\n{params}```\n"
    )
