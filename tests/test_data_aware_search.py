"""Fisher and RegMean through the real parts: tiny transformers models, a real calibration jsonl and a real local
lm-eval task, a real journal study. The statistics are computed once per run, stored in the run folder as
safetensors, reused on resume; the trials' weights equal the closed forms of search/methods/data_aware.py on the
parents' own tensors and statistics recomputed here independently (a plain loop over from_pretrained models)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import load_state

from search.config.space import load_space
from search.methods.data_aware import fisher_merge, regmean_merge
from search.statistics.calibration import texts_digest
from search.statistics.store import read_metadata
from search.study.candidate import read_record
from search.study.loop import run_study
from search.study.space_to_optuna import build_plan, spec_from_params
from search.study.storage import STUDY_NAME, open_storage

pytestmark = pytest.mark.usefixtures("single_thread")


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_world(root: Path) -> Path:
    """A local lm-eval task (additions; loglikelihood, acc) and a jsonl of texts, in the tiny tokenizer's alphabet."""
    rng = random.Random(0)
    tasks = root / "tasks"
    tasks.mkdir()
    _jsonl(tasks / "sums.jsonl", [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(10, 16)
                                  for b in range(10, 14)])
    (tasks / "t_sum.yaml").write_text(
        "task: t_sum\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'sums.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    _jsonl(root / "texts.jsonl", [{"text": " ".join("".join(rng.choice("abcdefgh") for _ in range(5))
                                                    for _ in range(rng.randint(2, 6)))} for _ in range(20)])
    return tasks


