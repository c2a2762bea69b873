"""Evaluators through the real parts: a tiny random Llama saved as an HF folder, lm-eval tasks written to disk."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from evaluators import build_evaluator
from search.errors import UserError

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?.\n")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
MAX_GEN = 4


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + CHARS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def _random_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(SPECIALS) + len(CHARS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the default init: outputs that differ clearly between seeds
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval()


def _greedy(model, tokenizer, prompt: str) -> str:
    """What the model writes after ``prompt``, cut where lm-eval cuts it (newline or end of text)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_GEN, do_sample=False,
                         pad_token_id=0)
    text = tokenizer.decode(out[0, ids.shape[1]:])
    return text.split("\n")[0].split("</s>")[0]


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared machine: torch's thread pool costs 40x more than it gives.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Model A saved as a real HF folder, weights B, and local lm-eval tasks whose targets A gets right on half
    the documents (its own greedy outputs) and on none of the others."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("evaluators")
    _random_llama(0).save_pretrained(root / "model")
    _tokenizer().save_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    weights_a = {k: v.clone() for k, v in model.state_dict().items()}
    weights_b = {k: v.clone() for k, v in _random_llama(1).state_dict().items()}

    tasks = root / "tasks"
    tasks.mkdir()
    questions = [f"{a}+{b}=" for a in range(10, 16) for b in range(10, 14)]  # same length: no padding
    docs = []
    for i, q in enumerate(questions):
        right = i % 2 == 0
        docs.append({"question": q, "answer": _greedy(model, tokenizer, q) if right else "never", "right": right})
    _write_jsonl(tasks / "gen.jsonl", docs)
    (tasks / "t_gen.yaml").write_text(
        "task: t_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tasks / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        f"generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: {MAX_GEN}\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    val = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(4)]
    test = [{"question": f"{a}*{b}=", "answer": str(a * b)} for a in range(4) for b in range(4)]
    _write_jsonl(tasks / "val.jsonl", val)
    _write_jsonl(tasks / "test.jsonl", test)
    (tasks / "t_ll.yaml").write_text(
        "task: t_ll\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {tasks / 'val.jsonl'}\n    test: {tasks / 'test.jsonl'}\n"
        "validation_split: validation\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return {"root": root, "tasks": tasks, "model": model, "tokenizer": tokenizer, "a": weights_a, "b": weights_b,
            "val": val, "test": test, "gen_docs": docs}


