"""The working model built on the meta device (no random init, buffers recomputed, ties re-tied), sharded by
layer over several devices, and the per-tensor placement of the parents (resident, or streamed one tensor ahead).

CUDA is absent in CI: sharding is tested with a device map over "cpu" and "meta", streaming with CPU targets
(the same ordering code); bench/gpu_check.sh runs the CUDA paths on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from search.errors import UserError
from search.merging.spec import MergeSpec
from search.weights.layout import ModelLayout
from search.weights.parents import Parents
from search.weights.placement import TensorPlacement, layer_devices, module_devices, prefetched, visible_devices

pytestmark = pytest.mark.usefixtures("single_thread")


def test_meta_built_model_is_the_base_with_its_own_memory_and_real_buffers(family):
    from transformers import AutoModelForCausalLM

    base, models = family
    parents = Parents.load(base, models, dtype=torch.float32, device="cpu")
    model = parents.build_model()
    reference = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    state, expected = model.state_dict(), reference.state_dict()
    assert set(state) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
        if name in parents.base:
            assert state[name].data_ptr() != parents.base[name].data_ptr()  # merging must never write the base
    for (name, buffer), (_, ref) in zip(model.named_buffers(), reference.named_buffers()):
        assert buffer.device.type == "cpu" and torch.equal(buffer, ref), name  # rotary inv_freq recomputed
    ids = torch.tensor([[1, 5, 9, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits)
    spec = MergeSpec(method="task_arithmetic", parameters={"weight": 0.5}, model_parameters=({}, {}, {}))
    parents.merge_into(model, spec)
    assert torch.equal(parents.merged_state(spec)["model.norm.weight"], model.state_dict()["model.norm.weight"])


def test_bf16_working_model_keeps_float32_rotary_buffers(family):
    base, models = family
    parents = Parents.load(base, models, dtype=torch.bfloat16, device="cpu")
    model = parents.build_model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_tied_embeddings_are_tied_again(tmp_path: Path):
    from tiny import make_family
    from transformers import AutoConfig

    base, models = make_family(tmp_path, 1, layers=2)
    config = AutoConfig.from_pretrained(str(base))
    config.tie_word_embeddings = True
    config.save_pretrained(str(base))
    state = load_file(str(base / "model.safetensors"))
    state.pop("lm_head.weight")
    save_file(state, str(base / "model.safetensors"), metadata={"format": "pt"})
    for m in models:
        config.save_pretrained(str(m))
        s = load_file(str(m / "model.safetensors"))
        s.pop("lm_head.weight")
        save_file(s, str(m / "model.safetensors"), metadata={"format": "pt"})
    model = Parents.load(base, models, dtype=torch.float32, device="cpu").build_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


def test_a_checkpoint_missing_a_weight_is_refused_not_left_random(tmp_path: Path):
    from tiny import make_family

    base, models = make_family(tmp_path, 1, layers=2)
    for folder in (base, *models):
        s = load_file(str(folder / "model.safetensors"))
        s.pop("model.norm.weight")
        save_file(s, str(folder / "model.safetensors"), metadata={"format": "pt"})
    parents = Parents.load(base, models, dtype=torch.float32, device="cpu")
    with pytest.raises(UserError, match="model.norm.weight"):
        parents.build_model()


def test_layers_split_evenly_and_parents_follow_their_layer(family):
    base, models = family
    parents = Parents.load(base, models, dtype=torch.float32, device="cpu")
    names = list(parents.base)
    devices = layer_devices(parents.layout, names, ["cpu", "meta"])
    model = parents.build_model(devices)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in names:
        layer = parents.layout.role(name).layer
        expected = "cpu" if (layer is not None and layer < 2) or "embed_tokens" in name else "meta"
        assert devices[name].type == expected, name
        assert params[name].device.type == expected, name  # the working model's slot is where the parents' is
    assert module_devices(parents.layout, devices)["model.layers.3"] == "meta"
    assert module_devices(parents.layout, devices)["model.layers.0"] == "cpu"
    filled = [n for n, p in params.items() if p.device.type == "cpu"]
    assert all(torch.equal(params[n], parents.base[n]) for n in filled)


def test_uneven_split_and_ties():
    layout = ModelLayout(num_layers=5, layers_prefix="model.layers")
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)]
    devices = layer_devices(layout, names + ["lm_head.weight", "model.embed_tokens.weight"], ["cpu", "meta", "cpu"],
                            tied={"lm_head.weight": "model.embed_tokens.weight"})
    assert [devices[n].type for n in names] == ["cpu", "cpu", "meta", "meta", "cpu"]  # 2 / 2 / 1, in order
    assert devices["lm_head.weight"] == devices["model.embed_tokens.weight"]


def test_more_gpus_than_visible_is_a_user_error():
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert visible_devices(visible + 1, "cpu") == [torch.device("cpu")]  # a CPU run shards nothing
    with pytest.raises(UserError, match="gpus_per_worker"):
        visible_devices(visible + 2, "cuda")


def test_prefetch_issues_one_tensor_ahead_in_order():
    store = {f"t{i}": (torch.full((3,), float(i)), torch.full((2, 3), float(-i))) for i in range(5)}
    events: list[str] = []

    def held(name: str):
        events.append(f"copy {name}")
        return store[name]

    for name, (b, d) in prefetched(list(store), held, {n: torch.device("cpu") for n in store}):
        events.append(f"merge {name}")
        assert torch.equal(b, store[name][0]) and torch.equal(d, store[name][1])
    # double buffering: tensor i+1 is being copied while tensor i merges, never further ahead
    assert events == ["copy t0", "copy t1", "merge t0", "copy t2", "merge t1", "copy t3", "merge t2", "copy t4",
                      "merge t3", "merge t4"]


def test_stream_without_a_gpu_is_refused_and_resident_hands_tensors_over():
    with pytest.raises(UserError, match="no GPU"):
        TensorPlacement("stream", {"w": torch.device("cpu")})
    placement = TensorPlacement("resident", {"w": torch.device("cpu")})
    w = torch.ones(4)
    kept = placement.store("w", w)
    assert [n for n, _ in placement.tensors(["w"], lambda n: (kept,))] == ["w"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stream_on_cuda_gives_the_resident_merge():
    from search.methods import get_method
    from search.methods.base import TensorParams

    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    base = {f"t{i}": torch.randn(64, 64, generator=g).bfloat16() for i in range(6)}
    deltas = {n: 0.1 * torch.randn(3, 64, 64, generator=g).bfloat16() for n in base}
    stream = TensorPlacement("stream", {n: device for n in base})
    held = {n: (stream.store(n, base[n]), stream.store(n, deltas[n])) for n in base}
    assert all(t.is_pinned() for pair in held.values() for t in pair)
    method = get_method("ties")
    params = TensorParams(per_model={"weight": torch.full((3,), 0.5, dtype=torch.float64),
                                     "density": torch.full((3,), 0.5, dtype=torch.float64)})
    for name, (b, d) in stream.tensors(list(base), lambda n: held[n]):
        out = method.merge(b, d, params)
        torch.testing.assert_close(out.cpu(), method.merge(base[name].to(device), deltas[name].to(device),
                                                           params).cpu(), rtol=0, atol=0)


def test_in_process_worker_sets_torch_threads_to_its_share(family, tmp_path: Path, monkeypatch):
    import json

    from search.backends.base import available_cores, thread_share
    from search.backends.inprocess import InProcessBackend
    from search.study.trial import ObjectiveConfig, WorkerConfig

    base, models = family
    (tmp_path / "score.py").write_text("def score(model, tokenizer, docs):\n    return {'s': 1.0}\n")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(6)))
    config = WorkerConfig(base_model=str(base), models=tuple(str(m) for m in models), model_names=("a", "b", "c"),
                          objectives=(ObjectiveConfig("s", {"type": "python", "function": "score.py:score",
                                                            "data": "docs.jsonl"}, "s"),),
                          space_file=str(tmp_path / "space.yaml"), device="cpu")
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(available_cores() + 3)  # oversubscribed, as a default on a shared machine can be
    try:
        InProcessBackend(config).start()
        assert torch.get_num_threads() == thread_share(available_cores()) == available_cores()
        # the user's OMP_NUM_THREADS wins (one thread on a loaded machine beats one per core)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(available_cores() + 3)
        InProcessBackend(config).start()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert thread_share(available_cores() * 4, 4) == available_cores()


def test_parents_follow_their_layer_and_the_model_follows_the_parents(family):
    """Parents.load over two devices: each tensor's base and task vectors live on the device of its layer, and
    the working model is built there (meta stands in for a second GPU)."""
    base, models = family
    parents = Parents.load(base, models, dtype=torch.float32, device="cpu", devices=["cpu", "meta"])
    model = parents.build_model()
    params = dict(model.named_parameters(remove_duplicate=False))
    for name in parents.names:
        layer = parents.layout.role(name).layer
        expected = "cpu" if (layer is not None and layer < 2) or "embed_tokens" in name else "meta"
        assert parents.base[name].device.type == expected, name
        assert parents.deltas[name].device.type == expected, name
        assert params[name].device.type == expected, name
    cpu_names = [n for n in parents.names if parents.base[n].device.type == "cpu"]
    spec = MergeSpec(method="task_arithmetic", parameters={"weight": 0.5}, model_parameters=({}, {}, {}))
    parents.merge_into(model, spec, names=cpu_names)
    reference = Parents.load(base, models, dtype=torch.float32, device="cpu")
    for name in cpu_names:
        assert torch.equal(params[name], reference.merge_tensor(spec, name))


def test_stream_placement_on_a_cpu_only_run_is_refused(family):
    base, models = family
    with pytest.raises(UserError, match="no GPU"):
        Parents.load(base, models, dtype=torch.float32, device="cpu", placement="stream")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_parents_merge_like_resident_ones_on_cuda(family):
    base, models = family
    resident = Parents.load(base, models, dtype=torch.bfloat16, device="cuda")
    streamed = Parents.load(base, models, dtype=torch.bfloat16, device="cuda", placement="stream")
    assert all(t.device.type == "cpu" and t.is_pinned() for t in streamed.base.values())
    a, b = resident.build_model(), streamed.build_model()
    assert all(p.device.type == "cuda" for p in b.parameters())
    for method in ("task_arithmetic", "ties", "dare_ties"):
        spec = MergeSpec(method=method, parameters={}, model_parameters=({"weight": 0.5, "density": 0.5},) * 3
                         if method != "task_arithmetic" else ({"weight": 0.5},) * 3, seed=3)
        resident.merge_into(a, spec)
        streamed.merge_into(b, spec)
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), (method, name)