def write_space(root: Path, family: tuple[Path, list[Path]], **changes: Any) -> Path:
    base, fts = family
    space: dict[str, Any] = {
        "base_model": str(base),
        "models": {name: str(p) for name, p in zip("abc", fts)},
        "methods": {"fisher": {"weight": [0.2, 1.0]}, "regmean": {"alpha": [0.2, 0.95]}},
        "granularity": {"layer_groups": 2},
        "objectives": [{"name": "sum", "evaluator": {"type": "lm_eval", "task": "t_sum",
                                                      "include_path": str(root / "tasks"), "batch_size": 8},
                        "metric": "acc"}],
        "calibration": {"task": "t_sum", "documents": 8, "max_length": 32},
        "sampler": {"name": "random"},
        "pruner": {"name": "none", "slices": [1.0]},
        "baselines": False,
        "budget": {"trials": 4},
        "device": "cpu",
        "output": "run",
    }
    space.update(changes)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def files_state(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Each statistics file with its inode and modification time: a recomputation writes a new file."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run_dir / "statistics").iterdir()}


def reference_statistics(folder: Path, texts: list[str], max_length: int) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
    """Fisher and Grams of one parent, recomputed independently: the parent loaded with from_pretrained, one
    document at a time, the Fisher from loss.backward() on the summed next-token log-likelihood."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(hook(f"{name}.weight"))
    for text in texts:
        ids = tok(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        model.zero_grad()
        # the model's own loss is the mean token NLL: times the token count, minus, is the document's log-likelihood
        out = model(input_ids=ids, labels=ids)
        (-out.loss * (ids.shape[1] - 1)).backward()
        for n, p in model.named_parameters():
            fisher[n] += p.grad.square()
    return ({n: f / len(texts) for n, f in fisher.items()},
            {n: (g / counts[n]).float() for n, g in grams.items()})


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, family: tuple[Path, list[Path]]) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("data_aware")
    make_world(root)
    loaded = load_space(write_space(root, family))
    summary = run_study(loaded, progress=False)
    run_dir = root / "run"
    return {"root": root, "loaded": loaded, "summary": summary, "run_dir": run_dir, "files": files_state(run_dir)}


@pytest.mark.slow
def test_a_search_of_fisher_and_regmean_writes_its_statistics_once_and_resumes_without_recomputing(
    searched: dict[str, Any]
) -> None:
    run_dir, loaded = searched["run_dir"], searched["loaded"]
    assert searched["summary"].finished == 4
    names = sorted(searched["files"])
    assert [n.split("-")[0] for n in names] == ["fisher", "gram"] and all(n.endswith(".safetensors") for n in names)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4, [read_record(t.user_attrs).fail_reason for t in study.get_trials(deepcopy=False)]
    # resume to a larger budget: the same files are read, not written again
    bigger = loaded.model_copy(update={"space": loaded.space.model_copy(
        update={"budget": loaded.space.budget.model_copy(update={"trials": 6})})})
    assert run_study(bigger, progress=False).finished == 6
    assert files_state(run_dir) == searched["files"]


@pytest.mark.slow
def test_the_memory_plan_counts_the_statistics_it_will_hold(searched: dict[str, Any]) -> None:
    from search.weights.memory_plan import plan_for_space

    plan = plan_for_space(searched["loaded"])
    planned = {p.name: p.nbytes for p in plan.parts if p.name.startswith("statistics")}
    for path in (searched["run_dir"] / "statistics").iterdir():
        kind = path.name.split("-")[0]
        stored = sum(t.numel() * t.element_size() for t in load_file(str(path)).values())
        # fisher: exactly one float32 per parameter and fine-tune; gram: the llama-like estimate, never below
        assert stored <= planned[f"statistics ({kind})"] <= 1.5 * stored, (kind, stored, planned)


@pytest.mark.slow
def test_the_statistics_are_the_search_documents_fisher_and_grams_of_each_parent(
    searched: dict[str, Any], family: tuple[Path, list[Path]]
) -> None:
    from evaluators.registry import build_evaluator
    from evaluators.examples import document_text

    loaded = searched["loaded"]
    objective = loaded.space.objectives[0]
    evaluator = build_evaluator(objective.evaluator, device="cpu", config_file=loaded.file)
    task = evaluator.tasks("search")["t_sum"]
    seed = evaluator.spec.fewshot_seed
    texts = [document_text(task, doc, fewshot_seed=seed) for _, doc in evaluator.documents("search", limit=8)]
    held_out = {document_text(task, doc, fewshot_seed=seed) for role in ("select", "test") for _, doc in evaluator.documents(role)}
    question = texts[0].split("=")[0] + "="
    assert texts[0] == question + str(eval(question[:-1]))  # the prompt, then the continuation lm-eval scores
    assert len(texts) == 8 and not set(texts) & held_out  # the search role only
    paths = {p.name.split("-")[0]: p for p in (searched["run_dir"] / "statistics").iterdir()}
    for kind, path in paths.items():
        meta = read_metadata(path)
        assert meta["texts"] == texts_digest(texts) and meta["documents"] == "8", kind
    fisher, gram = load_file(str(paths["fisher"])), load_file(str(paths["gram"]))
    _, fts = family
    for i in (0, 2):
        ref_fisher, ref_gram = reference_statistics(fts[i], texts, max_length=32)
        for name, value in ref_fisher.items():
            torch.testing.assert_close(fisher[f"{i}/{name}"], value, rtol=1e-4, atol=1e-9, msg=name)
        assert set(ref_gram) == {k.partition("/")[2] for k in gram if k.startswith(f"{i}/")}
        for name, value in ref_gram.items():
            torch.testing.assert_close(gram[f"{i}/{name}"], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_each_trial_is_the_closed_form_of_its_method(searched: dict[str, Any],
                                                     family: tuple[Path, list[Path]]) -> None:
    from search.export.folder import attach_run_statistics
    from search.study.folder import RunFolder
    from search.weights.parents import Parents

    run_dir, loaded = searched["run_dir"], searched["loaded"]
    base, fts = family
    states = [load_state(p) for p in fts]
    base_state = load_state(base)
    paths = {p.name.split("-")[0]: p for p in (run_dir / "statistics").iterdir()}
    fisher, gram = load_file(str(paths["fisher"])), load_file(str(paths["gram"]))
    norms = torch.stack([torch.cat([v.flatten() for k, v in sorted(fisher.items()) if k.startswith(f"{i}/")])
                         .double().norm() for i in range(3)])
    parents = Parents.load(base, fts, dtype=torch.float32, device="cpu")
    # as `search export` finds them: the key from the run's resolved.json
    attach_run_statistics(parents, RunFolder(run_dir).loaded(), "float32", {"fisher"})
    assert sorted(parents.statistics) == ["fisher", "gram"]
    plan = build_plan(loaded.space, num_layers=4)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    methods = set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        spec = spec_from_params({**trial.params, "method": read_record(trial.user_attrs).method}, plan)
        methods.add(spec.method)
        merged = parents.merged_state(spec)  # the code every trial, selection and export merge with
        for name in base_state:
            thetas = torch.stack([s[name] for s in states])
            params = spec.tensor_params(name, parents.layout)
            if spec.method == "fisher":
                fishers = torch.stack([fisher[f"{i}/{name}"] for i in range(3)])
                expected = fisher_merge(thetas, fishers, params.per_model["weight"].tolist(), floor=1e-6,
                                        norms=norms)
            elif f"0/{name}" in gram:
                expected = regmean_merge(list(thetas), [gram[f"{i}/{name}"] for i in range(3)],
                                         alpha=float(params.globals["alpha"]))
            else:
                expected = thetas.mean(0)
            torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6, msg=f"{spec.method} {name}")
    assert methods == {"fisher", "regmean"}


def _merged_folder(base: Path, adapter: Path, out: Path) -> Path:
    """The adapter merged into its base by PEFT (merge_and_unload), saved as a dense HF folder."""
    from peft import PeftModel
    from tiny import save_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(str(out))
    save_tokenizer(out)
    return out


@pytest.mark.slow
def test_lora_parents_have_the_statistics_and_merges_of_their_merged_weights(tmp_path: Path) -> None:
    """A LoRA parent is run with its adapter applied: its Fisher and Grams are those of PEFT's merged model, and
    fisher/regmean merge the adapters' merged weights (dense: the result is a full model, not an adapter)."""
    from lora_world import LLAMA_LINEARS, make_adapter, make_base

    from search.merging.spec import MergeSpec
    from search.statistics.calibration import jsonl_texts
    from search.study.trial import Worker, WorkerConfig

    base = make_base(tmp_path / "base")
    adapters = [make_adapter(base, tmp_path / "every", seed=1, target_modules=LLAMA_LINEARS),
                make_adapter(base, tmp_path / "qv", seed=2)]
    make_world(tmp_path)
    loaded = load_space(write_space(
        tmp_path, (base, adapters), models={"every": str(adapters[0]), "qv": str(adapters[1])},
        calibration={"jsonl": "texts.jsonl", "documents": 6, "max_length": 24},
        objectives=[{"name": "ppl", "evaluator": {"type": "perplexity", "data": "texts.jsonl", "max_length": 24},
                     "metric": "perplexity", "direction": "minimize"}]))
    worker = Worker(WorkerConfig.from_space(loaded, device="cpu"))
    assert worker.compute_statistics(progress=False) == {"fisher": "computed", "gram": "computed"}
    texts = jsonl_texts(loaded.space.calibration, loaded.file)
    assert len(texts) == 6
    held = worker.parents.statistics
    dense = [_merged_folder(base, a, tmp_path / f"dense{i}") for i, a in enumerate(adapters)]
    for i, folder in enumerate(dense):
        ref_fisher, ref_gram = reference_statistics(folder, texts, max_length=24)
        for name, value in ref_fisher.items():
            torch.testing.assert_close(held["fisher"].per_tensor[name][i], value, rtol=1e-4, atol=1e-9, msg=name)
        for name, value in ref_gram.items():
            torch.testing.assert_close(held["gram"].per_tensor[name][i], value, rtol=1e-5, atol=1e-6, msg=name)
    states = [load_state(d) for d in dense]
    spec = MergeSpec(method="regmean", parameters={"alpha": 0.7}, model_parameters=({}, {}))
    merged = worker.parents.merged_state(spec)
    name = "model.layers.1.self_attn.q_proj.weight"
    expected = regmean_merge([s[name] for s in states], [held["gram"].per_tensor[name][i] for i in range(2)],
                             alpha=0.7)
    torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    spec = MergeSpec(method="fisher", model_parameters=({"weight": 0.3}, {"weight": 1.0}))
    merged = worker.parents.merged_state(spec)
    fishers = torch.stack([held["fisher"].per_tensor[name][i] for i in range(2)])
    expected = fisher_merge(torch.stack([s[name] for s in states]), fishers, [0.3, 1.0], norms=held["fisher"].norms)
    torch.testing.assert_close(merged[name], expected, rtol=1e-5, atol=1e-6)
    # another worker of the run (a Ray actor) reads the file when its first data-aware merge comes
    again = Worker(WorkerConfig.from_space(loaded, device="cpu"))
    assert again.parents.statistics == {}
    again.merge(spec)
    torch.testing.assert_close(again.model.state_dict()[name], merged[name], rtol=0, atol=0)
    # and a resumed run's first worker finds the file computed on the very same texts: nothing is computed again
    assert again.compute_statistics(progress=False) == {"fisher": "reused", "gram": "reused"}
