"""`search merge` with mergekit's BASE+ADAPTER references agrees with mergekit; bad adapters exit 2, write nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lora_world import make_adapter, make_base, make_lora_world
from tiny import load_state, make_family, snapshot

from search.cli import main

RECIPES: dict[str, dict] = {
    "linear": {"parameters": {"normalize": True},
               "weights": [{"weight": 0.5}, {"weight": [0.2, 0.9]}, {"weight": 0.3}], "base": False},
    "task_arithmetic": {"parameters": {"lambda": 0.8},
                        "weights": [{"weight": [0.2, 0.9, 0.5]}, {"weight": -0.4},
                                    {"weight": [{"filter": "self_attn", "value": 0.6}, {"value": 1.0}]}]},
    "ties": {"weights": [{"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": [0.3, 0.8]},
                         {"weight": 0.5, "density": 0.6}]},
}


@pytest.fixture(scope="module")
def lora_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_lora_world(tmp_path_factory.mktemp("lora"))


def run_mergekit(recipe: dict, out: Path, cache: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    config = MergeConfiguration.model_validate(recipe)
    run_merge(config, str(out), options=MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False,
                                                     lora_merge_cache=str(cache)))


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_base_plus_adapter_agrees_with_mergekit(case: str, lora_world: tuple[Path, list[Path]],
                                                tmp_path: Path, single_thread: None) -> None:
    base, adapters = lora_world
    spec = RECIPES[case]
    recipe: dict = {"merge_method": case, "models": [{"model": f"{base}+{a}", "parameters": w}
                                                     for a, w in zip(adapters, spec["weights"])],
                    "dtype": "float32"}
    if spec.get("base", True):
        recipe["base_model"] = str(base)
    if "parameters" in spec:
        recipe["parameters"] = spec["parameters"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    main(["merge", str(path), str(tmp_path / "ours")])
    run_mergekit(recipe, tmp_path / "theirs", tmp_path / "cache")
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert set(ours) == set(theirs)
    worst = max((ours[n] - theirs[n]).abs().max().item() for n in ours)
    assert worst <= 1e-5, f"{case}: max abs difference {worst}"
    base_state = load_state(base)
    assert max((ours[n] - base_state[n]).abs().max().item() for n in ours) > 1e-3


def test_adapter_folder_alone_and_mapping_form(lora_world: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """An adapter folder alone is applied to base_model; mergekit's mapping form reads the same."""
    base, adapters = lora_world
    weights = [{"weight": 0.6}, {"weight": -0.3}]
    plain = {"merge_method": "task_arithmetic", "base_model": str(base), "dtype": "float32",
             "models": [{"model": str(adapters[0]), "parameters": weights[0]},
                        {"model": {"model": {"path": str(base)}, "lora": {"path": str(adapters[2])}},
                         "parameters": weights[1]}]}
    joined = {**plain, "models": [{"model": f"{base}+{adapters[0]}", "parameters": weights[0]},
                                  {"model": f"{base}+{adapters[2]}", "parameters": weights[1]}]}
    for name, recipe in (("a", plain), ("b", joined)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
        main(["merge", str(tmp_path / f"{name}.yaml"), str(tmp_path / name)])
    a, b = load_state(tmp_path / "a"), load_state(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_base_model_with_its_own_adapter(lora_world: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """base_model: BASE+ADAPTER is the base with the adapter merged; other parents' deltas are against it."""
    base, adapters = lora_world
    recipe = {"merge_method": "task_arithmetic", "base_model": f"{base}+{adapters[0]}", "dtype": "float32",
              "models": [{"model": f"{base}+{adapters[1]}", "parameters": {"weight": 0.5}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    main(["merge", str(path), str(tmp_path / "ours")])
    run_mergekit(recipe, tmp_path / "theirs", tmp_path / "cache")
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "theirs")
    assert max((ours[n] - theirs[n]).abs().max().item() for n in ours) <= 1e-5


# -- refusals ------------------------------------------------------------------------------------------------

def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.err + captured.out).split())


@pytest.fixture(scope="module")
def bad_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base and adapters that cannot be merged onto it, each for one reason."""
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("bad")
    base = make_base(root / "base")
    make_adapter(base, root / "good", seed=1)
    make_adapter(base, root / "dora", seed=2, use_dora=True)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    get_peft_model(model, IA3Config(target_modules=["k_proj", "down_proj"],
                                    feedforward_modules=["down_proj"])).save_pretrained(str(root / "ia3"))
    wide_base, _ = make_family(root / "wide", 0, hidden=48)            # same architecture, other width
    make_adapter(wide_base, root / "wide_adapter", seed=3)
    gpt2 = make_base(root / "gpt2", arch="gpt2")                       # targets Llama does not have
    make_adapter(gpt2, root / "gpt2_adapter", seed=4, target_modules=["c_attn"], fan_in_fan_out=True)
    shutil.copytree(root / "good", root / "pickled")
    from safetensors.torch import load_file

    state = load_file(str(root / "pickled" / "adapter_model.safetensors"))
    (root / "pickled" / "adapter_model.safetensors").unlink()
    torch.save(state, root / "pickled" / "adapter_model.bin")
    shutil.copytree(root / "good", root / "noweights")
    (root / "noweights" / "adapter_model.safetensors").unlink()
    shutil.copytree(root / "good", root / "rank")
    config = json.loads((root / "rank" / "adapter_config.json").read_text())
    (root / "rank" / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    return root


@pytest.mark.parametrize("adapter, words", [
    ("dora", ["DoRA", "use_dora", "merge_and_unload"]),
    ("ia3", ["IA3", "only LoRA"]),
    ("wide_adapter", ["shape", "q_proj", "trained on this base"]),
    ("gpt2_adapter", ["lacks", "c_attn"]),
    ("pickled", ["adapter_model.bin", "--allow-pickle"]),
    ("noweights", ["no adapter_model.safetensors"]),
    ("rank", ["rank 4", "r=8"]),
])
def test_bad_adapter_is_refused(bad_world: Path, adapter: str, words: list[str], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    recipe = {"merge_method": "task_arithmetic", "base_model": str(bad_world / "base"), "dtype": "float32",
              "models": [{"model": f"{bad_world / 'base'}+{bad_world / 'good'}", "parameters": {"weight": 1.0}},
                         {"model": f"{bad_world / 'base'}+{bad_world / adapter}", "parameters": {"weight": 1.0}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    before = snapshot(tmp_path)
    code, text = run(["merge", str(path), str(tmp_path / "out")], capsys)
    assert code == 2, text
    assert "models[1].model" in text and str(path) in text and "Fix:" in text
    for word in words:
        assert word in text, (word, text)
    assert snapshot(tmp_path) == before


def test_pickled_adapter_with_allow_pickle(bad_world: Path, tmp_path: Path) -> None:
    recipe = {"merge_method": "task_arithmetic", "base_model": str(bad_world / "base"), "dtype": "float32",
              "models": [{"model": f"{bad_world / 'base'}+{bad_world / 'pickled'}", "parameters": {"weight": 1.0}}]}
    good = {**recipe, "models": [{"model": f"{bad_world / 'base'}+{bad_world / 'good'}",
                                  "parameters": {"weight": 1.0}}]}
    for name, body in (("p", recipe), ("g", good)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    main(["merge", str(tmp_path / "p.yaml"), str(tmp_path / "p"), "--allow-pickle"])
    main(["merge", str(tmp_path / "g.yaml"), str(tmp_path / "g")])
    p, g = load_state(tmp_path / "p"), load_state(tmp_path / "g")
    assert all(torch.equal(p[n], g[n]) for n in p)


def test_adapter_in_a_space_is_refused_before_the_run(bad_world: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "docs.jsonl").write_text('{"i": 0}\n')
    (tmp_path / "ev.py").write_text("def score(model, tokenizer, docs):\n    return {'s': 0.0}\n")
    space = {"base_model": str(bad_world / "base"),
             "models": {"good": str(bad_world / "good"), "dora": str(bad_world / "dora")},
             "methods": {"task_arithmetic": {"weight": [0.0, 1.0]}},
             "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "ev.py:score",
                                                        "data": "docs.jsonl"}, "metric": "s"}],
             "budget": {"trials": 1}, "output": "run"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    before = snapshot(tmp_path)
    code, text = run(["start", str(tmp_path / "space.yaml"), "--quiet"], capsys)
    assert code == 2 and "models.dora" in text and "DoRA" in text, text
    assert snapshot(tmp_path) == before
