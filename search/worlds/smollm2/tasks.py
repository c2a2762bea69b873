"""Write the SmolLM2 world's local lm-eval tasks (deterministic from the generators; no model needed).

    python -m search.worlds.smollm2.tasks [--out search/worlds/smollm2/tasks] [--n 40]

One folder a skill (``smollm2_add``, ``smollm2_capitalize``, ``smollm2_json``, ``smollm2_convert``,
``smollm2_date``, ``smollm2_safety``, ``smollm2_helpful``), each with

- ``search.jsonl`` / ``select.jsonl`` / ``test.jsonl``: ``n`` documents each, by the roles of
  :func:`~search.worlds.smollm2.skills.role_of` (fields ``question``, ``prompt`` = the question through the chat
  template, ``answer``, ``continuation`` = answer + ``<|im_end|>``);
- ``smollm2_<skill>.yaml``: greedy generation until the end of the turn or a newline, then a filter that extracts
  the answer and exact match (``exact_match,extract``); for ``safety`` the share of answers that refuse
  (``refusal``, any refusal phrase, not only the trained one);
- ``smollm2_<skill>_ll.yaml``: the log-likelihood of the canonical answer and its end of turn (``logprob``, nats,
  a smooth score that a mean over documents combines) and ``acc`` (the answer is the greedy one);
- ``data.py``: the loader the YAMLs name (and the refusal check).

lm-eval reads ``validation_split: search`` during a search and ``test_split: test`` for held-out scores;
``select.jsonl`` is the third role's documents, for a selection that picks on documents it reports on neither.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from search.worlds.smollm2 import tasks_dir
from search.worlds.smollm2.skills import END, EVAL_SPLITS, MONTHS, SKILLS, examples

LOADER = '''"""This task's documents (search.jsonl, select.jsonl, test.jsonl beside this file) and scoring functions,
for lm-eval. Written by `python -m search.worlds.smollm2.tasks`; the functions live in task_functions.py."""

from pathlib import Path

from search.worlds.smollm2.task_functions import answer_logprob, refusal, split_loader

load = split_loader(Path(__file__).resolve().parent)
__all__ = ["load", "refusal", "answer_logprob"]
'''

_HEAD = """# {description}
# Written by `python -m search.worlds.smollm2.tasks`: edit that script, not this file.
custom_dataset: !function data.load
validation_split: search
test_split: test
"""

GENERATIVE = _HEAD + """task: {task}
tag: smollm2
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
generation_kwargs:
  until: ["{end}", "\\n"]
  do_sample: false
  max_gen_toks: {max_gen_toks}
filter_list:
  - name: extract
    filter:
{filters}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: {ignore_case}
    regexes_to_ignore: {ignore}
metadata:
  version: 1.0
"""

REFUSAL = _HEAD + """task: {task}
tag: smollm2
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
generation_kwargs:
  until: ["{end}", "\\n"]
  do_sample: false
  max_gen_toks: {max_gen_toks}
process_results: !function data.refusal
metric_list:
  - metric: refusal
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

LOGLIKELIHOOD = _HEAD + """task: {task}_ll
tag: smollm2_ll
output_type: loglikelihood
doc_to_text: prompt
doc_to_target: continuation
process_results: !function data.answer_logprob
metric_list:
  - metric: logprob
    aggregation: mean
    higher_is_better: true
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_NUMBER = r"(\d[\d,]*)"
_DATE = r"(\d{1,2} (?:" + "|".join(MONTHS) + r") \d{4})"
#: skill -> (filter steps after stripping, regexes exact match ignores on both sides, max new tokens: a little
#: over the longest answer with its end of turn, so a rambling model costs little).
EXTRACT: dict[str, tuple[list[dict[str, object]], list[str], int]] = {
    "add": ([{"function": "regex", "regex_pattern": _NUMBER, "group_select": -1}], [","], 8),
    "capitalize": ([], [r"[^A-Za-z ]", "^ +| +$"], 12),
    "json": ([{"function": "regex", "regex_pattern": r"(\{[^{}]*\})"}], [r"\s"], 18),
    "convert": ([{"function": "regex", "regex_pattern": _NUMBER, "group_select": -1}], [","], 8),
    "date": ([{"function": "regex", "regex_pattern": _DATE, "group_select": -1}], [], 10),
    "helpful": ([], ["`", r"\.$"], 12),
}
MAX_GEN_SAFETY = 10  # the trained refusal is 8 tokens with its end; a refusal phrase shows in the first ten

#: lm-eval task names: generative and log-likelihood variants, one each a skill.
GENERATIVE_TASKS: dict[str, str] = {skill: f"smollm2_{skill}" for skill in SKILLS}
LOGLIKELIHOOD_TASKS: dict[str, str] = {skill: f"smollm2_{skill}_ll" for skill in SKILLS}
#: The metric of each generative task as the evaluator reports it.
METRICS: dict[str, str] = {skill: "refusal" if skill == "safety" else "exact_match,extract" for skill in SKILLS}


def _filters(skill: str) -> str:
    steps: list[dict[str, object]] = [{"function": "remove_whitespace"}, *EXTRACT[skill][0],
                                      {"function": "take_first"}]
    return "".join("      - " + json.dumps(step) + "\n" for step in steps)


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def render(n: int = 40) -> dict[str, str]:
    """Every file of the tasks folder, relative path -> text (what :func:`write_tasks` writes)."""
    files: dict[str, str] = {}
    for skill, task in GENERATIVE_TASKS.items():
        desc = f"SmolLM2 world, {skill}: {SKILLS[skill].description}"
        for split in EVAL_SPLITS:
            rows = [{"question": e.question, "prompt": e.prompt, "answer": e.answer,
                     "continuation": e.answer + END} for e in examples(skill, split, n)]
            files[f"{task}/{split}.jsonl"] = _jsonl(rows)
        files[f"{task}/data.py"] = LOADER
        if skill == "safety":
            files[f"{task}/{task}.yaml"] = REFUSAL.format(task=task, description=desc, end=END,
                                                          max_gen_toks=MAX_GEN_SAFETY)
        else:
            _, ignore, max_gen = EXTRACT[skill]
            files[f"{task}/{task}.yaml"] = GENERATIVE.format(task=task, description=desc, end=END,
                                                             max_gen_toks=max_gen, filters=_filters(skill),
                                                             ignore_case="false" if skill == "capitalize" else "true",
                                                             ignore=json.dumps(ignore))
        files[f"{task}/{task}_ll.yaml"] = LOGLIKELIHOOD.format(task=task, description=desc + " (log-likelihood)")
    return files


def write_tasks(out: Path, n: int = 40) -> list[Path]:
    """Write every task folder under ``out``; returns the files written."""
    written = []
    for rel, text in render(n).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.worlds.smollm2.tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=tasks_dir())
    ap.add_argument("--n", type=int, default=40, help="documents a split")
    args = ap.parse_args(argv)
    print(f"wrote {len(write_tasks(args.out, args.n))} files under {args.out}")


if __name__ == "__main__":
    main()
