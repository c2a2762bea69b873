"""`search merge` reproduces mergekit 0.1.5's newer methods from the same YAML, on real tiny models.

Recipes use gradients and filters; each also runs through mergekit's own ``run_merge``. Also here: mergekit's
input rules (an unlisted base is one more model for methods that ignore the base), parameters mergekit ignores
(a warning, the recipe runs), wrong model counts (exit 2, nothing written) and checkpoint averaging.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny import load_state, make_family, snapshot

from search.cli import main

GRADIENT = [0.2, 0.9, 0.5]
FILTERED = [{"filter": "self_attn", "value": 0.6}, {"value": [1.0, 0.4]}]

# models: which fine-tunes (indices), each with its parameters; base: name the base_model; list_base: also list it.
RECIPES: dict[str, dict] = {
    "nuslerp": {"models": [{"weight": GRADIENT}, {"weight": FILTERED}]},
    "nuslerp_rows": {"merge_method": "nuslerp", "models": [{"weight": 0.3}, {"weight": [0.9, 0.1]}],
                     "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
    "nuslerp_no_base": {"merge_method": "nuslerp", "models": [{"weight": FILTERED}, {"weight": 0.5}], "base": False},
    "multislerp": {"models": [{"weight": GRADIENT}, {"weight": 0.5}, {"weight": FILTERED}]},
    "multislerp_no_base": {"merge_method": "multislerp", "models": [{"weight": 1.0}, {"weight": GRADIENT}],
                           "parameters": {"normalize_weights": True}, "base": False},
    "karcher": {"models": [{}, {}, {}], "base": False},
    "karcher_with_base": {"merge_method": "karcher", "models": [{}, {}], "parameters": {"max_iter": 20}},
    "sce": {"models": [{}, {}, {}], "parameters": {"select_topk": GRADIENT}},
    "sce_filtered": {"merge_method": "sce", "models": [{}, {}],
                     "parameters": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": 1.0}]}},
    "ram": {"models": [{}, {}, {}], "parameters": {"epsilon": [{"filter": "self_attn", "value": 0.05},
                                                               {"value": 0.02}]}},
    "ramplus_tl": {"models": [{}, {}, {}], "parameters": {"r": GRADIENT, "alpha": FILTERED, "epsilon": 0.03}},
    "nearswap": {"models": [{}], "parameters": {"t": [{"filter": "mlp", "value": [0.01, 0.1]}, {"value": 0.05}]}},
    "nearswap_listed_base": {"merge_method": "nearswap", "models": [{}], "parameters": {"t": 0.04},
                             "list_base": True},
    "arcee_fusion": {"models": [{}]},
    "passthrough": {"models": [{"scale": [{"filter": "mlp", "value": GRADIENT}, {"value": 1.0}]}], "base": False},
    # mergekit adds an unlisted base_model to linear's inputs, with the top-level weight
    "linear_unlisted_base": {"merge_method": "linear", "models": [{"weight": 1.0}, {"weight": GRADIENT}],
                             "parameters": {"weight": 0.5}},
    "linear_listed_base": {"merge_method": "linear", "models": [{"weight": 1.0}, {"weight": 0.2}],
                           "list_base": True, "base_parameters": {"weight": 0.7}},
}


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("mk015"), 3, sharded=True, scale=0.05)


def build_recipe(case: str, base: Path, fts: list[Path]) -> dict:
    spec = RECIPES[case]
    models = [{"model": str(fts[i]), **({"parameters": p} if p else {})} for i, p in enumerate(spec["models"])]
    recipe: dict = {"merge_method": spec.get("merge_method", case)}
    if spec.get("base", True):
        recipe["base_model"] = str(base)
    if spec.get("list_base"):
        entry: dict = {"model": str(base)}
        if spec.get("base_parameters"):
            entry["parameters"] = spec["base_parameters"]
        models = [entry] + models
    recipe["models"] = models
    if "parameters" in spec:
        recipe["parameters"] = spec["parameters"]
    recipe["dtype"] = "float32"
    return recipe


def run_mergekit(recipe: dict, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate(recipe)
    run_merge(config, str(out), options=MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False))


def run(argv: list[str]) -> int:
    """The exit code of ``search ARGV``."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RECIPES))
def test_same_tensors_as_mergekit(case: str, parents: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, fts = parents
    recipe = build_recipe(case, base, fts)
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "ours")]) == 0
    run_mergekit(recipe, tmp_path / "theirs")
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    assert worst <= 1e-5, f"{case}: max abs difference {worst}"
    base_state = load_state(base)
    assert max((ours[n] - base_state[n]).abs().max().item() for n in ours) > 1e-3, "not trivially the base"


