"""Storage dtype vs merge arithmetic: half-precision parents are merged in float32, one tensor at a time, so a bf16
merge is the float32 merge rounded to bf16; `dtype: auto` is the checkpoint's own; seeded masks have pinned bits
and are the same on every device."""

from __future__ import annotations

import json

import pytest
import torch

from search.methods import METHODS, MergeMethod, TensorParams
from search.methods.base import make_generator
from search.methods.sparsify import della_mask, random_mask
from search.weights.dtypes import config_dtype_name, storage_dtype_name

pytestmark = pytest.mark.usefixtures("single_thread")


def _params(method: MergeMethod, k: int) -> TensorParams:
    """Mid-range values of every searched parameter (defaults otherwise), different per model."""
    per_model, globals_ = {}, {}
    for spec in method.params:
        if spec.kind == "bool":
            value: object = True if spec.default is None else spec.default
        elif spec.kind == "int" and spec.search_low is not None:  # lawa's window: at most the k models
            value = min(round((spec.search_low + spec.search_high) / 2), k)
        elif spec.search_low is not None and spec.search_high is not None:
            value = (spec.search_low + spec.search_high) / 2
        else:
            value = spec.default
        if spec.per_model:
            shift = [0.0, 0.05, -0.05, 0.1][:k] if spec.kind == "float" and spec.search_low is not None else [0.0] * k
            per_model[spec.name] = torch.tensor([float(value) + s for s in shift], dtype=torch.float64)
        else:
            globals_[spec.name] = value
    return TensorParams(per_model=per_model, globals=globals_, is_base=torch.zeros(k, dtype=torch.bool),
                        statistics=_statistics(method, k))


def _statistics(method: MergeMethod, k: int, shape: tuple[int, int] = (24, 40)) -> dict[str, torch.Tensor]:
    """Per-parent statistics of the data-aware methods, for tensors shaped as :func:`_inputs` makes them."""
    g = torch.Generator().manual_seed(11)
    if method.statistics == "fisher":
        fisher = torch.rand((k, *shape), generator=g)
        return {"fisher": fisher, "fisher_norm": torch.linalg.vector_norm(fisher.reshape(k, -1), dim=1)}
    if method.statistics == "gram":
        x = torch.randn(k, 3 * shape[1], shape[1], generator=g)
        return {"gram": x.transpose(1, 2) @ x / x.shape[1]}
    return {}


