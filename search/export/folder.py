"""``search export RUN_DIR --pick N|best|soup|pareto|ITEM``: selected models as ready Hugging Face folders.

Each pick becomes ``OUT/<item id>/`` (safetensors shards, config, tokenizer, a model card with parents,
method, coefficients, search, select and test scores, and the mergekit recipe as ``mergekit_config.yml``) and,
beside it,
``OUT/<item id>.mergekit.yaml``, the same recipe for mergekit. The weights are computed exactly as selection
scored them (:mod:`search.selection.mixture`), from ``selection.json`` and the parents alone: nothing is
re-scored.

>>> export_run(Path("results/demo"), "best")          # doctest: +SKIP
[PosixPath('results/demo/export/greedy-soup')]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from search.errors import UserError
from search.export.mergekit_yaml import ExportRecipe, mixture_recipe
from search.merging.spec import MergeSpec
from search.selection.mixture import mixed_tensors
from search.selection.record import Item, Part, Selection, read_selection, ref_label, trial_ref
from search.weights.adapters import is_adapter
from search.weights.writer import ModelFolderWriter, check_destination

EXPORT_DIR = "export"
PICKS = "a trial number, best, soup, pareto, or an item id from selection.json (e.g. interp-3-7-a0.5)"


def pick_items(selection: Selection, pick: str, run_dir: Path) -> tuple[list[Item], dict[str, MergeSpec]]:
    """The items ``pick`` names and the specs they need (a trial outside the selection: from the study)."""
    specs = dict(selection.specs)
    if pick == "best":
        return [selection.winner_item], specs
    if pick == "soup":
        soups = [it for it in selection.items if it.kind == "greedy_soup"]
        if not soups:  # selection makes soups from the best `soup_size` complete candidates, when 2 or more
            size = selection.options.soup_size
            if size < 2:
                why = f"`search select` ran with --soup-size {size}, and a soup needs at least 2 candidates"
                fix = f"run `search select {run_dir} --soup-size 8`, then export again; or pick {PICKS}"
            else:
                why = "the study had fewer than 2 complete candidates (trials and baselines) to make one from"
                fix = f"let the run finish more trials (`search resume {run_dir}`) and select again; or pick {PICKS}"
            raise UserError(f"this selection has no greedy soup: {why}", field="--pick", fix=fix)
        return soups, specs
    if pick == "pareto":
        return [it for it in selection.items if it.frontier], specs
    if pick.isdigit():
        found = selection.single(trial_ref(int(pick)))
        return [found if found is not None else _trial_item(run_dir, int(pick), specs)], specs
    try:
        return [selection.item(pick)], specs
    except KeyError:
        known = ", ".join(it.id for it in selection.items[:12])
        raise UserError(f"'{pick}' names no selected model", field="--pick",
                        fix=f"pick {PICKS}; selected: {known}") from None


def _trial_item(run_dir: Path, number: int, specs: dict[str, MergeSpec]) -> Item:
    """A complete trial the selection did not keep: its search scores, no select or test ones."""
    from optuna.trial import TrialState

    from search.selection.select import load_study, weighted_value
    from search.study.storage import load_run_space

    space = load_run_space(run_dir)
    trials = load_study(run_dir, space).get_trials(deepcopy=False)
    trial = next((t for t in trials if t.number == number), None)
    if trial is None or trial.state != TrialState.COMPLETE or "spec" not in trial.user_attrs:
        raise UserError(f"trial {number} is not a complete trial of this run", field="--pick",
                        fix="pick a complete trial (`search trials RUN_DIR` lists them) or best/soup/pareto")
    ref = trial_ref(number)
    specs[ref] = MergeSpec.model_validate_json(trial.user_attrs["spec"])
    search = {o.name: float(trial.user_attrs[f"search.{o.name}"]) for o in space.objectives}
    name = trial.user_attrs.get("baseline")
    return Item(id=f"baseline-{name}" if name else f"trial-{number}", kind="baseline" if name else "trial",
                label=f"#{number} {specs[ref].method}", method=specs[ref].method,
                parts=[Part(ref=ref, coefficient=1.0)], baseline=name, search=search,
                search_value=weighted_value(space, search))


def export_run(run_dir: str | Path, pick: str, *, out: str | Path | None = None, overwrite: bool = False,
               device: str = "cpu", as_adapter: bool = False) -> list[Path]:
    """Write the picked models under ``out`` (default ``RUN_DIR/export``); returns their folders.

    ``as_adapter``: a merge of LoRA adapters that is linear in them is written as one PEFT LoRA adapter
    (:mod:`search.export.adapter`) instead of a full model folder.
    """
    from search.merging.oneshot import load_layout
    from search.selection.select import loaded_from_run
    from search.weights.dtypes import storage_dtype_name
    from search.weights.parents import Parents

    run_dir = Path(run_dir)
    selection = read_selection(run_dir)
    items, specs = pick_items(selection, str(pick), run_dir)
    out_root = Path(out) if out is not None else run_dir / EXPORT_DIR
    for item in items:  # refuse before any work
        check_destination(out_root / item.id, overwrite=overwrite, field="--out")
    loaded = loaded_from_run(run_dir)
    space = loaded.space
    models = [str(loaded.models[n]) for n in space.models]
    # mergekit applies an adapter written as BASE+ADAPTER
    mergekit_models = [f"{loaded.base_model}+{m}" if is_adapter(m) else m for m in models]
    layout = load_layout(loaded.base_model, trust_remote_code=space.trust_remote_code)
    dtype_name = storage_dtype_name(space.dtype, loaded.base_model)  # auto: the base's own, as the search ran
    parents = Parents.load(loaded.base_model, models, dtype=getattr(torch, dtype_name), device=device,
                           allow_pickle=space.allow_pickle, trust_remote_code=space.trust_remote_code,
                           labels=[f"models.{n}" for n in space.models],
                           source=str(run_dir / "resolved.json"))
    attach_run_statistics(parents, loaded, dtype_name,
                          {specs[p.ref].method for item in items for p in item.parts})
    written = []
    if as_adapter:
        from search.export.adapter import adapter_plan, write_adapter

        plans = [adapter_plan(parents, [(specs[p.ref], p.coefficient) for p in item.parts]) for item in items]
        for item, plan in zip(items, plans):  # every pick is checked before the first is written
            card = model_card(selection, item, specs, mixture_recipe(
                [(specs[p.ref], p.coefficient) for p in item.parts], base=str(loaded.base_model),
                models=mergekit_models, layout=layout, dtype=space.dtype,
                stage_names=[p.ref.replace(":", "_") for p in item.parts]), loaded, run_dir)
            card = card.replace("library_name: transformers", f"library_name: peft\nbase_model: {loaded.base_model}")
            written.append(write_adapter(plan, out_root / item.id, base=loaded.base_model, card=card,
                                         overwrite=overwrite))
        return written
    for item in items:
        mixture = [(specs[p.ref], p.coefficient) for p in item.parts]
        recipe = mixture_recipe(mixture, base=str(loaded.base_model), models=mergekit_models, layout=layout,
                                dtype=dtype_name, stage_names=[p.ref.replace(":", "_") for p in item.parts])
        folder = out_root / item.id
        text = recipe.yaml_text()
        with ModelFolderWriter(folder, source=loaded.base_model, overwrite=overwrite) as writer:
            for name, tensor in mixed_tensors(parents, mixture):
                writer.add(name, tensor)
            inner = "mergekit_multimerge.yml" if recipe.multistage else "mergekit_config.yml"
            writer.finish(card=model_card(selection, item, specs, recipe, loaded, run_dir),
                          extra_files={inner: text})
        (out_root / f"{item.id}.mergekit.yaml").write_text(text)
        written.append(folder)
    return written


def attach_run_statistics(parents: Any, loaded: Any, dtype: str, methods: set[str]) -> None:
    """A data-aware pick (fisher, regmean) is rebuilt from the statistics its run computed, from the run folder."""
    from search.merging.spec import lookup_method
    from search.statistics.store import load_statistics
    from search.study.trial import statistics_config

    if not any(lookup_method(m).statistics for m in methods):
        return
    for kind, path in statistics_config(loaded, dtype).get("statistics", ()):
        if not Path(path).exists():
            raise UserError(f"the run's {kind} statistics are not in {Path(path).parent} under the key of its "
                            "parents and calibration data as they are now", field="RUN_DIR",
                            fix="export with the parents and calibration file the run used (a changed file "
                                "changes the key), or `search resume` the run to compute them again")
        parents.attach_statistics(load_statistics(Path(path), parents.num_models,
                                                  devices=parents.tensor_devices()))


def _score_table(selection: Selection, item: Item) -> str:
    rows = ["| objective | metric | direction | search | select | test |", "|---|---|---|---|---|---|"]
    for o in selection.objectives:
        s, h, t = item.search.get(o.name), item.select.get(o.name), item.test.get(o.name)
        rows.append(f"| {o.name} | {o.metric} | {o.direction} | {'' if s is None else f'{s:.4f}'} | "
                    f"{'not scored' if h is None else f'{h:.4f}'} | {'not scored' if t is None else f'{t:.4f}'} |")
    return "\n".join(rows)


def _result(selection: Selection, item: Item) -> str:
    """The card's honest figure: the test score with its interval, and the comparison with the best baseline."""
    if item.test_value is None:
        why = selection.no_test or "only the winner, the best baseline, the best trial and the greedy soup are"
        return (f"This model has no test score ({why}). Its select score chose it among others, so it is "
                "optimistic; its search score was optimised directly.\n")
    iv = item.test_interval
    text = (f"**Test score: {item.test_value:.4f}**"
            + (f" (95% CI {iv.low:.4f} to {iv.high:.4f})" if iv is not None else "")
            + ", on documents used neither to search nor to choose.")
    h = selection.headline
    if h is not None and h.winner == item.id and h.winner != h.baseline:
        text += f" Against the best hand-set merge on the same documents, this model is {h.sentence}."
    return text + "\n"