def _swap(model, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(weights[name])


# ---------------------------------------------------------------------------------------------- lm_eval


def test_swapped_weights_rescore_through_the_same_wrapper(world):
    model, tok = world["model"], world["tokenizer"]
    ev = build_evaluator({"type": "lm_eval", "task": ["t_gen", "t_ll"], "include_path": str(world["tasks"]),
                          "split_map": {"search": "test", "select": "test", "test": None}, "batch_size": 4})
    _swap(model, world["a"])
    first_a = ev.score(model, tok, "search")
    wrapper = ev._lm
    _swap(model, world["b"])
    b = ev.score(model, tok, "search")
    _swap(model, world["a"])
    again_a = ev.score(model, tok, "search")
    assert ev._lm is wrapper  # one HFLM for all three calls
    right = sum(d["right"] for _, d in ev.documents("search") if "right" in d)
    n_gen = sum(1 for t, _ in ev.documents("search") if t == "t_gen")
    assert first_a["t_gen/exact_match"] == pytest.approx(right / n_gen)  # A writes its own targets
    assert b["t_gen/exact_match"] < first_a["t_gen/exact_match"]
    assert b["t_ll/perplexity"] != pytest.approx(first_a["t_ll/perplexity"], rel=1e-3)
    assert again_a == first_a  # nothing of A's first call, nor of B's, was served from a cache


def test_growing_limits_score_nested_prefixes(world):
    model, tok = world["model"], world["tokenizer"]
    _swap(model, world["a"])
    ev = build_evaluator({"type": "lm_eval", "task": "t_gen", "include_path": str(world["tasks"]),
                          "fractions": {"search": 0.75, "select": 0.125, "test": 0.125}})
    n = ev.num_docs("search")
    assert n + ev.num_docs("select") + ev.num_docs("test") == len(world["gen_docs"])
    previous: list[Any] = []
    for k in (2, 5, 9, n):
        docs = [d for _, d in ev.documents("search", k)]
        assert docs[: len(previous)] == previous and len(docs) == k
        # exact_match on the slice is the share of A-right documents among exactly these k documents
        got = ev.score(model, tok, "search", limit=k)
        assert got["exact_match"] == pytest.approx(sum(d["right"] for d in docs) / k)
        assert got["t_gen/exact_match"] == got["exact_match"]
        previous = docs
    assert ev.score(model, tok, "search", limit=10_000) == ev.score(model, tok, "search")


def test_task_splits_map_to_search_select_and_test(world):
    """Default: the validation split is divided between search and select by content hash, test is test."""
    ev = build_evaluator({"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"])})
    searched = [d["question"] for _, d in ev.documents("search")]
    selected = [d["question"] for _, d in ev.documents("select")]
    assert searched and selected and not set(searched) & set(selected)
    assert sorted(searched + selected) == sorted(d["question"] for d in world["val"])
    assert sorted(d["question"] for _, d in ev.documents("test")) == sorted(d["question"] for d in world["test"])
    swapped = build_evaluator({"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"]),
                               "split_map": {"search": "test", "select": "validation", "test": None}})
    assert [d for _, d in swapped.documents("search")] != [] and all(
        "*" in d["question"] for _, d in swapped.documents("search"))
    assert swapped.num_docs("test") == 0  # test: null -> no test role
    score = swapped.score(world["model"], world["tokenizer"], "select", limit=3)
    assert set(score) == {"perplexity", "acc", "t_ll/perplexity", "t_ll/acc"}
    only = build_evaluator({"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"]), "metric": "acc"})
    assert set(only.score(world["model"], world["tokenizer"], "search", limit=2)) == {"acc", "t_ll/acc"}


def test_roles_that_share_documents_are_refused(world, tmp_path):
    """Two roles on two splits that hold the same documents would report a figure that chose the winner."""
    tasks = tmp_path / "dup"
    tasks.mkdir()
    (tasks / "t_dup.yaml").write_text(
        (world["tasks"] / "t_ll.yaml").read_text().replace("task: t_ll", "task: t_dup")
        .replace(str(world["tasks"] / "test.jsonl"), str(world["tasks"] / "val.jsonl")))
    msg = _error({"type": "lm_eval", "task": "t_dup", "include_path": str(tasks)})
    # validation (search + select) and test hold the same 12 documents: search is the first pair to overlap
    assert "evaluator.split_map" in msg and "'search' and 'test' roles share" in msg


def test_per_document_scores_average_to_the_metric(world):
    """lm-eval's per-sample log gives every document's value, in the fixed order; their mean is the metric."""
    model, tok = world["model"], world["tokenizer"]
    _swap(model, world["a"])
    ev = build_evaluator({"type": "lm_eval", "task": "t_gen", "include_path": str(world["tasks"])})
    metrics, per_doc = ev.score_documents(model, tok, "test")
    docs = [d for _, d in ev.documents("test")]
    assert per_doc["exact_match"] == [float(d["right"]) for d in docs]
    assert metrics == ev.score(model, tok, "test")
    assert metrics["exact_match"] == pytest.approx(sum(per_doc["exact_match"]) / len(docs))
    assert "t_gen/exact_match" not in per_doc


def test_fewshot_prompts_do_not_depend_on_earlier_calls(world):
    model, tok = world["model"], world["tokenizer"]
    _swap(model, world["a"])
    ev = build_evaluator({"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"]), "num_fewshot": 3})
    first = ev.score(model, tok, "search", limit=5)
    ev.score(model, tok, "search")  # draws many few-shot examples in between
    assert ev.score(model, tok, "search", limit=5) == first
    zero_shot = build_evaluator({"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"])})
    assert zero_shot.score(model, tok, "search", limit=5)["perplexity"] != pytest.approx(first["perplexity"])


