"""Every bad input to `search start` found in issue 10, through the real CLI: exit code 2, a message naming the file,
the field with its line and the fix, and nothing written (no run folder). Legitimate inputs behave as a user
expects: a fine-tune equal to its base warns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from reliability_world import cli, make_world, space_dict, write_space
from tiny import snapshot

from search.config.space import load_space
from search.errors import UserError


@pytest.fixture()
def world(tmp_path: Path, family: tuple[Path, list[Path]]) -> Path:
    return make_world(tmp_path, family)


def refused(world: Path, capsys: pytest.CaptureFixture[str], *needles: str, **changes: object) -> str:
    space = write_space(world, **changes)
    before = snapshot(world)
    code, out = cli(["start", str(space), "--quiet", "--no-select"], capsys)
    assert code == 2, out
    assert str(space) in out and "Fix:" in out and "Traceback" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)
    assert snapshot(world) == before and not (world / "run").exists(), "a refused start wrote something"
    return out


def test_sampler_args_are_built_at_validation(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = refused(world, capsys, "field 'sampler.args.n_startup_trials' (line", "takes int, got 'ten'",
                  sampler={"name": "tpe", "args": {"n_startup_trials": "ten"}})
    out = refused(world, capsys, "field 'sampler.args.gamma'", "cannot give",
                  sampler={"name": "tpe", "args": {"gamma": 3}})
    # the fix offers only what YAML can give: no functions, no sampler objects
    offered = out.split("use some of:")[1]
    assert "n_startup_trials" in offered and "gamma" not in offered and "constraints_func" not in offered
    refused(world, capsys, "did you mean 'population_size'", sampler={"name": "nsgaii",
                                                                      "args": {"populaton_size": 8}},
            optimize="pareto", objectives=space_dict(world)["objectives"] + [{
                "name": "t", "evaluator": {"type": "python", "function": "score.py:score", "data": "docs.jsonl"},
                "metric": "score"}], pruner={"name": "none", "slices": [1.0]})
    refused(world, capsys, "field 'sampler.args'", "refused its arguments",
            sampler={"name": "qmc", "args": {"qmc_type": "no-such-sequence"}})


def test_pruner_args_are_checked(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(world, capsys, "field 'pruner.args.n_startup' (line", "did you mean 'n_startup_trials'",
            pruner={"name": "median", "slices": [0.5, 1.0], "args": {"n_startup": 2}})
    refused(world, capsys, "field 'pruner.args.reduction_factor'", "takes int",
            pruner={"name": "successive_halving", "slices": [0.5, 1.0], "args": {"reduction_factor": "two"}})
    refused(world, capsys, "field 'pruner.args'", "takes no arguments",
            pruner={"name": "baseline", "slices": [0.5, 1.0], "args": {"n_startup_trials": 2}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_the_machine_lacks(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(world, capsys, "field 'device' (line", "CUDA is not available", device="cuda")
    refused(world, capsys, "field 'device' (line", "CUDA is not available", device="cuda:1")
    refused(world, capsys, "field 'device' (line", "not a device", device="gpu please")


def test_output_that_cannot_be_a_run_folder(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (world / "afile").write_text("not a folder")
    refused(world, capsys, "field 'output' (line", "is a file, not a folder", output="afile")
    refused(world, capsys, "field 'output'", "is a file", output="afile/run")
    if Path("/proc/self").exists():
        refused(world, capsys, "field 'output' (line", "cannot write the run folder", output="/proc/x")


def test_weights(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = space_dict(world)["objectives"] * 2
    zero = [{**two[0], "weight": 0}, {**two[1], "name": "t", "weight": 0.0}]
    refused(world, capsys, "field 'objectives[0].weight' (line", "optimise a constant", objectives=zero,
            optimize="weighted")
    negative = [{**two[0], "weight": -1.0}]
    refused(world, capsys, "field 'objectives[0].weight' (line", ">= 0", "direction: minimize", objectives=negative)


def test_duplicate_objective_names_point_at_the_name(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = space_dict(world)["objectives"] * 2
    out = refused(world, capsys, "field 'objectives[1].name' (line", "used twice", objectives=two)
    assert "(top level)" not in out


def test_misspelt_method_parameter_gets_a_did_you_mean(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(world, capsys, "field 'methods.ties.densty' (line", "did you mean 'density'",
            methods={"ties": {"weight": [0.0, 1.0], "densty": [0.2, 1.0]}})


def test_model_count_message_is_grammatical() -> None:
    from search.merging.spec import lookup_method

    problem = lookup_method("slerp").check_model_count([False, False, False])
    assert problem is not None and "exactly 1 model " in problem + " " and "1 models" not in problem


def test_unknown_lm_eval_task_is_refused_before_loading(world: Path) -> None:
    from search.study.preflight import check_lm_eval_tasks

    tasks = Path(__file__).resolve().parents[1] / "evaluators" / "tasks"

    def space_with(task: str) -> Path:
        return write_space(world, objectives=[{"name": "add", "evaluator": {
            "type": "lm_eval", "task": task, "include_path": str(tasks)}, "metric": "exact_match,strip"}])

    def no_index() -> list[str]:
        raise AssertionError("the full lm-eval index was built for a task of include_path")

    check_lm_eval_tasks(load_space(space_with("demo_add")), full_index=no_index)  # found in milliseconds
    # a name in neither place: the full index (here a stand-in for lm-eval's) decides, with a "did you mean"
    with pytest.raises(UserError) as err:
        check_lm_eval_tasks(load_space(space_with("demo_ad")), full_index=lambda: ["hellaswag", "arc_easy"])
    assert err.value.field == "objectives[0].evaluator.task" and "did you mean demo_add" in str(err.value)
    assert not (world / "run").exists()


def test_finetune_equal_to_its_base_warns(world: Path, family: tuple[Path, list[Path]]) -> None:
    from search.weights.parents import Parents

    base, fts = family
    same = world / "same"
    shutil.copytree(base, same)
    with pytest.warns(UserWarning, match=r"models\.same .* is identical to the base model"):
        Parents.load(base, [fts[0], same], labels=["models.a", "models.same"], device="cpu")


@pytest.mark.parametrize(("size", "reason"), [(1, "--soup-size 1"), (8, "fewer than 2 complete candidates")])
def test_pick_soup_says_why_there_is_none(size: int, reason: str) -> None:
    from search.export.folder import pick_items
    from search.selection.record import Options, Selection

    selection = Selection.model_construct(options=Options(soup_size=size), items=[], specs={})
    with pytest.raises(UserError) as err:
        pick_items(selection, "soup", Path("runs/x"))
    assert reason in str(err.value) and err.value.field == "--pick" and "single candidate" not in str(err.value)


def test_data_aware_methods_need_a_calibration_source_that_exists(world: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """issue 15: fisher/regmean without calibration, an unknown calibration task, a missing, empty or field-less
    calibration file: exit 2 with file, field and fix, nothing written, before any model loads."""
    (world / "empty.jsonl").write_text("\n")
    (world / "other_field.jsonl").write_text('{"body": "some text"}\n')
    lm_objective = [{"name": "add", "evaluator": {"type": "lm_eval", "task": "demo_add", "include_path": str(
        Path(__file__).resolve().parents[1] / "evaluators" / "tasks")}, "metric": "exact_match,strip"}]
    refused(world, capsys, "field 'methods.fisher' (line", "calibration", "Fix: add e.g. `calibration:",
            methods={"fisher": {}})
    refused(world, capsys, "field 'methods.regmean'", "calibration", methods={"task_arithmetic": {}, "regmean": {}})
    refused(world, capsys, "field 'calibration.task' (line", "'demo_ad' is not a task of an lm_eval objective",
            "did you mean 'demo_add'?", methods={"regmean": {}}, objectives=lm_objective,
            calibration={"task": "demo_ad"})
    refused(world, capsys, "field 'calibration.task'", "add an lm_eval objective with that task",
            methods={"fisher": {}}, calibration={"task": "demo_add"})
    refused(world, capsys, "field 'calibration.jsonl' (line", "'missing.jsonl' does not exist",
            methods={"fisher": {}}, calibration={"jsonl": "missing.jsonl"})
    refused(world, capsys, "field 'calibration.jsonl'", "holds no text", methods={"fisher": {}},
            calibration={"jsonl": "empty.jsonl"})
    refused(world, capsys, "field 'calibration.field' (line", "has no text field 'text' (it has: body)",
            methods={"regmean": {}}, calibration={"jsonl": "other_field.jsonl"})
    refused(world, capsys, "field 'calibration'", "exactly one calibration source", methods={"fisher": {}},
            calibration={"jsonl": "other_field.jsonl", "task": "demo_add"})
