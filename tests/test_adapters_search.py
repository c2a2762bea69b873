"""A search whose fine-tunes are LoRA adapters: in-process (and on an embedded Ray, slow), then export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from lora_world import make_lora_world, peft_merged_state
from optuna.trial import TrialState

from search.cli import main
from search.study.candidate import read_record
from search.study.storage import STUDY_NAME, open_storage


@pytest.fixture(scope="module")
def lora_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_lora_world(tmp_path_factory.mktemp("lora"))


def write_space(root: Path, world: tuple[Path, list[Path]], **changes: object) -> Path:
    base, adapters = world
    random.seed(0)
    with open(root / "text.jsonl", "w") as f:
        for _ in range(12):
            f.write(json.dumps({"text": " ".join("".join(random.choice("abcde") for _ in range(4))
                                                 for _ in range(5))}) + "\n")
    space = {
        "base_model": str(base),
        "models": {a.name: str(a) for a in adapters},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.2]}, "ties": {"weight": [0.0, 1.2], "density": 0.5}},
        "granularity": {"layer_groups": 2},
        "objectives": [{"name": "ppl", "evaluator": {"type": "perplexity", "data": "text.jsonl", "max_length": 32},
                        "metric": "perplexity", "direction": "minimize"}],
        "pruner": {"name": "none", "slices": [1.0]},
        "budget": {"trials": 4},
        "output": "run",
    }
    space.update(changes)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def trials_of(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir)).get_trials(deepcopy=False)


@pytest.mark.slow
def test_search_over_adapters_in_process_then_export(lora_world: tuple[Path, list[Path]], tmp_path: Path,
                                                     single_thread: None) -> None:
    space = write_space(tmp_path, lora_world)
    main(["start", str(space), "--quiet"])
    trials = trials_of(tmp_path / "run")
    sampled = [t for t in trials if read_record(t.user_attrs).baseline is None]
    assert len(sampled) == 4 and all(t.state == TrialState.COMPLETE for t in sampled)
    scores = {round(read_record(t.user_attrs).search["ppl"], 6) for t in trials if t.state == TrialState.COMPLETE}
    assert len(scores) > 2, "every candidate scored the same: the adapters' deltas were not merged"
    # export a task_arithmetic trial; reference: the same merge over the dense deltas PEFT's own merges give
    trial = next(t for t in sampled if read_record(t.user_attrs).method == "task_arithmetic")
    main(["export", str(tmp_path / "run"), "--pick", str(trial.number), "--out", str(tmp_path / "out")])
    folder = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    from tiny import load_state

    from search.weights.layout import load_layout

    spec = read_record(trial.user_attrs).spec
    layout = load_layout(lora_world[0])
    base = load_state(lora_world[0])
    merged = [peft_merged_state(lora_world[0], a) for a in lora_world[1]]
    exported = load_state(folder)
    assert set(exported) == set(base)
    for name, tensor in exported.items():
        deltas = torch.stack([m[name] - base[name] for m in merged])
        expected = spec.merge_method.merge(base[name], deltas, spec.tensor_params(name, layout))
        torch.testing.assert_close(tensor, expected, atol=1e-6, rtol=0, msg=name)
    recipe = yaml.safe_load(next((tmp_path / "out").glob("*.mergekit.yaml")).read_text())
    assert all("+" in m["model"] for m in recipe["models"]), "mergekit needs BASE+ADAPTER for an adapter"

    # the same merge as one PEFT adapter: ranks concatenated, same logits as the full folder
    main(["export", str(tmp_path / "run"), "--pick", str(trial.number), "--out", str(tmp_path / "lora"),
          "--as", "adapter"])
    adapter = tmp_path / "lora" / folder.name
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["rank_pattern"]["model.layers.0.self_attn.q_proj"] == 4 + 8
    assert config["rank_pattern"]["model.layers.0.mlp.up_proj"] == 8 + 2
    assert "lm_head" in config["modules_to_save"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(lora_world[0])),
                                           str(adapter)).eval()
    ids = torch.randint(0, full.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, full(ids).logits, atol=1e-5, rtol=1e-5)
    unloaded = peft_model.merge_and_unload().state_dict()
    assert max((unloaded[n] - exported[n]).abs().max().item() for n in exported) <= 1e-5

    ties = next((t for t in sampled if read_record(t.user_attrs).method == "ties"), None)
    if ties is not None:
        code = subprocess.run([sys.executable, "-m", "search.cli", "export", str(tmp_path / "run"), "--pick",
                               str(ties.number), "--out", str(tmp_path / "ties"), "--as", "adapter"],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert code.returncode == 2 and "not linear" in code.stderr, code.stderr[-2000:]
        assert not (tmp_path / "ties").exists()


@pytest.mark.slow
def test_search_over_adapters_on_ray(lora_world: tuple[Path, list[Path]], tmp_path: Path) -> None:
    space = write_space(tmp_path, lora_world, backend="ray", budget={"trials": 3}, baselines=False)
    proc = subprocess.run([sys.executable, "-m", "search.cli", "start", str(space), "--quiet", "--no-select"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(t.state == TrialState.COMPLETE for t in trials_of(tmp_path / "run")) == 3
