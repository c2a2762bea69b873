"""Export through real parts: HF folders that transformers loads, score as reported, and mergekit rebuilds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tiny import load_state, tiny_config

from search.cli import main
from search.errors import UserError
from search.export.folder import export_run
from search.export.mergekit_yaml import collapse_linear, mixture_recipe, to_filters
from search.merging.coefficients import resolve_setting
from search.merging.spec import MergeSpec
from search.selection.mixture import mixed_tensors
from search.selection.record import read_selection
from search.study.folder import RunFolder
from search.weights.layout import ModelLayout

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")



def rebuild_with_mergekit(recipe: Path, out: Path) -> Path:
    """Run mergekit in-process on an exported YAML: one config, or a multimerge file (stages, then final)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    options = MergeOptions(copy_tokenizer=True, quiet=True, write_model_card=False)
    docs = list(yaml.safe_load_all(recipe.read_text()))
    if len(docs) == 1:
        run_merge(MergeConfiguration.model_validate(docs[0]), str(out), options=options)
        return out
    from mergekit.graph import Executor
    from mergekit.scripts.multimerge import load_config, make_tasks

    stages = out.parent / f"{out.name}-stages"
    configs, deps = load_config(recipe.read_text(), str(stages))
    tasks = make_tasks(configs, deps, options, str(stages), str(out), False)
    Executor(tasks, math_device="cpu", storage_device="cpu").execute(desc="multimerge")
    return out


def max_difference(a: Path, b: Path) -> float:
    ours, theirs = load_state(a), load_state(b)
    assert set(ours) == set(theirs)
    return max((ours[n].float() - theirs[n].float()).abs().max().item() for n in ours)