def test_unlisted_base_without_a_weight_is_refused_like_mergekit(
    parents: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = parents
    recipe = {"merge_method": "linear", "base_model": str(base),
              "models": [{"model": str(f), "parameters": {"weight": 1.0}} for f in fts[:2]], "dtype": "float32"}
    with pytest.raises(RuntimeError, match="Missing required parameter weight"):
        run_mergekit(recipe, tmp_path / "theirs")
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "ours")]) == 2
    err = capsys.readouterr().err
    assert "parameters.weight" in err and "one more model" in err and "remove 'base_model'" in err
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize(("method", "listed", "params", "says"), [
    ("nuslerp", 3, {"weight": 0.5}, ["exactly 2 models besides the base, got 3", "multislerp"]),
    ("nearswap", 2, {}, ["merges exactly 1 model besides the base, got 2", "list exactly 1 model besides"]),
    ("arcee_fusion", 2, {}, ["merges exactly 1 model besides the base, got 2", "list exactly 1 model besides"]),
])
def test_wrong_model_counts_exit_2_with_the_fix(
    method: str, listed: int, params: dict, says: list[str], parents: tuple[Path, list[Path]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, fts = parents
    recipe = {"merge_method": method, "base_model": str(base),
              "models": [{"model": str(f), **({"parameters": params} if params else {})} for f in fts[:listed]],
              "parameters": {"t": 0.01} if method == "nearswap" else {}}
    before = snapshot(tmp_path)
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "field 'models'" in err and "Fix:" in err
    for text in says:
        assert text in err, (text, err)
    assert snapshot(tmp_path) - before <= {("recipe.yaml", (tmp_path / "recipe.yaml").stat().st_size)}
    assert not (tmp_path / "out").exists()


def test_passthrough_with_an_unlisted_base_is_refused(
    parents: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = parents
    recipe = {"merge_method": "passthrough", "base_model": str(base), "models": [{"model": str(fts[0])}]}
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "exactly 1 model, got 2" in err and "remove 'base_model'" in err


@pytest.mark.slow
def test_parameters_mergekit_ignores_run_with_a_warning(
    parents: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """karcher and sce take no weights: mergekit ignores them silently; we run the recipe and say so."""
    base, fts = parents
    recipe = {"merge_method": "sce", "base_model": str(base),
              "models": [{"model": str(fts[0]), "parameters": {"weight": 0.3}},
                         {"model": str(fts[1]), "parameters": {"weight": 1.0, "density": 0.5}}],
              "parameters": {"select_topk": 0.5, "normalize": True}, "dtype": "float32"}
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "ours")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err
    for field in ("parameters.normalize", "models[0].parameters.weight", "models[1].parameters.weight",
                  "models[1].parameters.density"):
        assert field in err, field
    assert "select_topk" not in err
    run_mergekit(recipe, tmp_path / "theirs")
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert max((ours[n] - theirs[n]).abs().max().item() for n in ours) <= 1e-5


def test_a_misspelt_parameter_is_still_refused(
    parents: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, fts = parents
    recipe = {"merge_method": "sce", "base_model": str(base), "models": [{"model": str(fts[0])}],
              "parameters": {"select_top_k": 0.5}}
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "out")]) == 2
    assert "select_topk" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- checkpoint averaging
@pytest.mark.parametrize(("method", "params", "weights"), [
    ("checkpoint_average", {}, [1 / 3, 1 / 3, 1 / 3]),
    ("checkpoint_ema", {"decay": 0.6}, [0.36, 0.4 * 0.6, 0.4]),
    ("lawa", {"k": 2}, [0.0, 0.5, 0.5]),
])
def test_checkpoint_averaging_without_a_base(
    method: str, params: dict, weights: list[float], parents: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, checkpoints = parents  # three "checkpoints" of one run, oldest first
    recipe = {"merge_method": method, "models": [{"model": str(c)} for c in checkpoints], "dtype": "float32"}
    if params:
        recipe["parameters"] = params
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "out")]) == 0
    merged = load_state(tmp_path / "out")
    states = [load_state(c) for c in checkpoints]
    assert abs(sum(weights) - 1) < 1e-12
    for name, value in merged.items():
        expected = sum(w * s[name] for w, s in zip(weights, states))
        assert torch.allclose(value, expected, atol=1e-6), name
    assert max((merged[n] - states[-1][n]).abs().max().item() for n in merged) > 1e-3


