"""`search merge` reproduces mergekit from the same YAML, on real tiny models, method by method."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny import load_state, make_family

from search.cli import main

GRADIENT = [0.2, 0.9, 0.5]
FILTERED = [{"filter": "self_attn", "value": 0.6}, {"value": [1.0, 0.4]}]

# Each recipe uses the granularities a mergekit user writes: scalars, gradients and filters.
RECIPES: dict[str, dict] = {
    "linear": {"models": [{"parameters": {"weight": 1.0}}, {"parameters": {"weight": GRADIENT}},
                          {"parameters": {"weight": FILTERED}}], "parameters": {"normalize": True}, "base": False},
    "linear_unnormalized": {"merge_method": "linear", "models": [{"parameters": {"weight": 0.3}},
                                                                 {"parameters": {"weight": 0.5}}],
                            "parameters": {"normalize": False}, "base": False},
    "task_arithmetic": {"models": [{"parameters": {"weight": GRADIENT}}, {"parameters": {"weight": -0.4}},
                                   {"parameters": {"weight": FILTERED}}], "parameters": {"lambda": 0.8}},
    "ties": {"models": [{"parameters": {"weight": 1.0, "density": GRADIENT}},
                        {"parameters": {"weight": FILTERED, "density": 0.5}},
                        {"parameters": {"weight": 0.7, "density": 0.3}}]},
    "ties_unnormalized": {"merge_method": "ties", "models": [{"parameters": {"weight": 1.0, "density": 0.4}},
                                                             {"parameters": {"weight": 0.5, "density": 0.6}}],
                          "parameters": {"normalize": False, "lambda": 1.3}},
    "breadcrumbs": {"models": [{"parameters": {"weight": 1.0, "density": 0.8, "gamma": 0.05}},
                               {"parameters": {"weight": 0.6, "density": GRADIENT, "gamma": 0.1}}]},
    "breadcrumbs_ties": {"models": [{"parameters": {"weight": 1.0, "density": 0.7, "gamma": 0.02}},
                                    {"parameters": {"weight": FILTERED, "density": 0.9, "gamma": 0.1}}]},
    # DARE / DELLA drop at random: at density 1 nothing is dropped and both tools must agree exactly.
    "dare_linear": {"models": [{"parameters": {"weight": 1.0, "density": 1.0}},
                               {"parameters": {"weight": GRADIENT, "density": 1.0}}]},
    "dare_ties": {"models": [{"parameters": {"weight": 1.0, "density": 1.0}},
                             {"parameters": {"weight": 0.5, "density": 1.0}}]},
    "della": {"models": [{"parameters": {"weight": 1.0, "density": 1.0, "epsilon": 0.0}},
                         {"parameters": {"weight": 0.5, "density": 1.0, "epsilon": 0.0}}]},
    "della_linear": {"models": [{"parameters": {"weight": 1.0, "density": 1.0, "epsilon": 0.0}},
                                {"parameters": {"weight": 0.5, "density": 1.0, "epsilon": 0.0}}]},
    "slerp": {"models": [{"parameters": {}}], "parameters": {"t": [0.0, 0.3, 0.8, 1.0]}, "list_base": True},
    "slerp_filtered": {"merge_method": "slerp", "models": [{"parameters": {}}],
                       "parameters": {"t": [{"filter": "mlp", "value": [0.1, 0.9]}, {"value": 0.5}]},
                       "list_base": True},
    "model_stock": {"models": [{"parameters": {}}, {"parameters": {}}, {"parameters": {}}]},
}


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    # sharded parents: the lazy reader must follow the index
    return make_family(tmp_path_factory.mktemp("mk"), 3, sharded=True, scale=0.05)


def build_recipe(case: str, base: Path, fts: list[Path]) -> dict:
    spec = RECIPES[case]
    models = [{"model": str(fts[i]), **({"parameters": m["parameters"]} if m["parameters"] else {})}
              for i, m in enumerate(spec["models"])]
    recipe: dict = {"merge_method": spec.get("merge_method", case)}
    if spec.get("base", True):
        recipe["base_model"] = str(base)
    if spec.get("list_base"):
        models = [{"model": str(base)}] + models
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


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_same_tensors_as_mergekit(case: str, parents: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, fts = parents
    recipe = build_recipe(case, base, fts)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    main(["merge", str(path), str(tmp_path / "ours")])
    run_mergekit(recipe, tmp_path / "theirs")
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    assert worst <= 1e-5, f"{case}: max abs difference {worst}"
    # and the merge is not trivially the base (the test could fail)
    base_state = load_state(base)
    assert max((ours[n] - base_state[n]).abs().max().item() for n in ours) > 1e-3


def test_output_is_a_complete_model_folder(parents: tuple[Path, list[Path]], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, fts = parents
    recipe = build_recipe("ties", base, fts)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    main(["merge", str(path), str(tmp_path / "out"), "--max-shard-size", "30KB"])
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json", "README.md", "mergekit_config.yml"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1, "sharded output"
    card = (out / "README.md").read_text()
    assert "ties" in card and str(fts[0]) in card and "density" in card
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("ab+cd", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")], "temporary folder left behind"
