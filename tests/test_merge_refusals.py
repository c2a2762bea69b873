"""Every bad input to `search merge`: exit code 2, a message naming file, field and fix, and nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import VOCAB, make_family, save_tokenizer, snapshot

from search.cli import main


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.err + captured.out).split())


@pytest.fixture()
def world(tmp_path: Path, family: tuple[Path, list[Path]]) -> Path:
    base, fts = family
    for p in [base, *fts]:
        shutil.copytree(p, tmp_path / p.name)
    return tmp_path


def write_recipe(root: Path, body: dict | str, name: str = "recipe.yaml") -> Path:
    path = root / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def ties(root: Path, **changes: object) -> dict:
    recipe = {
        "merge_method": "ties",
        "base_model": str(root / "base"),
        "models": [{"model": str(root / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": str(root / "ft1"), "parameters": {"weight": 0.5, "density": 0.5}}],
        "dtype": "float32",
    }
    recipe.update(changes)
    return recipe


def refused(root: Path, recipe: Path, capsys: pytest.CaptureFixture[str], *needles: str,
            extra: tuple[str, ...] = ()) -> str:
    before = snapshot(root)
    code, message = run(["merge", str(recipe), str(root / "out"), *extra], capsys)
    assert code == 2, message
    assert str(recipe) in message or recipe.name in message, message
    assert "Fix:" in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert snapshot(root) == before, "a refused merge wrote something"
    return message


def test_missing_path(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(world, ties(world, base_model=str(world / "nowhere")))
    refused(world, recipe, capsys, "base_model", "does not exist")


def test_pickle_only_refused_unless_allowed(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from tiny import load_state

    ft = world / "ft1"
    state = load_state(ft)
    (ft / "model.safetensors").unlink()
    torch.save(state, ft / "pytorch_model.bin")
    recipe = write_recipe(world, ties(world))
    refused(world, recipe, capsys, "models[1].model", "pickle", "--allow-pickle")
    code, message = run(["merge", str(recipe), str(world / "out"), "--allow-pickle"], capsys)
    assert code == 0, message
    assert (world / "out" / "model.safetensors.index.json").exists()


def test_other_architecture(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_family(world / "gpt", 1, arch="gpt2")
    recipe = write_recipe(world, ties(world, models=[
        {"model": str(world / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": str(world / "gpt" / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}}]))
    refused(world, recipe, capsys, "models[1].model", "model_type")


def test_other_tensor_names(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_family(world / "deep", 1, layers=5)
    recipe = write_recipe(world, ties(world, models=[
        {"model": str(world / "deep" / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}}]))
    refused(world, recipe, capsys, "models[0].model", "model.layers.4.")


def test_other_shapes(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_family(world / "wide", 1, hidden=64)
    recipe = write_recipe(world, ties(world, models=[
        {"model": str(world / "wide" / "ft0"), "parameters": {"weight": 1.0, "density": 0.5}}]))
    refused(world, recipe, capsys, "models[0].model", "shape", "model.embed_tokens.weight")


def test_other_vocab_size(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ft = world / "ft1"
    config = json.loads((ft / "config.json").read_text())
    config["vocab_size"] += 1
    (ft / "config.json").write_text(json.dumps(config))
    recipe = write_recipe(world, ties(world))
    refused(world, recipe, capsys, "models[1].model", "vocab_size")


def test_other_tokenizer_same_size(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shuffled = VOCAB[:4] + list(reversed(VOCAB[4:]))
    (world / "ft1" / "tokenizer.json").unlink()
    save_tokenizer(world / "ft1", shuffled)
    recipe = write_recipe(world, ties(world))
    refused(world, recipe, capsys, "models[1].model", "tokenizer", "token id 4")


def test_unknown_field(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(world, ties(world, merge_methd="ties"))
    refused(world, recipe, capsys, "merge_methd", "line")


def test_unknown_method(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(world, ties(world, merge_method="tiez"))
    refused(world, recipe, capsys, "merge_method", "did you mean 'ties'")


def test_unknown_parameter(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = ties(world)
    body["models"][0]["parameters"]["densty"] = 0.5
    recipe = write_recipe(world, body)
    refused(world, recipe, capsys, "models[0].parameters.densty", "density")


def test_parameter_out_of_range(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = ties(world)
    body["models"][1]["parameters"]["density"] = [0.5, 1.7]
    recipe = write_recipe(world, body)
    refused(world, recipe, capsys, "models[1].parameters.density", "1.7")


def test_malformed_yaml(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write_recipe(world, "merge_method: ties\nmodels:\n  - model: [unclosed\n")
    refused(world, recipe, capsys, "line", "YAML")


def test_method_needing_base(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = ties(world)
    del body["base_model"]
    recipe = write_recipe(world, body)
    refused(world, recipe, capsys, "base_model")


def test_existing_output_kept(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (world / "out").mkdir()
    (world / "out" / "precious.txt").write_text("keep me")
    recipe = write_recipe(world, ties(world))
    before = snapshot(world)
    code, message = run(["merge", str(recipe), str(world / "out")], capsys)
    assert code == 2 and "--overwrite" in message
    assert snapshot(world) == before


def test_entry_point_exit_code(world: Path) -> None:
    """The installed `search` command itself maps a user error to exit code 2."""
    recipe = write_recipe(world, ties(world, merge_method="nope"))
    proc = subprocess.run([sys.executable, "-m", "search.cli", "merge", str(recipe), str(world / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "merge_method" in proc.stderr and "Fix:" in proc.stderr
    assert not (world / "out").exists()


@pytest.mark.parametrize("method", ["fisher", "regmean"])
def test_a_data_aware_method_is_refused_in_a_one_shot_merge(world: Path, capsys: pytest.CaptureFixture[str],
                                                           method: str) -> None:
    """fisher/regmean read statistics of calibration data, which only a run computes (issue 15)."""
    recipe = ties(world, merge_method=method, models=[{"model": str(world / "ft0")}, {"model": str(world / "ft1")}])
    refused(world, write_recipe(world, recipe), capsys, "field 'merge_method'", "statistics of calibration data",
            "`calibration:` source")