@pytest.mark.parametrize(("recipe_extra", "field", "text"), [
    ({"merge_method": "lawa", "parameters": {"k": 4}}, "parameters.k", "only 3 are listed"),
    ({"merge_method": "checkpoint_ema"}, "parameters.decay", "needs 'decay'"),
    ({"merge_method": "checkpoint_average", "base_model": "BASE"}, "base_model", "takes no base model"),
])
def test_checkpoint_averaging_refusals(
    recipe_extra: dict, field: str, text: str, parents: tuple[Path, list[Path]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, checkpoints = parents
    recipe = {"models": [{"model": str(c)} for c in checkpoints], **recipe_extra}
    if recipe.get("base_model") == "BASE":
        recipe["base_model"] = str(base)
    assert run(["merge", str(write(tmp_path, recipe)), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"field '{field}'" in err and text in err and "Fix:" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- a search candidate, rebuilt by mergekit
PER_LAYER = [0.2, 0.7, 0.4, 0.9]  # one value per decoder layer (the tiny models have 4), as a space's per_layer
SEARCH_CANDIDATES = {
    "nuslerp": ({"nuslerp_flatten": False}, [{"weight": PER_LAYER}, {"weight": 0.6}]),
    "multislerp": ({}, [{"weight": PER_LAYER}, {"weight": [{"kind": "mlp", "value": 0.3}, {"value": 0.8}]}]),
    "sce": ({"select_topk": PER_LAYER}, [{}, {}]),
    "ramplus_tl": ({"r": PER_LAYER, "alpha": 0.5, "epsilon": 0.02}, [{}, {}]),
    "karcher": ({}, [{}, {}]),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SEARCH_CANDIDATES))
def test_a_search_candidate_is_rebuilt_by_mergekit_from_its_exported_recipe(
    method: str, parents: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """What the search merges in memory (Parents, with module-kind conditions) is what mergekit builds from the
    exported YAML: the coefficients searched for these methods mean the same thing in both tools."""
    from search.export.mergekit_yaml import spec_recipe
    from search.weights.layout import load_layout
    from search.merging.spec import MergeSpec
    from search.weights.parents import Parents

    base, fts = parents
    shared, per_model = SEARCH_CANDIDATES[method]
    spec = MergeSpec(method=method, parameters=shared, model_parameters=tuple(per_model))
    spec.check()
    layout = load_layout(base)
    ours = Parents.load(base, fts[:2], dtype=torch.float32).merged_state(spec)
    recipe = spec_recipe(spec, base=str(base), models=[str(f) for f in fts[:2]], layout=layout)
    assert ("base_model" in recipe) == (method != "karcher")  # karcher of a space averages the fine-tunes only
    run_mergekit(recipe, tmp_path / "theirs")
    theirs = load_state(tmp_path / "theirs")
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in theirs)
    assert worst <= 1e-5, f"{method}: max abs difference {worst}"


CHECKPOINT_CANDIDATES = {
    "checkpoint_average": {},
    "checkpoint_ema": {"decay": [{"kind": "attention", "value": PER_LAYER}, {"value": 0.5}]},
    "lawa": {"k": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CHECKPOINT_CANDIDATES))
def test_a_checkpoint_average_exports_as_the_equal_mergekit_linear_recipe(
    method: str, parents: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """mergekit has no checkpoint methods: the exported YAML is its linear merge with the same weights, and
    mergekit builds from it the model the (baseless) search merged."""
    from search.export.mergekit_yaml import spec_notes, spec_recipe
    from search.weights.layout import load_layout
    from search.merging.spec import MergeSpec
    from search.weights.parents import Parents

    _, checkpoints = parents
    spec = MergeSpec(method=method, parameters=CHECKPOINT_CANDIDATES[method],
                     model_parameters=tuple({} for _ in checkpoints), has_base=False)
    spec.check()
    ours = Parents.load(checkpoints[0], checkpoints, dtype=torch.float32).merged_state(spec)
    recipe = spec_recipe(spec, base=str(checkpoints[0]), models=[str(c) for c in checkpoints],
                         layout=load_layout(checkpoints[0]))
    assert recipe["merge_method"] == "linear" and "base_model" not in recipe
    assert "linear" in " ".join(spec_notes(spec))
    run_mergekit(recipe, tmp_path / "theirs")
    theirs = load_state(tmp_path / "theirs")
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in theirs)
    assert worst <= 1e-5, f"{method}: max abs difference {worst}"
    assert max((ours[n] - load_state(checkpoints[-1])[n]).abs().max().item() for n in ours) > 1e-3
