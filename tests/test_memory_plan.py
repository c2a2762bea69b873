"""The memory plan: computed from config.json and safetensors headers only, shown by `search plan`, and refusing
(exit 2, with the numbers and the fixes) before `search start` loads anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bench.shapes import write_sparse_family
from search.cli import main
from search.config.space import load_space
from search.errors import UserError
from search.weights.memory_plan import (
    GIB,
    ParentsShape,
    header_tensors,
    host_memory,
    parse_size,
    plan_for_space,
    plan_memory,
)


@pytest.fixture(scope="module")
def family_7b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A Llama-2-7B-shaped base and 4 fine-tunes in bf16, as sparse files (headers only on disk)."""
    return write_sparse_family(tmp_path_factory.mktemp("sparse7b"), "7b", 4, "bfloat16")


def _space(root: Path, base: Path, models: list[Path], **extra: object) -> Path:
    data = {
        "base_model": str(base), "models": {f"m{i}": str(p) for i, p in enumerate(models)},
        "methods": {"ties": {"weight": [0.0, 1.0], "density": [0.2, 1.0]}},
        "objectives": [{"name": "x", "evaluator": {"type": "python", "function": "mod:fn"}, "metric": "score"}],
        "output": str(root / "run"), **extra,
    }
    path = root / f"space-{len(list(root.glob('space-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sparse_family_costs_no_disk_and_headers_count_7b(family_7b):
    base, models = family_7b
    assert (base / "model.safetensors").stat().st_size > 13 * 10**9
    assert os.stat(base / "model.safetensors").st_blocks * 512 < 10**6  # a hole, not 13 GB of zeros
    tensors = header_tensors(base)
    assert sum(n for _, n in tensors.values()) == 6_738_415_616  # Llama-2-7B's parameter count
    shape = ParentsShape.from_folders(base, models)
    assert (shape.num_models, shape.native_bytes, shape.largest_numel) == (4, 2, 32000 * 4096)


def test_plan_7b_bf16_fits_80gb_by_streaming(tmp_path, family_7b, capsys):
    base, models = family_7b
    space = _space(tmp_path, base, models)  # dtype auto: the checkpoint's bfloat16
    plan = plan_for_space(load_space(space), gpu_memory=80 * GIB, cpu_memory=128 * GIB)
    assert (plan.dtype, plan.device, plan.placement, plan.fits) == ("bfloat16", "cuda", "stream", True)
    parts = {p.name.split(" (")[0]: p for p in plan.parts}
    model = 6_738_415_616 * 2
    assert parts["base"].nbytes == model and parts["working model"].nbytes == model
    assert parts["task vectors"].nbytes == 4 * model and parts["task vectors"].where == "cpu pinned"
    assert plan.gpu_need < 80 * GIB
    resident = plan_memory(ParentsShape.from_folders(base, models), dtype="bfloat16", placement="resident",
                           device="cuda", gpu_memory=80 * GIB, cpu_memory=128 * GIB)
    assert not resident.fits and resident.gpu_need > 6 * model  # why auto streams
    main(["plan", str(space), "--gpu-memory", "80GB", "--cpu-memory", "128GB"])
    out = capsys.readouterr().out
    assert "task vectors (4)" in out and "cpu pinned" in out and "fits" in out and "stream" in out


def test_plan_7b_fp32_resident_is_refused_with_numbers_and_fixes(tmp_path, family_7b, capsys):
    base, models = family_7b
    space = _space(tmp_path, base, models, dtype="float32", placement="resident")
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(space), "--gpu-memory", "80GB", "--cpu-memory", "128GB"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "does NOT fit" in captured.out and "80.0 GiB" in captured.out
    assert "dtype: bfloat16" in captured.err and "placement: stream" in captured.err
    assert "gpus_per_worker: 4" in captured.err  # 4 x 80 GB hold the fp32 family resident


def test_start_prints_the_plan_and_refuses_before_loading(tmp_path, family_7b, capsys):
    base, models = family_7b
    space = _space(tmp_path, base, models, dtype="float32", device="cpu")
    with pytest.raises(SystemExit) as exit_info:
        if (host_memory() or 0) > 200 * GIB:
            pytest.skip("this machine holds a fp32 7B family of five")
        main(["start", str(space), "--quiet"])  # 6 x 27 GB in fp32 on this machine's host memory: never fits
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "memory plan per worker" in captured.err and "does not fit" in captured.err
    assert not (tmp_path / "run").exists()  # nothing written


def test_stream_on_cpu_only_is_a_clear_error(tmp_path, family_7b):
    base, models = family_7b
    space = _space(tmp_path, base, models, device="cpu", placement="stream")
    with pytest.raises(UserError, match="no GPU") as error:
        plan_for_space(load_space(space))
    assert str(error.value).startswith(f"{space}: field 'placement': placement: stream")  # file, field once


