"""Write the demo world's local lm-eval tasks into ``evaluators/tasks/`` (deterministic, no seed needed).

    python -m search.demo.tasks [--out evaluators/tasks] [--n 500] [--n-test 800] [--n-text 200]

One folder a skill (``demo_add``, ``demo_rev``, ``demo_up``, ``demo_sort``, ``demo_title``), each with

- ``search.jsonl`` / ``heldout.jsonl``: ``n`` / ``n_test`` documents, disjoint inputs (fields ``query``,
  ``prompt``, ``answer``, ``continuation`` = `` answer\\n``). ``heldout`` is the test role, scored once for a
  few models: 800 documents a skill (3200 in the demo's four) put the 95 % interval of a winner's
  paired difference to a baseline at about +-0.7 points (measured: +-0.9 at 500 a skill, +-1.25 at 200).
  ``search`` (the validation split) is divided between the search and select roles: 500 documents a skill
  leave the select role enough of them that picking the best of a few finalists there is not mostly luck;
- ``demo_<skill>.yaml``: generative (greedy, until the newline, exact match after stripping), tag ``demo``;
- ``demo_<skill>_ll.yaml``: log-likelihood of `` answer\\n`` (``perplexity`` = exp of minus the mean answer
  log-likelihood, lower is better; ``acc`` = the whole answer is the greedy one), tag ``demo_ll``;
- ``data.py``: the loader the YAMLs name (``custom_dataset: !function data.load``);

and ``demo_text`` (free text, field ``text``): a ``loglikelihood_rolling`` task for perplexity.

Splits: every task has ``validation_split: search`` and ``test_split: heldout``: plain lm-eval scores the
held-out split; :func:`on_split` gives the spec that scores the other one.

Why a loader and not ``dataset_path: json`` with ``data_files``: lm-eval hands ``data_files`` to
``datasets.load_dataset`` unchanged, so a relative path is read against the working directory. ``!function``
is resolved against the YAML's own folder, so ``data.load`` finds the jsonl files next to itself from any
working directory, and nothing is written to the datasets cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from search.demo import FINETUNES, demo_tasks_dir
from search.demo.skills import SKILLS, SPLITS, Split, eval_examples, text_corpus

LOADER = '''"""This task's splits (search.jsonl, heldout.jsonl beside this file), for lm-eval.

Written by `python -m search.demo.tasks`; the task YAMLs name it as `custom_dataset: !function data.load`.
"""

from pathlib import Path

from evaluators.local_data import load_jsonl_splits


def load(**_: object) -> object:  # lm-eval passes the task's metadata as keywords: not needed here
    return load_jsonl_splits(Path(__file__).resolve().parent)
'''

GENERATIVE = """# {description}
# Written by `python -m search.demo.tasks`: edit that script, not this file.
task: {task}
tag: demo
custom_dataset: !function data.load
validation_split: search
test_split: heldout
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 16
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

LOGLIKELIHOOD = """# {description} -- log-likelihood of the right answer (a smooth score).
# Written by `python -m search.demo.tasks`: edit that script, not this file.
task: {task}_ll
tag: demo_ll
custom_dataset: !function data.load
validation_split: search
test_split: heldout
output_type: loglikelihood
doc_to_text: prompt
doc_to_target: continuation
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

TEXT = """# Free generated English (the pretraining mixture's text lines): perplexity of a whole line.
# Written by `python -m search.demo.tasks`: edit that script, not this file.
task: demo_text
custom_dataset: !function data.load
validation_split: search
test_split: heldout
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

#: lm-eval task names: generative (exact match) and log-likelihood variants, one each a skill.
GENERATIVE_TASKS: dict[str, str] = {skill: f"demo_{skill}" for skill in FINETUNES}
LOGLIKELIHOOD_TASKS: dict[str, str] = {skill: f"demo_{skill}_ll" for skill in FINETUNES}
TEXT_TASK = "demo_text"


def on_split(task: str, split: Split) -> dict[str, object]:
    """A ``TaskManager.load`` spec for ``task`` evaluated on ``split``.

    lm-eval evaluates a task's ``test_split`` (``heldout`` here); its public way to override a registered
    task's config is a group entry:
    ``manager.load(on_split("demo_add", "search"))["tasks"]["demo_add"]``.
    """
    return {"group": f"demo::{task}::{split}", "task": [{"task": task, "test_split": split}]}


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def write_tasks(out: Path, n: int = 500, n_test: int = 800, n_text: int = 200) -> list[Path]:
    """Write every demo task folder under ``out``; returns the files written. ``n`` documents in each skill's
    ``search`` split, ``n_test`` in each skill's ``heldout`` split, ``n_text`` in both splits of ``demo_text``.
    A larger ``n`` or ``n_test`` appends documents: the first ones stay the same."""
    sizes: dict[Split, int] = {"search": n, "heldout": n_test}
    written: list[Path] = []

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    for skill, task in GENERATIVE_TASKS.items():
        folder = out / task
        desc = SKILLS[skill].description
        for split in SPLITS:
            rows = [{"query": e.query, "prompt": e.prompt, "answer": e.answer,
                     "continuation": f" {e.answer}\n"}
                    for e in eval_examples(skill, split, sizes[split])]
            put(folder / f"{split}.jsonl", _jsonl(rows))
        put(folder / "data.py", LOADER)
        put(folder / f"{task}.yaml", GENERATIVE.format(task=task, description=desc))
        put(folder / f"{task}_ll.yaml", LOGLIKELIHOOD.format(task=task, description=desc))
    folder = out / TEXT_TASK
    for split in SPLITS:
        put(folder / f"{split}.jsonl", _jsonl([{"text": t} for t in text_corpus(split, n_text)]))
    put(folder / "data.py", LOADER)
    put(folder / f"{TEXT_TASK}.yaml", TEXT)
    return written


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.demo.tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=demo_tasks_dir())
    ap.add_argument("--n", type=int, default=500, help="documents in a skill's search (validation) split")
    ap.add_argument("--n-test", type=int, default=800, help="documents in a skill's heldout (test) split")
    ap.add_argument("--n-text", type=int, default=200, help="documents in each split of demo_text")
    args = ap.parse_args(argv)
    files = write_tasks(args.out, args.n, args.n_test, args.n_text)
    print(f"wrote {len(files)} files under {args.out}")


if __name__ == "__main__":
    main()