def test_export_best_loads_generates_and_scores_as_reported(run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import build_evaluator

    selection = read_selection(run)
    (folder,) = export_run(run, "best", out=tmp_path)
    assert folder.name == selection.winner and (tmp_path / f"{folder.name}.mergekit.yaml").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("ab cd", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6 and tokenizer.decode(out[0, ids.shape[1]:])
    # the test score recomputed from the folder alone is the report's number
    loaded = RunFolder(run).loaded()
    win = selection.winner_item
    for i, o in enumerate(loaded.space.objectives):
        evaluator = build_evaluator(o.evaluator, device="cpu", config_file=loaded.file,
                                    field=f"objectives[{i}]")
        rescored = evaluator.score(model, tokenizer, "test")[o.metric]
        assert rescored == pytest.approx(win.test[o.name], rel=1e-9, abs=0)
    card = (folder / "README.md").read_text()
    assert f"{win.test['abc']:.4f}" in card and f"{win.search['xyz']:.4f}" in card
    assert f"Test score: {win.test_value:.4f}" in card
    assert str(loaded.models["a"]) in card and "winner" in card


def test_mergekit_rebuilds_single_method_exports(run: Path, tmp_path: Path) -> None:
    selection = read_selection(run)
    folders = export_run(run, "pareto", out=tmp_path / "ours")
    assert {f.name for f in folders} == {it.id for it in selection.items if it.frontier}
    checked, filtered = 0, 0
    for folder in folders:
        spec = selection.specs[selection.item(folder.name).refs[0]]
        if spec.merge_method.stochastic:
            continue  # DARE/DELLA masks are random: mergekit matches them in expectation only (see the card)
        recipe = tmp_path / "ours" / f"{folder.name}.mergekit.yaml"
        text = recipe.read_text()
        filtered += "filter: self_attn" in text
        worst = max_difference(folder, rebuild_with_mergekit(recipe, tmp_path / "theirs" / folder.name))
        assert worst <= TOL, f"{folder.name}: max abs difference {worst}"
        assert (folder / "mergekit_config.yml").read_text() == text
        checked += 1
    assert checked >= 2 and filtered >= 1, "module kinds went out as mergekit name filters"


def test_mergekit_rebuilds_interpolations_and_soups(run: Path, tmp_path: Path) -> None:
    selection = read_selection(run)
    interps = [it for it in selection.items if it.kind == "interpolation"]
    multistage = next(it for it in interps if not {selection.specs[r].method for r in it.refs}
                      <= {"task_arithmetic", "linear"})
    collapsed = next(it for it in interps if {selection.specs[r].method for r in it.refs}
                     <= {"task_arithmetic", "linear"})
    from search.methods import get_method

    checked = 0
    for item in (multistage, collapsed, selection.item("uniform-soup"), selection.item("greedy-soup")):
        if any(get_method(selection.specs[r].method).stochastic for r in item.refs):
            continue  # DARE/DELLA masks are random: mergekit rebuilds those only in expectation (the card says so)
        checked += 1
        (folder,) = export_run(run, item.id, out=tmp_path / "ours", overwrite=True)
        recipe = tmp_path / "ours" / f"{item.id}.mergekit.yaml"
        documents = list(yaml.safe_load_all(recipe.read_text()))
        if item is multistage or item is collapsed:
            assert (len(documents) == 1) == (item is collapsed), item.id
        worst = max_difference(folder, rebuild_with_mergekit(recipe, tmp_path / "theirs" / item.id))
        assert worst <= TOL, f"{item.id}: max abs difference {worst}"
    assert checked >= 3


def test_a_linear_mixture_collapses_to_one_task_arithmetic_merge(family: tuple[Path, list[Path]]) -> None:
    from search.weights.parents import Parents

    base, fts = family
    parents = Parents.load(base, fts[:2], device="cpu")
    per_layer = [{"kind": "attention", "value": [0.1, 0.9, 0.3, 0.7]}, {"kind": "embedding", "value": 0.4},
                 {"value": [1.2, 0.2, 0.5, 0.5]}]
    a = MergeSpec(method="task_arithmetic", parameters={"lambda": 0.8},
                  model_parameters=({"weight": per_layer}, {"weight": 0.6}))
    b = MergeSpec(method="linear", model_parameters=({"weight": 1.0}, {"weight": [0.5, 3.0]}))
    mixture = [(a, 0.3), (b, 0.7)]
    one = collapse_linear(mixture, parents.layout)
    assert one is not None
    merged = parents.merged_state(one)
    for name, tensor in mixed_tensors(parents, mixture):
        assert torch.allclose(merged[name], tensor, atol=1e-6, rtol=0), name
    ties = MergeSpec(method="ties", model_parameters=({"weight": 1.0, "density": 0.5},) * 2)
    assert collapse_linear([(a, 0.5), (ties, 0.5)], parents.layout) is None
    recipe = mixture_recipe([(a, 0.5), (ties, 0.5)], base=str(base), models=[str(p) for p in fts[:2]],
                            layout=parents.layout, stage_names=["one", "two"])
    assert recipe.multistage and [d.get("name") for d in recipe.documents] == ["one", "two", None]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_module_kinds_become_exact_name_filters(arch: str) -> None:
    from transformers import AutoConfig

    if arch in ("llama", "gpt2"):
        config = tiny_config(arch, layers=3)
    else:
        extra = {"num_key_value_heads": 2} if arch == "qwen2" else {}
        config = AutoConfig.for_model(arch, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=2, vocab_size=60, **extra)
    layout = ModelLayout.from_config(config)
    setting = [{"kind": "embedding", "value": 1.0}, {"kind": "lm_head", "value": 2.0},
               {"kind": "attention", "value": [0.1, 0.2, 0.3]}, {"kind": "mlp", "value": [0.4, 0.5, 0.6]},
               {"kind": "norm", "value": [0.7, 0.8, 0.9]}, {"value": 3.0}]
    translated = to_filters(setting, layout)
    assert all(set(c) <= {"filter", "value"} for c in translated)
    for name in layout.roles:  # mergekit's rule (first substring match wins) gives every tensor our value
        role, t = layout.role(name), layout.gradient_position(name)
        theirs = next(c["value"] for c in translated if "filter" not in c or c["filter"] in name)
        assert resolve_setting(theirs, name=name, role=role, t=t) == \
            resolve_setting(setting, name=name, role=role, t=t), name
    if arch == "llama":
        filters = [c.get("filter") for c in translated]
        assert filters == ["embed_tokens", "lm_head", "self_attn", "mlp", "norm", None]


def test_export_refuses_and_writes_nothing(run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", str(run), "--pick", "nonsense", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--pick" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a complete trial"):
        export_run(run, "999", out=tmp_path)
    (tmp_path / read_selection(run).winner).mkdir()
    (tmp_path / read_selection(run).winner / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_run(run, "best", out=tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([read_selection(run).winner, "keep.txt"])


def test_export_a_trial_the_selection_did_not_keep(run: Path, tmp_path: Path) -> None:
    selection = read_selection(run)
    kept = {r for it in selection.items for r in it.refs}
    folder = RunFolder(run)
    records = folder.records()
    number = next(t.number for t in folder.study().get_trials(deepcopy=False)  # a searched trial, not a baseline
                  if t.state.name == "COMPLETE" and f"trial:{t.number}" not in kept
                  and records[t.number].baseline is None)
    (folder,) = export_run(run, str(number), out=tmp_path)
    assert folder.name == f"trial-{number}"
    assert "not scored on the select or test role" in (folder / "README.md").read_text().replace("\n", " ")
