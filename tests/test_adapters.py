"""LoRA adapters as parents: PEFT's own merge is the reference; factors stay low-rank; bad adapters are refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lora_world import make_adapter, make_base, make_lora_world, peft_merged_state
from tiny import make_family

from search.merging.spec import MergeSpec
from search.weights.parents import Parents


@pytest.fixture(scope="module")
def lora_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_lora_world(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def parents(lora_world: tuple[Path, list[Path]]) -> Parents:
    base, adapters = lora_world
    return Parents.load(base, adapters, dtype=torch.float32, device="cpu")


def test_task_vectors_are_what_peft_merges(lora_world: tuple[Path, list[Path]], parents: Parents,
                                           single_thread: None) -> None:
    base, adapters = lora_world
    for i, adapter in enumerate(adapters):
        merged = peft_merged_state(base, adapter)
        changed = 0
        for name in parents.names:
            delta = parents.stacked_deltas(name)[i]
            expected = merged[name] - parents.base[name]
            torch.testing.assert_close(delta, expected, atol=1e-6, rtol=0, msg=f"{adapter.name}: {name}")
            changed += bool(expected.abs().max() > 0)
        assert changed >= 4, f"{adapter.name} changed only {changed} tensors: B would be zero"


def test_adapters_are_kept_low_rank(parents: Parents) -> None:
    q = "model.layers.0.self_attn.q_proj.weight"
    assert parents.deltas[q].dense is None and set(parents.deltas[q].factors) == {0, 1}
    up, down = parents.deltas[q].factors[1]
    assert up.shape == (32, 8) and down.shape == (8, 32)             # rslora adapter: r = 8
    head = parents.deltas["lm_head.weight"]                          # modules_to_save: a dense row
    assert head.dense_rows == (2,) and not head.factors
    dense_bytes = sum(d.shape.numel() * 3 * 4 for d in parents.deltas.values())
    held = sum(d.nbytes for d in parents.deltas.values())
    assert held < dense_bytes / 2
    factor_bytes = sum(sum(u.numel() + d.numel() for u, d in tv.factors.values()) * 4
                       for tv in parents.deltas.values())
    dense_rows = sum(0 if tv.dense is None else tv.dense.numel() * 4 for tv in parents.deltas.values())
    assert held == factor_bytes + dense_rows


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_linear_methods_use_factors_and_agree_with_dense(parents: Parents, method: str) -> None:
    spec = MergeSpec(method=method, parameters={"lambda": 0.9} if method == "task_arithmetic" else {},
                     model_parameters=({"weight": 0.5}, {"weight": [-0.4, 1.2]}, {"weight": 0.7}))
    fn = spec.merge_method
    for name in parents.names:
        params = spec.tensor_params(name, parents.layout)
        dense = fn.merge(parents.base[name], parents.stacked_deltas(name), params)
        torch.testing.assert_close(parents.merge_tensor(spec, name), dense, atol=2e-6, rtol=1e-6)


def test_mixed_full_and_adapter_parents(tmp_path: Path, single_thread: None) -> None:
    base, fts = make_family(tmp_path / "fam", 1)
    adapter = make_adapter(base, tmp_path / "ad", seed=5, target_modules=["q_proj", "down_proj"])
    parents = Parents.load(base, [fts[0], adapter], dtype=torch.float32, device="cpu")
    merged = peft_merged_state(base, adapter)
    from tiny import load_state

    full = load_state(fts[0])
    for name in parents.names:
        stack = parents.stacked_deltas(name)
        torch.testing.assert_close(stack[0], full[name] - parents.base[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(stack[1], merged[name] - parents.base[name], atol=1e-6, rtol=0)
    spec = MergeSpec(method="ties", parameters={}, model_parameters=({"weight": 1.0, "density": 0.5},
                                                                       {"weight": 0.8, "density": 0.7}))
    q = "model.layers.1.self_attn.q_proj.weight"
    expected = spec.merge_method.merge(parents.base[q], parents.stacked_deltas(q),
                                       spec.tensor_params(q, parents.layout))
    torch.testing.assert_close(parents.merge_tensor(spec, q), expected)


def test_tied_embeddings_follow_merge_and_unload(tmp_path: Path, single_thread: None) -> None:
    base = make_base(tmp_path / "tied", tied=True)
    adapter = make_adapter(base, tmp_path / "ad", seed=7, target_modules=["embed_tokens", "lm_head", "q_proj"])
    parents = Parents.load(base, [adapter], dtype=torch.float32, device="cpu")
    assert "lm_head.weight" not in parents.names
    merged = peft_merged_state(base, adapter)
    embed = "model.embed_tokens.weight"
    tv = parents.deltas[embed]
    assert tv.dense is None and tv.factors[0][0].shape[1] == 8      # embedding and lm_head ranks, concatenated
    torch.testing.assert_close(parents.stacked_deltas(embed)[0], merged[embed] - parents.base[embed],
                               atol=1e-5, rtol=0)


def test_fan_in_fan_out_conv1d(tmp_path: Path, single_thread: None) -> None:
    base = make_base(tmp_path / "gpt2", arch="gpt2")
    adapter = make_adapter(base, tmp_path / "ad", seed=9, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    parents = Parents.load(base, [adapter], dtype=torch.float32, device="cpu")
    merged = peft_merged_state(base, adapter)
    name = "transformer.h.0.attn.c_attn.weight"
    assert parents.deltas[name].factors
    for name in parents.names:
        torch.testing.assert_close(parents.stacked_deltas(name)[0], merged[name] - parents.base[name],
                                   atol=1e-6, rtol=0)


def test_rslora_scale(parents: Parents, lora_world: tuple[Path, list[Path]]) -> None:
    from search.weights.adapters import LoraAdapter

    with LoraAdapter.open(lora_world[1][1]) as rs, LoraAdapter.open(lora_world[1][2]) as pat:
        assert rs.modules["model.layers.0.mlp.down_proj.weight"][0].scale == pytest.approx(4 / math.sqrt(8))
        assert pat.modules["model.layers.0.mlp.up_proj.weight"][0].rank == 2
        assert pat.modules["model.layers.0.self_attn.o_proj.weight"][0].scale == pytest.approx(3 / 4)
        assert pat.modules["model.layers.0.self_attn.k_proj.weight"][0].scale == pytest.approx(16 / 4)


def test_adapter_export_refuses_what_is_not_low_rank(parents: Parents, tmp_path: Path) -> None:
    from search.errors import UserError
    from search.export.adapter import adapter_plan

    ties = MergeSpec(method="ties", model_parameters=({"weight": 1.0}, {"weight": 1.0}, {"weight": 1.0}))
    with pytest.raises(UserError, match="not linear"):
        adapter_plan(parents, [(ties, 1.0)])
    scaled = MergeSpec(method="linear", parameters={"normalize": False},
                       model_parameters=({"weight": 0.5}, {"weight": 0.2}, {"weight": 0.1}))
    with pytest.raises(UserError, match="scales the base"):
        adapter_plan(parents, [(scaled, 1.0)])
    ta = MergeSpec(method="task_arithmetic", model_parameters=({"weight": 1.0}, {"weight": 0.5}, {"weight": 0.0}))
    plan = adapter_plan(parents, [(ta, 0.5), (ta, 0.5)])            # a soup of linear merges is linear
    assert plan.ranks["model.layers.0.self_attn.q_proj"] == 4 + 8 and "lm_head" not in plan.modules_to_save
    base, fts = make_family(tmp_path / "fam", 2)
    full = Parents.load(base, fts, dtype=torch.float32, device="cpu")
    with pytest.raises(UserError, match="full checkpoints"):
        adapter_plan(full, [(MergeSpec(method="task_arithmetic", model_parameters=({"weight": 1.0},
                                                                                    {"weight": 1.0})), 1.0)])


def test_task_vector_bytes_from_headers(parents: Parents, lora_world: tuple[Path, list[Path]]) -> None:
    from search.weights.sizes import task_vector_bytes

    base, adapters = lora_world
    planned = sum(task_vector_bytes(a, itemsize=4) for a in adapters)
    assert planned == sum(d.nbytes for d in parents.deltas.values())       # what loading holds, to the byte
    assert task_vector_bytes(base, itemsize=4) == parents.model_nbytes()   # a full checkpoint: the whole model
    assert task_vector_bytes(adapters[0], itemsize=2) * 2 == task_vector_bytes(adapters[0], itemsize=4)


def test_half_precision_adapters_merge_in_float32(lora_world: tuple[Path, list[Path]], parents: Parents) -> None:
    base, adapters = lora_world
    half = Parents.load(base, adapters, dtype=torch.bfloat16, device="cpu")
    spec = MergeSpec(method="task_arithmetic", model_parameters=({"weight": 0.5}, {"weight": -0.4}, {"weight": 0.7}))
    for name in half.names:
        fast = half.merge_tensor(spec, name)
        assert fast.dtype == torch.bfloat16
        exact = parents.merge_tensor(spec, name)                    # the float32 parents
        # one bf16 rounding of inputs and output: within a few bf16 ulps of the float32 merge
        torch.testing.assert_close(fast.float(), exact, atol=2e-2 * exact.abs().max().item(), rtol=2 ** -6)


def test_factor_bytes_from_the_adapter_header(parents: Parents, lora_world: tuple[Path, list[Path]]) -> None:
    from search.weights.adapters import LoraAdapter

    with LoraAdapter.open(lora_world[1][1]) as rslora:                # every projection, r = 8, no saved tensors
        held = sum(sum(u.numel() + d.numel() for i, (u, d) in tv.factors.items() if i == 1) * 4
                   for tv in parents.deltas.values())
        assert rslora.factor_nbytes(4) == held


def test_a_parent_equal_to_the_base_warns(tmp_path: Path, lora_world: tuple[Path, list[Path]]) -> None:
    import shutil
    import warnings

    base, adapters = lora_world
    shutil.copytree(base, tmp_path / "same")
    with pytest.warns(UserWarning, match="identical to the base"):
        Parents.load(base, [tmp_path / "same"], dtype=torch.float32, device="cpu")     # full fine-tunes only
    with pytest.warns(UserWarning, match=r"models\[0\].*identical to the base"):
        Parents.load(base, [tmp_path / "same", adapters[0]], dtype=torch.float32, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        Parents.load(base, [adapters[0]], dtype=torch.float32, device="cpu")
