"""Content-hash splits and fixed orders: disjoint, stable when files are reordered or grow, nested slices."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluators import build_evaluator, slice_size
from evaluators.splits import assign_split, fingerprint, first, fixed_order, hash_partition


ROLES = ("search", "select", "test")


def _three(fraction: float) -> dict[str, float]:
    return {"search": 1.0 - fraction, "select": fraction / 2, "test": fraction / 2}


def _positions(docs: list[str], fraction: float) -> dict[str, list[str]]:
    parts = hash_partition([fingerprint(d) for d in docs], _three(fraction))
    return {split: [docs[i] for i in idx] for split, idx in parts.items()}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=40), st.lists(st.text(max_size=12), max_size=20),
       st.floats(0.05, 0.95), st.randoms(use_true_random=False))
def test_partition_is_disjoint_and_stable_under_reorder_and_growth(docs, extra, fraction, rnd):
    idx = hash_partition([fingerprint(d) for d in docs], _three(fraction))
    assert sorted(idx["search"] + idx["select"] + idx["test"]) == list(range(len(docs)))  # disjoint, covers all
    before = _positions(docs, fraction)
    grown = docs + [e for e in extra if e not in set(docs)]
    rnd.shuffle(grown)
    after = _positions(grown, fraction)
    for split in ROLES:
        # every old document keeps its split, and the old ones keep their relative order
        assert [d for d in after[split] if d in set(docs)] == before[split]


def test_identical_documents_share_a_split():
    docs = ["same text"] * 5 + [f"other {i}" for i in range(50)]
    parts = hash_partition([fingerprint(d) for d in docs], _three(0.5))
    homes = {split for split, idx in parts.items() for i in idx if docs[i] == "same text"}
    assert len(homes) == 1


def test_fraction_is_respected_and_order_is_not_file_order():
    docs = [{"id": i, "q": f"question {i}"} for i in range(4000)]
    parts = hash_partition([fingerprint(d) for d in docs], {"search": 0.6, "select": 0.3, "test": 0.1})
    for role, share in (("search", 0.6), ("select", 0.3), ("test", 0.1)):
        assert abs(len(parts[role]) / 4000 - share) < 0.03
    assert parts["search"][:50] != sorted(parts["search"][:50])
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert assign_split(fingerprint("x"), _three(0.5)) == assign_split(fingerprint("x"), _three(0.5))


def test_two_way_partition_is_the_one_made_before_the_three_roles():
    """Run folders from before the three roles read select as their old held-out split: u < f, as then."""
    from evaluators.splits import _SPLIT_SALT, unit_hash

    for i in range(300):
        fp = fingerprint(f"doc {i}")
        old = "heldout" if unit_hash(_SPLIT_SALT + fp) < 0.3 else "search"
        new = assign_split(fp, {"search": 0.7, "select": 0.3})
        assert (old, new) in (("heldout", "select"), ("search", "search"))


def test_slices_nest():
    order = fixed_order([fingerprint(i) for i in range(100)])
    sizes = [slice_size(100, f) for f in (0.1, 0.3, 1.0)]
    assert sizes == [10, 30, 100]
    slices = [first(order, k) for k in sizes]
    assert slices[0] == slices[1][:10] and slices[1] == slices[2][:30] and sorted(slices[2]) == list(range(100))


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evaluator_splits_survive_a_shuffled_and_grown_file(tmp_path):
    rows = [{"text": f"document number {i}"} for i in range(60)]
    _write(tmp_path / "a.jsonl", rows)
    grown = rows + [{"text": f"new document {i}"} for i in range(30)]
    random.Random(3).shuffle(grown)
    _write(tmp_path / "b.jsonl", grown)
    before = build_evaluator({"type": "perplexity", "data": str(tmp_path / "a.jsonl")})
    after = build_evaluator({"type": "perplexity", "data": str(tmp_path / "b.jsonl")})
    old = {r["text"] for r in rows}
    for split in ROLES:
        kept = [d for d in after.documents(split) if d in old]
        assert kept == before.documents(split)  # same members, same fixed order
    for a, b in (("search", "select"), ("search", "test"), ("select", "test")):
        assert not set(after.documents(a)) & set(after.documents(b))


def test_lm_eval_task_splits_survive_a_shuffled_file(tmp_path):
    rows = [{"question": f"{i}?", "answer": str(i)} for i in range(40)]
    for name, data in (("before", rows), ("after", random.Random(5).sample(rows, len(rows)))):
        folder = tmp_path / name
        folder.mkdir()
        _write(folder / "docs.jsonl", data)
        (folder / "t_shuffled.yaml").write_text(
            f"task: t_shuffled\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'docs.jsonl'}\n"
            "test_split: test\noutput_type: loglikelihood\ndoc_to_text: '{{question}}'\n"
            "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n"
        )
    evs = {name: build_evaluator({"type": "lm_eval", "task": "t_shuffled", "include_path": str(tmp_path / name),
                                  "fractions": {"search": 0.5, "select": 0.3, "test": 0.2}})
           for name in ("before", "after")}
    for split in ROLES:
        docs = {name: [d for _, d in ev.documents(split)] for name, ev in evs.items()}
        assert docs["before"] == docs["after"]
    questions = {split: {d["question"] for _, d in evs["before"].documents(split)} for split in ROLES}
    assert all(questions[r] for r in ROLES)  # a task with one split is partitioned three ways
    assert not questions["search"] & questions["select"] and not questions["select"] & questions["test"]
    assert len(questions["search"]) + len(questions["select"]) + len(questions["test"]) == 40


@pytest.mark.parametrize("bad", [{}, {"search": 0.0}, {"search": -0.1, "select": 1.0}])
def test_fractions_must_be_shares(bad):
    with pytest.raises(ValueError):
        assign_split(fingerprint("x"), bad)


def test_a_role_with_no_share_is_refused_in_the_space():
    from search.errors import UserError

    with pytest.raises(UserError, match="fractions.select"):
        build_evaluator({"type": "perplexity", "data": "x.txt", "fractions": {"select": 0}})


def test_a_tasks_own_process_docs_still_applies(tmp_path):
    rows = [{"question": f"{i}?", "answer": str(i)} for i in range(30)]
    _write(tmp_path / "docs.jsonl", rows)
    (tmp_path / "t_utils.py").write_text(
        "def odd_only(dataset):\n    return dataset.filter(lambda d: int(d['answer']) % 2 == 1)\n")
    (tmp_path / "t_processed.yaml").write_text(
        f"task: t_processed\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\nprocess_docs: !function t_utils.odd_only\noutput_type: loglikelihood\n"
        "doc_to_text: question\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n"
    )
    ev = build_evaluator({"type": "lm_eval", "task": "t_processed", "include_path": str(tmp_path)})
    answers = [int(d["answer"]) for split in ROLES for _, d in ev.documents(split)]
    assert sorted(answers) == list(range(1, 30, 2))


def test_interleaved_tasks_stay_in_proportion_in_every_prefix():
    from evaluators.splits import interleave

    sizes = {"big": 60, "mid": 25, "one": 1, "small": 7}
    order = interleave({name: list(range(n)) for name, n in sizes.items()})
    total = sum(sizes.values())
    assert sorted(order) == sorted((name, i) for name, n in sizes.items() for i in range(n))
    for k in range(1, total + 1):
        for name, n in sizes.items():
            got = sum(1 for t, _ in order[:k] if t == name)
            assert abs(got - k * n / total) <= 1
            assert [i for t, i in order[:k] if t == name] == list(range(got))  # each task keeps its own order