def _inputs(method: MergeMethod, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = method.max_models if method.max_models is not None else 3
    return torch.randn((24, 40), generator=g), 0.05 * torch.randn((k, 24, 40), generator=g)


@pytest.mark.parametrize("name", list(METHODS))
def test_bf16_merge_is_the_float32_merge_rounded_to_bf16(name: str) -> None:
    method = METHODS[name]
    base, deltas = _inputs(method)
    b16, d16 = base.to(torch.bfloat16), deltas.to(torch.bfloat16)
    params = _params(method, deltas.shape[0])
    reference = method.merge(b16.float(), d16.float(), params, seed=7)  # float32 arithmetic on the same inputs
    merged = method.merge(b16, d16, params, seed=7)
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(merged, reference.to(torch.bfloat16), rtol=0, atol=0)
    out = torch.empty_like(b16)
    assert method.merge(b16, d16, params, seed=7, out=out) is out
    torch.testing.assert_close(out, reference.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["linear", "task_arithmetic"])
def test_elementwise_methods_merge_long_tensors_in_float32_slices(name: str) -> None:
    """Slices of a long tensor (several chunks and a ragged end) give the whole-tensor float32 result exactly."""
    from search.methods.base import CHUNK_CPU

    method = METHODS[name]
    assert method.elementwise
    g = torch.Generator().manual_seed(4)
    n = 3 * CHUNK_CPU + 17
    base, deltas = torch.randn(n, generator=g).bfloat16(), (0.01 * torch.randn(3, n, generator=g)).bfloat16()
    params = _params(method, 3)
    reference = method.merge(base.float(), deltas.float(), params).to(torch.bfloat16)
    out = torch.empty(n, dtype=torch.bfloat16)
    method.merge(base, deltas, params, out=out)
    assert torch.equal(out, reference) and torch.equal(method.merge(base, deltas, params), reference)
    strided = torch.empty((n, 2), dtype=torch.bfloat16)[:, 0]  # a non-contiguous destination
    method.merge(base, deltas, params, out=strided)
    assert torch.equal(strided, reference)


@pytest.mark.parametrize("name", ["linear", "task_arithmetic", "slerp", "model_stock"])
def test_bf16_storage_stays_within_bf16_rounding_of_the_full_float32_merge(name: str) -> None:
    """From unrounded float32 parents: the bf16 result is within a few bf16 steps of the float32 result."""
    method = METHODS[name]
    base, deltas = _inputs(method, seed=1)
    params = _params(method, deltas.shape[0])
    full = method.merge(base, deltas, params, seed=3)
    half = method.merge(base.to(torch.bfloat16), deltas.to(torch.bfloat16), params, seed=3).float()
    # bf16 keeps 8 significant bits: each input and the output are off by at most half a step of their size
    scale = base.abs() + deltas.abs().sum(0) + full.abs()
    assert bool(((half - full).abs() <= 2.0**-8 * scale).all())


def test_half_arithmetic_would_have_been_worse() -> None:
    """Why the upcast: summing four bf16 task vectors in bf16 loses what float32 keeps."""
    method = METHODS["task_arithmetic"]
    base = torch.full((1000,), 1.0)
    deltas = torch.full((4, 1000), 2.0**-9)  # each below half a bf16 step of 1.0: lost one by one in bf16
    params = TensorParams(per_model={"weight": torch.ones(4, dtype=torch.float64)}, globals={},
                          is_base=torch.zeros(4, dtype=torch.bool))
    merged = method.merge(base.to(torch.bfloat16), deltas.to(torch.bfloat16), params)
    in_bf16 = base.to(torch.bfloat16)
    for row in deltas.to(torch.bfloat16):
        in_bf16 = in_bf16 + row
    assert bool((merged.float() == 1.0 + 2.0**-7).all()) and bool((in_bf16.float() == 1.0).all())


def test_auto_dtype_is_the_checkpoints_own(tmp_path) -> None:
    for key, value, expected in [("torch_dtype", "bfloat16", "bfloat16"), ("dtype", "float16", "float16"),
                                 ("torch_dtype", "int8", "float32"), (None, None, "float32")]:
        folder = tmp_path / f"{key}-{value}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({key: value} if key else {}))
        assert config_dtype_name(folder) == expected
        assert storage_dtype_name("auto", folder) == expected
        assert storage_dtype_name("float32", folder) == "float32"


def _bits(mask: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in mask.reshape(-1)[:32].tolist())


def test_seeded_masks_have_pinned_bits() -> None:
    """The exact bits of seeded DARE and DELLA masks: a change here changes every stored candidate's weights."""
    delta = torch.linspace(-1, 1, 64).reshape(4, 16)
    dare = random_mask(delta, 0.5, make_generator(1234))
    della = della_mask(delta, 0.5, 0.2, make_generator(1234))
    assert dare is not None and della is not None
    assert _bits(dare) == PINNED["dare"], _bits(dare)
    assert _bits(della) == PINNED["della"], _bits(della)
    again = random_mask(delta, 0.5, make_generator(1234))
    assert again is not None and torch.equal(again, dare)


PINNED = {"dare": "11111011010000101010011000110101", "della": "11111011010000101110011000000100"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_seeded_methods_give_the_same_weights_on_cuda_and_cpu(name: str) -> None:
    method = METHODS[name]
    base, deltas = _inputs(method, seed=2)
    params = _params(method, deltas.shape[0])
    on_cpu = method.merge(base, deltas, params, seed=11)
    on_gpu = method.merge(base.cuda(), deltas.cuda(), params, seed=11)
    assert torch.equal(on_gpu.cpu() != 0, on_cpu != 0)  # the same entries dropped
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=1e-6)
    dare = random_mask(deltas[0].cuda(), 0.3, make_generator(5))
    assert dare is not None and torch.equal(dare.cpu(), random_mask(deltas[0], 0.3, make_generator(5)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fisher", "regmean"])
def test_data_aware_methods_merge_on_cuda_with_statistics_held_on_the_cpu(name: str) -> None:
    """Statistics stay where the parents' base is held (pinned CPU memory when streamed): the merge moves them."""
    method = METHODS[name]
    base, deltas = _inputs(method, seed=3)
    params = _params(method, deltas.shape[0])
    on_cpu = method.merge(base, deltas, params)
    on_gpu = method.merge(base.cuda(), deltas.cuda(), params)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=1e-6)


SCORE = '''
import torch

def score(model, tokenizer, docs):
    assert model.lm_head.weight.dtype == torch.bfloat16, model.lm_head.weight.dtype
    with torch.no_grad():
        return {"score": float(model.lm_head.weight.float().abs().mean())}
'''


@pytest.mark.slow
def test_a_bf16_family_is_searched_in_bf16_by_default(tmp_path, capsys) -> None:
    """dtype auto on a bf16 checkpoint: the plan says bfloat16, the working model is bf16, trials complete."""
    import yaml
    from tiny import make_family
    from transformers import AutoModelForCausalLM

    from search.cli import main

    base, models = make_family(tmp_path / "fam", 2, layers=2)
    for folder in (base, *models):
        AutoModelForCausalLM.from_pretrained(str(folder)).to(torch.bfloat16).save_pretrained(str(folder))
    assert config_dtype_name(base) == "bfloat16"
    (tmp_path / "score.py").write_text(SCORE)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(4)))
    space = {"base_model": str(base), "models": {"a": str(models[0]), "b": str(models[1])},
             "methods": {"dare_ties": {"weight": [0.2, 1.0], "density": [0.3, 0.9]}},
             "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "score.py:score",
                                                        "data": "docs.jsonl"}, "metric": "score"}],
             "pruner": {"name": "none", "slices": [1.0]}, "baselines": False, "budget": {"trials": 2},
             "device": "cpu", "output": "run"}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    main(["start", str(tmp_path / "space.yaml"), "--quiet", "--no-select"])
    captured = capsys.readouterr()
    assert "memory plan per worker: bfloat16 storage, placement resident" in captured.err
    assert "2 trials (2 complete" in captured.out
