"""Checkpoint averaging in a space without a base: several checkpoints of one run, searched with real parts.

The space names no ``base_model``; the search weighs the checkpoints with ``checkpoint_ema`` / ``lawa`` /
``checkpoint_average`` (and ``linear``), scores them with a real evaluator in a real journal study, and the
merged weights of a trial are exactly the method's weighted average of the checkpoints.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from tiny import load_state

from search.config.space import load_space
from search.errors import UserError
from search.methods.checkpoints import checkpoint_weights
from search.study.baselines import hand_set_baselines, recorded_baselines
from search.study.candidate import read_record
from search.study.loop import run_study
from search.study.space_to_optuna import build_plan, spec_from_params
from search.study.storage import STUDY_NAME, open_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def write_space(root: Path, checkpoints: list[Path], **changes: object) -> Path:
    random.seed(0)
    with open(root / "text.jsonl", "w") as f:
        for _ in range(24):
            f.write(json.dumps({"text": " ".join("".join(random.choice("abcde") for _ in range(4))
                                                 for _ in range(6))}) + "\n")
    space = {
        "models": {f"step{i + 1}000": str(c) for i, c in enumerate(checkpoints)},  # oldest first
        "methods": {"checkpoint_ema": {"decay": [0.2, 0.9]}, "lawa": {"k": [1, 3]}, "checkpoint_average": {}},
        "objectives": [{"name": "ppl", "evaluator": {"type": "perplexity", "data": "text.jsonl", "max_length": 48},
                        "metric": "perplexity", "direction": "minimize"}],
        "pruner": {"name": "none"},
        "budget": {"trials": 6},
        "output": "run",
        **changes,
    }
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.mark.slow
def test_a_space_of_checkpoints_without_a_base_searches_and_merges_exactly(
    family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, checkpoints = family
    loaded = load_space(write_space(tmp_path, checkpoints))
    assert loaded.space.base_model is None and loaded.base_model == checkpoints[0]  # a reference only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_study(loaded, progress=False)
    assert summary.finished == 6
    # the first checkpoint is the reference and a model: identical by construction, not a mistake to warn about
    assert not [w for w in caught if "identical to the base" in str(w.message)]
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tmp_path / "run"))
    # only baselines that need no base: the soup and each checkpoint alone
    assert {b.name for b in recorded_baselines(study)} == {"uniform_soup", "only_step1000", "only_step2000",
                                                          "only_step3000"}
    done = [t for t in study.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.COMPLETE and read_record(t.user_attrs).baseline is None]
    assert {read_record(t.user_attrs).method for t in done} & {"checkpoint_ema", "lawa", "checkpoint_average"}

    from search.weights.parents import Parents

    plan = build_plan(loaded.space, num_layers=4)
    parents = Parents.load(loaded.base_model, list(loaded.models.values()), dtype=torch.float32)
    states = [load_state(c) for c in checkpoints]
    for trial in done:
        spec = spec_from_params({**trial.params, "method": read_record(trial.user_attrs).method}, plan)
        assert spec.has_base is False
        values = dict(spec.parameters)
        weights = checkpoint_weights(spec.method, 3, values)
        merged = parents.merged_state(spec)
        for name, value in merged.items():
            expected = sum(w * s[name] for w, s in zip(weights, states))
            assert torch.allclose(value, expected, atol=1e-6), (spec.method, values, name)


def test_no_base_refuses_methods_that_need_one(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, checkpoints = family
    with pytest.raises(UserError, match="needs a base_model"):
        load_space(write_space(tmp_path, checkpoints, methods={"ties": {}}))


def test_lawa_window_larger_than_the_checkpoints_is_refused(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, checkpoints = family
    with pytest.raises(UserError, match="k=5 checkpoints but only 3"):
        load_space(write_space(tmp_path, checkpoints, methods={"lawa": {"k": [1, 5]}}))


def test_an_omitted_lawa_window_is_searched_up_to_the_number_of_checkpoints(
    family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    _, checkpoints = family
    loaded = load_space(write_space(tmp_path, checkpoints, methods={"lawa": {}}))
    (k,) = build_plan(loaded.space, num_layers=4).searched["lawa"]
    assert (k.low, k.high) == (1.0, 3.0)


def test_baselines_without_a_base() -> None:
    names = [b.name for b in hand_set_baselines(("a", "b"), seed=0, has_base=False)]
    assert names == ["uniform_soup", "only_a", "only_b"]


@pytest.fixture(scope="module")
def lora_parents(tmp_path_factory: pytest.TempPathFactory):
    from lora_world import make_lora_world

    from search.weights.parents import Parents

    base, adapters = make_lora_world(tmp_path_factory.mktemp("lora_ckpt"))
    return Parents.load(base, adapters, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize(("method", "parameters"), [
    ("checkpoint_average", {}), ("checkpoint_ema", {"decay": [0.2, 0.8]}), ("lawa", {"k": 2}),
])
def test_lora_checkpoints_average_as_factors_and_agree_with_dense(
    lora_parents, method: str, parameters: dict
) -> None:
    """Adapter checkpoints of one run (LoRA): the averages are linear in the deltas, so they combine the low-rank
    factors directly; the result is the dense merge's."""
    from search.merging.spec import MergeSpec

    parents = lora_parents
    spec = MergeSpec(method=method, parameters=parameters,
                     model_parameters=tuple({} for _ in range(parents.num_models)))
    assert spec.merge_method.linear_coefficients is not None
    factored = 0
    for name in parents.names:
        params = spec.tensor_params(name, parents.layout)
        dense = spec.merge_method.merge(parents.base[name], parents.stacked_deltas(name), params)
        torch.testing.assert_close(parents.merge_tensor(spec, name), dense, atol=2e-6, rtol=1e-6)
        factored += parents.deltas[name].dense is None
    assert factored > 0, "some tensors are held as factors only"


def test_a_copy_of_the_base_still_warns_but_the_base_itself_listed_does_not(
    family: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    import shutil

    from search.weights.parents import Parents

    base, _ = family
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Parents.load(base, [copy, base], labels=["models.copy", "models.itself"], dtype=torch.float32, device="cpu")
    said = [str(w.message) for w in caught if "identical to the base" in str(w.message)]
    assert len(said) == 1 and "models.copy" in said[0]
