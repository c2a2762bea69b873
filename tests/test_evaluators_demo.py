"""Every evaluator kind on the bundled demo world (``search/demo/models``, ``evaluators/tasks/demo_*``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators import build_evaluator, slice_size

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "search" / "demo" / "models"
TASKS = ROOT / "evaluators" / "tasks"
SKILL = "add"
NEEDED = [MODELS / "demo-base" / "config.json", MODELS / f"demo-{SKILL}" / "config.json",
          TASKS / f"demo_{SKILL}" / f"demo_{SKILL}.yaml", TASKS / "demo_text" / "demo_text.yaml"]
MISSING = [str(p.relative_to(ROOT)) for p in NEEDED if not p.is_file()]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"demo world not built yet: missing {', '.join(MISSING)}")


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    models = {name: AutoModelForCausalLM.from_pretrained(MODELS / name).eval()
              for name in ("demo-base", f"demo-{SKILL}")}
    yield {"models": models, "tokenizer": AutoTokenizer.from_pretrained(MODELS / "demo-base")}
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def skill_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The skill task's search documents as {prompt, answer, text} rows, through lm-eval's doc_to_text/target."""
    ev = build_evaluator({"type": "lm_eval", "task": f"demo_{SKILL}", "include_path": str(TASKS)})
    task = ev.tasks("search")[f"demo_{SKILL}"]
    rows = []
    for _, doc in ev.documents("search"):
        prompt, answer = task.doc_to_text(doc), str(task.doc_to_target(doc))
        rows.append({"prompt": prompt, "answer": answer, "text": f"{prompt} {answer}"})
    path = tmp_path_factory.mktemp("demo") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lm_eval_on_every_demo_task_and_the_fine_tune_wins_its_own(demo):
    tok, models = demo["tokenizer"], demo["models"]
    every = build_evaluator({"type": "lm_eval", "task": ["demo", "demo_ll", "demo_text"],
                             "include_path": str(TASKS), "batch_size": 32})
    scores = every.score(models[f"demo-{SKILL}"], tok, "search", limit=slice_size(every.num_docs("search"), 0.1))
    assert any(k.startswith(f"demo_{SKILL}/") for k in scores) and all(math.isfinite(v) for v in scores.values())
    own = build_evaluator({"type": "lm_eval", "task": f"demo_{SKILL}", "include_path": str(TASKS),
                           "metric": "exact_match,strip", "batch_size": 32})
    k = slice_size(own.num_docs("search"), 0.3)
    fine_tune = own.score(models[f"demo-{SKILL}"], tok, "search", limit=k)["exact_match,strip"]
    base = own.score(models["demo-base"], tok, "search", limit=k)["exact_match,strip"]
    assert fine_tune > base + 0.1


def test_perplexity_agrees_with_lm_eval_rolling_loglikelihood(demo):
    """Our perplexity on demo_text's documents == lm-eval's bits_per_byte of the same model on the same
    documents: the tokenizer is one token per ASCII byte, and both score every token after BOS."""
    model, tok = demo["models"]["demo-base"], demo["tokenizer"]
    ours = build_evaluator({"type": "perplexity", "data": str(TASKS / "demo_text" / "search.jsonl"),
                            "max_length": 128, "batch_size": 32})
    total_nll = total_bytes = 0.0
    for role in ("search", "select", "test"):
        n_bytes = sum(len(d.encode()) for d in ours.documents(role))
        total_nll += ours.score(model, tok, role)["neg_log_likelihood"] * n_bytes
        total_bytes += n_bytes
    theirs = build_evaluator({"type": "lm_eval", "task": "demo_text", "include_path": str(TASKS),
                              "metric": "bits_per_byte"})
    # the task's one file is its validation split: lm-eval's search and select roles divide it, ours three roles
    roles = ("search", "select")
    assert sorted(d["text"] for r in roles for _, d in theirs.documents(r)) == sorted(
        d for r in ("search", "select", "test") for d in ours.documents(r))
    their_bits = their_bytes = 0.0
    for role in roles:
        n_bytes = sum(len(d["text"].encode()) for _, d in theirs.documents(role))
        their_bits += theirs.score(model, tok, role)["bits_per_byte"] * n_bytes
        their_bytes += n_bytes
    assert total_bytes == their_bytes
    assert total_nll / total_bytes / math.log(2) == pytest.approx(their_bits / their_bytes, rel=1e-4)


def test_perplexity_is_lower_for_the_fine_tune_on_its_skill(demo, skill_rows):
    ev = build_evaluator({"type": "perplexity", "data": str(skill_rows), "max_length": 64, "batch_size": 32})
    fine_tune = ev.score(demo["models"][f"demo-{SKILL}"], demo["tokenizer"], "search")
    base = ev.score(demo["models"]["demo-base"], demo["tokenizer"], "search")
    assert 1.0 < fine_tune["perplexity"] < base["perplexity"]


def test_python_function_scores_the_demo_skill(demo, skill_rows, tmp_path):
    (tmp_path / "greedy.py").write_text(
        "import torch\n"
        "def exact(model, tokenizer, docs):\n"
        "    right = 0\n"
        "    for d in docs:\n"
        "        ids = tokenizer(d['prompt'], return_tensors='pt').input_ids\n"
        "        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,\n"
        "                             do_sample=False, pad_token_id=tokenizer.pad_token_id)\n"
        "        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)\n"
        "        right += text.split('\\n')[0].strip() == d['answer'].strip()\n"
        "    return {'exact': right / len(docs)}\n"
    )
    ev = build_evaluator({"type": "python", "function": "greedy.py:exact", "data": str(skill_rows)},
                         config_file=tmp_path / "space.yaml")
    fine_tune = ev.score(demo["models"][f"demo-{SKILL}"], demo["tokenizer"], "search", limit=20)["exact"]
    base = ev.score(demo["models"]["demo-base"], demo["tokenizer"], "search", limit=20)["exact"]
    assert fine_tune > base
