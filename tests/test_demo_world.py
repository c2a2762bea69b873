"""The bundled demo world: models load offline, share a tokenizer, beat the base on their own skill; the task
data is current, deterministic and split without overlap; lm-eval scores it as the fast scorer does."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from search.demo import BASE_MODEL, CONFLICT, FINETUNES, MODEL_NAMES, demo_models_dir, demo_tasks_dir
from search.demo.skills import SKILLS, SPLITS, eval_examples, is_reserved, pretraining_line, train_examples
from search.demo.tasks import GENERATIVE_TASKS, LOGLIKELIHOOD_TASKS, TEXT_TASK, on_split, write_tasks
from search.demo.tokenizer import save_tokenizer

MODEL_FILES = ("model.safetensors", "config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[torch.nn.Module, object]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    out = {}
    for name in MODEL_NAMES:
        folder = str(demo_models_dir() / name)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
        model.eval()
        out[name] = (model, AutoTokenizer.from_pretrained(folder, local_files_only=True))
    return out


def test_bundled_folders_are_complete_and_small() -> None:
    total = 0
    for name in MODEL_NAMES:
        folder = demo_models_dir() / name
        for f in MODEL_FILES + TOKENIZER_FILES:
            assert (folder / f).is_file(), f"{folder / f} is missing"
        total += sum(p.stat().st_size for p in folder.iterdir())
        assert json.loads((folder / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert total <= 30 * 2**20, f"the demo models take {total / 2**20:.1f} MB, more than 30"


def test_tokenizer_files_are_shared_and_rebuilt_identically(tmp_path: Path) -> None:
    save_tokenizer(tmp_path)
    for f in TOKENIZER_FILES:
        expected = (tmp_path / f).read_bytes()
        for name in MODEL_NAMES:
            assert (demo_models_dir() / name / f).read_bytes() == expected, f"{name}/{f} differs"


def test_models_load_offline_with_auto_classes(loaded: dict) -> None:
    model, tok = loaded[BASE_MODEL]
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tok("Q: 12+34 A: 46\n")["input_ids"]
    assert tok.decode(ids) == "Q: 12+34 A: 46\n" and len(ids) == 15
    base_sd = model.state_dict()
    for name in FINETUNES.values():
        ft_sd = loaded[name][0].state_dict()
        assert ft_sd.keys() == base_sd.keys()
        moved = sum(float((ft_sd[k] - base_sd[k]).norm() ** 2) for k in base_sd) ** 0.5
        norm = sum(float(v.norm() ** 2) for v in base_sd.values()) ** 0.5
        assert 0.001 < moved / norm < 0.2, f"{name}: task vector is {moved / norm:.3%} of the base norm"


def test_each_finetune_beats_the_base_on_its_own_skill(loaded: dict) -> None:
    from search.demo.scorer import score

    base, tok = loaded[BASE_MODEL]
    for skill, name in FINETUNES.items():
        sample = eval_examples(skill, "heldout", 60)
        own = score(loaded[name][0], tok, sample)
        before = score(base, tok, sample)
        assert own.exact >= 0.85, f"{name} on {skill}: {own}"
        assert own.exact - before.exact >= 0.3, f"{name} vs base on {skill}: {own} / {before}"
        assert own.loglik > before.loglik


def test_conflicting_finetunes_answer_the_same_prompts_differently(loaded: dict) -> None:
    from search.demo.scorer import greedy_answers

    a, b = CONFLICT
    prompts = [e.prompt for e in eval_examples(a, "heldout", 20)]
    assert prompts == [e.prompt for e in eval_examples(b, "heldout", 20)]
    tok = loaded[BASE_MODEL][1]
    answers_a = greedy_answers(loaded[FINETUNES[a]][0], tok, prompts)
    answers_b = greedy_answers(loaded[FINETUNES[b]][0], tok, prompts)
    assert sum(x != y for x, y in zip(answers_a, answers_b)) >= 18


def test_generators_are_deterministic_and_keep_evaluation_inputs_out_of_training() -> None:
    r1, r2 = random.Random(7), random.Random(7)
    assert [pretraining_line(r1) for _ in range(300)] == [pretraining_line(r2) for _ in range(300)]
    for skill in SKILLS:
        assert eval_examples(skill, "search", 50) == eval_examples(skill, "search", 50)
        stream = train_examples(skill, random.Random(0))
        assert not any(is_reserved(next(stream).query) for _ in range(300))
        assert all(is_reserved(e.query) for e in eval_examples(skill, "heldout", 50))


def test_task_files_are_current_and_splits_disjoint(tmp_path: Path) -> None:
    written = write_tasks(tmp_path)
    for path in written:
        bundled = demo_tasks_dir() / path.relative_to(tmp_path)
        assert bundled.read_bytes() == path.read_bytes(), f"{bundled}: stale, run python -m search.demo.tasks"
    for task in [*GENERATIVE_TASKS.values(), TEXT_TASK]:
        rows = {s: [json.loads(x) for x in (demo_tasks_dir() / task / f"{s}.jsonl").read_text().splitlines()]
                for s in SPLITS}
        key = "text" if task == TEXT_TASK else "query"
        search, heldout = ({r[key] for r in rows[s]} for s in SPLITS)
        assert len(search) == len(rows["search"]) == (200 if task == TEXT_TASK else 500)
        assert len(heldout) == len(rows["heldout"]) == (200 if task == TEXT_TASK else 800)
        assert not search & heldout, f"{task}: the splits share inputs"


def test_lm_eval_scores_the_tasks_like_the_fast_scorer(loaded: dict) -> None:
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from search.demo.scorer import score

    model, tok = loaded[FINETUNES["add"]]
    manager = TaskManager(include_path=str(demo_tasks_dir()), include_defaults=False)
    assert set(GENERATIVE_TASKS.values()) | set(LOGLIKELIHOOD_TASKS.values()) | {TEXT_TASK} <= set(
        manager.all_tasks)
    tasks = manager.load(["demo_add", "demo_add_ll", TEXT_TASK])["tasks"]
    tasks.update(manager.load(on_split("demo_rev", "search"))["tasks"])
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=32, device="cpu")
    res = lm_eval.evaluator.evaluate(lm=lm, task_dict=tasks, limit=40, bootstrap_iters=0,
                                     verbosity="ERROR")["results"]
    fast_add = score(model, tok, eval_examples("add", "heldout", 40))
    fast_rev = score(model, tok, eval_examples("rev", "search", 40))
    assert res["demo_add"]["exact_match,strip"] == pytest.approx(fast_add.exact)
    assert res["demo_add_ll"]["acc,none"] == pytest.approx(fast_add.exact)
    assert res["demo_rev"]["exact_match,strip"] == pytest.approx(fast_rev.exact)
    assert 1.0 < res[TEXT_TASK]["byte_perplexity,none"] < 3.0


def test_demo_space_roles_give_select_enough_documents() -> None:
    """spaces/demo.yaml divides each skill's 500 validation documents 2:3 between search and select (a
    select role large enough that the pick among a few finalists is not mostly luck), tests on 800."""
    from evaluators.registry import build_evaluator
    from search.config.space import load_space

    demo = Path(__file__).resolve().parents[1] / "spaces" / "demo.yaml"
    for objective in load_space(demo).space.objectives:
        ev = build_evaluator(objective.evaluator, config_file=demo)
        search, select, test = (ev.num_docs(role) for role in ("search", "select", "test"))
        assert search + select == 500 and test == 800, (objective.name, search, select, test)
        assert 170 <= search <= 230 and 270 <= select <= 330, (objective.name, search, select)