# ---------------------------------------------------------------------------------------------- perplexity


def _direct_nll(model, ids: list[int], start: int, first_scored: int, end: int) -> tuple[float, int]:
    logits = model(torch.tensor([ids[start:end]])).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = -sum(float(logp[j - start - 1, ids[j]]) for j in range(first_scored, end))
    return total, end - first_scored


@pytest.mark.parametrize("max_length,stride", [(64, None), (8, 3)])
def test_perplexity_matches_a_direct_computation(world, tmp_path, max_length, stride):
    from evaluators.perplexity import windows

    model, tok = world["model"], world["tokenizer"]
    _swap(model, world["a"])
    texts = [f"doc {i} " + "ab cd ef " * (i % 4) + "end." for i in range(12)]
    _write_jsonl(tmp_path / "docs.jsonl", [{"body": t} for t in texts])
    ev = build_evaluator({"type": "perplexity", "data": str(tmp_path / "docs.jsonl"), "field": "body",
                          "max_length": max_length, "stride": stride, "batch_size": 5})
    chosen = ev.documents("search", 4)
    got = ev.score(model, tok, "search", limit=4)
    total, count = 0.0, 0
    with torch.no_grad():
        for text in chosen:
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False).input_ids
            spans = windows(len(ids), max_length, stride or max_length // 2)
            if max_length == 8:
                assert len(spans) > 1  # this case really reads long documents in windows
            for a, s, e in spans:
                nll, n = _direct_nll(model, ids, a, s, e)
                total, count = total + nll, count + n
    assert got["neg_log_likelihood"] == pytest.approx(total / count, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_windows_score_every_token_once_with_bounded_context():
    from evaluators.perplexity import windows

    for n in range(0, 40):
        for max_length, stride in [(4, 1), (4, 3), (8, 4), (16, 15)]:
            scored = []
            for a, s, e in windows(n, max_length, stride):
                assert e - a <= max_length and a < s <= e
                scored += range(s, e)
            assert scored == list(range(1, n))


def test_text_files_split_into_paragraphs(world, tmp_path):
    (tmp_path / "notes.txt").write_text("\n\n".join(f"paragraph {i}\nline two" for i in range(10)))
    ev = build_evaluator({"type": "perplexity", "data": "notes.txt"}, config_file=tmp_path / "space.yaml")
    assert ev.num_docs("search") + ev.num_docs("select") + ev.num_docs("test") == 10
    assert all(d.endswith("line two") for d in ev.documents("search"))


def test_perplexity_agrees_with_lm_eval_rolling_loglikelihood(world, tmp_path):
    """lm-eval's bits_per_byte on a rolling task == our NLL per token / ln 2: one token per ASCII byte, both
    score every token after BOS. Covers the rolling path (documents handed to lm-eval longest first)."""
    model, tok = world["model"], world["tokenizer"]
    _swap(model, world["a"])
    texts = [("ab cd " * (1 + i % 7) + f"end {i}.").strip() for i in range(40)]
    _write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    (tmp_path / "t_roll.yaml").write_text(
        f"task: t_roll\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'text.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: text\n"
        "metric_list:\n  - metric: bits_per_byte\n"
    )
    theirs = build_evaluator({"type": "lm_eval", "task": "t_roll", "include_path": str(tmp_path), "batch_size": 4})
    ours = build_evaluator({"type": "perplexity", "data": str(tmp_path / "text.jsonl"), "max_length": 128})
    # Each evaluator partitions what it reads (a row here, its text there), so compare over both splits.
    nats = bits = 0.0
    for split in ("search", "select", "test"):
        n_ours = sum(len(d.encode()) for d in ours.documents(split))
        n_theirs = sum(len(d["text"].encode()) for _, d in theirs.documents(split))
        nats += ours.score(model, tok, split)["neg_log_likelihood"] * n_ours
        bits += theirs.score(model, tok, split)["bits_per_byte"] * n_theirs
    assert nats / math.log(2) == pytest.approx(bits, rel=1e-5)


# ---------------------------------------------------------------------------------------------- python


def test_python_function_from_a_file_and_from_a_module(world, tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "import torch\n"
        "def count(model, tokenizer, docs):\n"
        "    ids = tokenizer([d['text'] for d in docs], return_tensors='pt', padding=True).input_ids\n"
        "    return {'docs': len(docs), 'chars': sum(len(d['text']) for d in docs),\n"
        "            'grad': float(torch.is_grad_enabled()), 'mean_logit': model(ids).logits.mean()}\n"
    )
    rows = [{"text": f"item {i:02d}"} for i in range(20)]
    _write_jsonl(tmp_path / "docs.jsonl", rows)
    model, tok = world["model"], world["tokenizer"]
    ev = build_evaluator({"type": "python", "function": "my_metrics.py:count", "data": "docs.jsonl"},
                         config_file=tmp_path / "space.yaml")
    assert ev.name == "count"
    got = ev.score(model, tok, "select", limit=3)
    docs = ev.documents("select", 3)
    assert got["docs"] == 3 and got["chars"] == sum(len(d["text"]) for d in docs)
    assert got["grad"] == 0.0 and isinstance(got["mean_logit"], float)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = build_evaluator({"type": "python", "function": "my_metrics:count",
                                 "data": str(tmp_path / "docs.jsonl")})
    assert by_module.score(model, tok, "heldout", limit=3) == got  # "heldout": the old name of select


# ---------------------------------------------------------------------------------------------- bad configs


def _error(spec: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(UserError) as info:
        build_evaluator(spec, **kw)
    return str(info.value)


def test_bad_configs_name_the_field_and_the_fix(world, tmp_path):
    tasks = str(world["tasks"])
    msg = _error({"type": "lm_evl", "task": "x"})
    assert "evaluator.type" in msg and "lm_eval, perplexity, python" in msg
    assert "evaluator.tsk" in _error({"type": "lm_eval", "tsk": "t_gen"})
    assert "evaluator.task" in _error({"type": "lm_eval"}, field="evaluator")
    assert "objectives[1].evaluator.num_fewshot" in _error(
        {"type": "lm_eval", "task": "t_gen", "num_fewshot": -1}, field="objectives[1].evaluator")
    assert "evaluator.include_path" in _error({"type": "lm_eval", "task": "t_gen", "include_path": "nowhere"},
                                              config_file=tmp_path / "s.yaml")
    msg = _error({"type": "lm_eval", "task": "t_ll", "include_path": tasks,
                  "split_map": {"search": "train", "select": "validation", "test": "test"}})
    assert "split_map.search" in msg and "validation" in msg
    msg = _error({"type": "lm_eval", "task": "t_ll", "include_path": tasks, "metric": "bleu"})
    assert "evaluator.metric" in msg and "acc" in msg
    assert "evaluator.gen_kwargs" in _error({"type": "lm_eval", "task": "t_ll", "include_path": tasks,
                                             "gen_kwargs": {"max_gen_toks": 3}})
    assert "evaluator.data" in _error({"type": "perplexity", "data": "missing.txt"}, config_file=tmp_path / "s.yaml")
    _write_jsonl(tmp_path / "rows.jsonl", [{"text": "a"}, {"body": "b"}])
    assert "evaluator.field" in _error({"type": "perplexity", "data": str(tmp_path / "rows.jsonl")})
    assert "evaluator.stride" in _error({"type": "perplexity", "data": str(tmp_path / "rows.jsonl"),
                                         "max_length": 8, "stride": 8})
    assert "evaluator.function" in _error({"type": "python", "function": "no_such_module_xyz:f",
                                           "data": str(tmp_path / "rows.jsonl")})
    assert "evaluator.function" in _error({"type": "python", "function": "json", "data": str(tmp_path / "rows.jsonl")})
    assert "evaluator.function" in _error({"type": "python", "function": "json:no_such_fn",
                                           "data": str(tmp_path / "rows.jsonl")})
    (tmp_path / "bad_fns.py").write_text("def listy(m, t, d):\n    return [1]\ndef texty(m, t, d):\n"
                                         "    return {'a': 'high'}\n")
    _write_jsonl(tmp_path / "many.jsonl", list(range(10)))
    for fn, words in (("listy", "not a dict"), ("texty", "'a': 'high'")):
        ev = build_evaluator({"type": "python", "function": f"bad_fns.py:{fn}", "data": "many.jsonl"},
                             config_file=tmp_path / "s.yaml")
        with pytest.raises(UserError) as info:
            ev.score(world["model"], world["tokenizer"], "search")
        assert "evaluator.function" in str(info.value) and words in str(info.value)


def test_a_generation_config_that_would_override_max_gen_toks_is_refused(world):
    model, tok = world["model"], world["tokenizer"]
    ev = build_evaluator({"type": "lm_eval", "task": "t_gen", "include_path": str(world["tasks"])})
    model.generation_config.max_new_tokens = MAX_GEN + 3
    try:
        with pytest.raises(UserError) as info:
            ev.score(model, tok, "search", limit=2)
        assert "evaluator.gen_kwargs" in str(info.value) and f"max_gen_toks: {MAX_GEN + 3}" in str(info.value)
        model.generation_config.max_new_tokens = MAX_GEN  # the same limit: no conflict
        assert "exact_match" in ev.score(model, tok, "search", limit=2)
    finally:
        model.generation_config.max_new_tokens = None


@pytest.mark.slow
def test_unknown_task_suggests_a_name(world):
    # Looks through lm-eval's built-in tasks too (the ~5 s scan), so it can say the task exists nowhere.
    msg = _error({"type": "lm_eval", "task": "t_gen_x", "include_path": str(world["tasks"])})
    assert "evaluator.task" in msg and "t_gen" in msg


def test_importing_evaluators_is_light():
    code = "import sys, evaluators; print('torch' in sys.modules, 'lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["False", "False"]


def test_a_run_folder_from_before_the_three_roles_reads_as_two_roles(world, tmp_path):
    """An old run searched the validation split and held out the test split: select is that held-out split,
    there is no test role, and a one-split data set keeps its old two-way partition."""
    from search.config.legacy import migrate_space

    old = {"objectives": [
        {"name": "ll", "metric": "acc", "search_split": "search", "heldout_split": "heldout",
         "evaluator": {"type": "lm_eval", "task": "t_ll", "include_path": str(world["tasks"])}},
        {"name": "ppl", "metric": "perplexity", "search_split": "search", "heldout_split": "heldout",
         "evaluator": {"type": "perplexity", "data": str(_write_jsonl(tmp_path / "t.jsonl", [
             {"text": f"line {i}"} for i in range(40)])), "heldout_fraction": 0.3}}]}
    specs = [o["evaluator"] for o in migrate_space(old)["objectives"]]
    ll = build_evaluator(specs[0])
    assert sorted(d["question"] for _, d in ll.documents("search")) == sorted(d["question"] for d in world["val"])
    assert sorted(d["question"] for _, d in ll.documents("select")) == sorted(d["question"] for d in world["test"])
    assert ll.num_docs("test") == 0
    ppl = build_evaluator(specs[1])
    assert ppl.num_docs("test") == 0 and ppl.num_docs("search") + ppl.num_docs("select") == 40
    from evaluators.splits import _SPLIT_SALT, fingerprint, unit_hash

    assert all(unit_hash(_SPLIT_SALT + fingerprint(d)) < 0.3 for d in ppl.documents("select"))