def test_gpus_per_worker_above_visible_is_refused(tmp_path, family_7b):
    import torch

    base, models = family_7b
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    space = _space(tmp_path, base, models, resources={"gpus_per_worker": visible + 1})
    with pytest.raises(UserError, match="gpus_per_worker"):
        plan_for_space(load_space(space), for_run=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["start", str(space), "--quiet"])
    assert exit_info.value.code == 2


def test_more_gpus_split_the_parents_by_layer():
    shape = ParentsShape(float_numel=70_000_000_000, other_bytes=0, largest_numel=262_144_000, native_bytes=2,
                         num_models=4, hidden=8192, intermediate=28672, vocab=32000, layers=80, kv_width=1024,
                         max_positions=4096)
    one = plan_memory(shape, dtype="bfloat16", placement="auto", device="cuda", gpus=1, gpu_memory=80 * GIB,
                      cpu_memory=2048 * GIB)
    eight = plan_memory(shape, dtype="bfloat16", placement="resident", device="cuda", gpus=8,
                        gpu_memory=80 * GIB, cpu_memory=2048 * GIB)
    assert not one.fits and any("gpus_per_worker" in f for f in one.fixes)
    model = 70_000_000_000 * 2
    assert eight.gpu_need < (6 * model) / 8 + 30 * GIB  # split by layer, not replicated (6 x 140 GB)
    assert not eight.fits and eight.gpu_need > 80 * GIB  # 6 x 140 GB over 8 x 80 GB: still too much resident


def test_cpu_plan_is_resident_and_fp32_doubles_it():
    shape = ParentsShape(float_numel=10**9, other_bytes=0, largest_numel=10**8, native_bytes=2, num_models=2,
                         hidden=2048, intermediate=8192, vocab=32000, layers=16, kv_width=512, max_positions=2048)
    bf16 = plan_memory(shape, dtype="bfloat16", placement="auto", device="cpu", gpu_memory=None, cpu_memory=None)
    fp32 = plan_memory(shape, dtype="float32", placement="auto", device="cpu", gpu_memory=None, cpu_memory=None)
    assert bf16.placement == "resident" and all(p.where == "cpu" for p in bf16.parts)
    parents = {p.name: p.nbytes for p in fp32.parts}
    assert parents["task vectors (2)"] == 2 * {p.name: p.nbytes for p in bf16.parts}["task vectors (2)"]


def test_sizes_parse_and_bad_sizes_are_user_errors():
    assert parse_size("80GB", option="--gpu-memory") == 80 * GIB
    assert parse_size("512 MiB", option="--gpu-memory") == 512 * 1024**2
    with pytest.raises(UserError, match="not a size"):
        parse_size("lots", option="--gpu-memory")


def test_tiny_real_family_plan_matches_what_parents_hold(tmp_path, family):
    """The plan's base and task-vector bytes are what Parents.load really holds, on a real saved model."""
    import torch

    from search.weights.parents import Parents

    base, models = family
    shape = ParentsShape.from_folders(base, models)
    plan = plan_memory(shape, dtype="float32", placement="auto", device="cpu", gpu_memory=None, cpu_memory=None)
    parents = Parents.load(base, models, dtype=torch.float32, device="cpu")
    planned = {p.name.split(" (")[0]: p.nbytes for p in plan.parts}
    assert planned["base"] + planned["task vectors"] == parents.nbytes()


def test_lora_adapters_are_planned_at_the_size_of_their_factors(tmp_path, family):
    """A LoRA parent costs its factors (from its header), not a dense task vector."""
    from lora_world import make_adapter

    base, models = family
    adapter = make_adapter(base, tmp_path / "lora", seed=1)
    shape = ParentsShape.from_folders(base, [models[0], adapter])
    plan = plan_memory(shape, dtype="float32", placement="auto", device="cpu", gpu_memory=None, cpu_memory=None)
    parts = {p.name: p for p in plan.parts}
    assert parts["task vectors (2)"].note == "1 dense, 1 LoRA (factors)"
    import torch

    from search.weights.parents import Parents

    parents = Parents.load(base, [models[0], adapter], dtype=torch.float32, device="cpu")
    held = sum(d.nbytes for d in parents.deltas.values())
    assert parts["task vectors (2)"].nbytes == held < 2 * parents.model_nbytes()


def test_a_pickled_base_is_planned_from_its_file_size(tmp_path, family):
    """allow_pickle parents have no header: the plan falls back to file bytes (no unpickling)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    base, _ = family
    folder = tmp_path / "pickled"
    shutil.copytree(base, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    numel = sum(t.numel() for t in state.values())
    shape = ParentsShape.from_folders(folder, [folder])
    assert numel <= shape.float_numel < 1.1 * numel  # pickle framing adds a little (a lot less on real models)
    assert shape.largest_numel < numel / 2