def model_card(selection: Selection, item: Item, specs: dict[str, MergeSpec], recipe: ExportRecipe,
               loaded: Any, run_dir: Path) -> str:
    """README.md: what the model is, where it came from, how it scored, how to rebuild it."""
    space = loaded.space
    base = [f"- base: `{loaded.base_model}`"] if space.base_model is not None else []  # checkpoints: no base
    parents = "\n".join(base + [f"- `{n}`: `{loaded.models[n]}`" for n in space.models])
    ends = [ref_label(r) for r in item.ends] if item.ends else ["?", "?"]
    why = {
        "trial": "a trial of the search" + (" on the search-split frontier" if item.frontier else ""),
        "baseline": f"the hand-set baseline `{item.baseline}`",
        "interpolation": f"a weight-space interpolation between the frontier points {ends[0]} and {ends[1]} "
                         f"at alpha={item.alpha} (rewarded soups)",
        "greedy_soup": "the greedy soup of the best candidates (added while the search score did not drop)",
        "uniform_soup": "the uniform soup of the best candidates",
    }[item.kind]
    winner = (" It is the **winner** of the run (best select score)." if item.id == selection.winner else "")
    ingredients = []
    for p in item.parts:
        spec = specs[p.ref]
        body = yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
        ingredients.append(f"### {ref_label(p.ref)} × {p.coefficient:g}\n\n```yaml\n{body}```")
    select_note = ("" if item.select else "\nThis model was not among the selected ones, so it was not "
                   "scored on the select or test role.\n")
    notes = "\n".join(f"- {n}" for n in recipe.notes) or "- mergekit reproduces these weights."
    command = ("mergekit-multimerge {id}.mergekit.yaml --intermediate-dir stages --out-path {id}-mergekit"
               if recipe.multistage else "mergekit-yaml {id}.mergekit.yaml {id}-mergekit").format(id=item.id)
    weights = " + ".join(f"{p.coefficient:g} × merge({ref_label(p.ref)})" for p in item.parts)
    return (
        "---\nlibrary_name: transformers\ntags: [merge, merge-search]\n---\n"
        f"# {item.label}\n\n"
        f"Made by merge-search from the run `{run_dir}`: {why}.{winner}\n\n"
        f"- kind: `{item.kind}`\n- method: `{item.method}`\n- weights: {weights}\n\n"
        f"## Parents\n\n{parents}\n\n"
        f"## Scores\n\n{_result(selection, item)}\n{_score_table(selection, item)}\n{select_note}\n"
        "Search scores are what the search optimised; select scores are on documents the search never saw, "
        "used to choose the winner; test scores are on documents used for neither, scored once.\n\n"
        f"## Coefficients\n\n" + "\n\n".join(ingredients) + "\n\n"
        f"## Rebuild with mergekit\n\n```sh\n{command}\n```\n\n{notes}\n"
    )
