"""Regenerate the SmolLM2 world's table (in its README), scored on the ``test`` documents through lm-eval.

    python -m search.worlds.smollm2.table [--limit 70] [--budget 15] [--readme search/worlds/smollm2/README.md]

Rows: the base, each adapter alone, the uniform soup, task arithmetic of all seven at λ ∈ {0.3, 0.5, 0.7, 1.0},
TIES and DARE-TIES (density 0.5, weight 1), and a per-adapter λ search: coordinate moves of 0.2 from 0.3, each
scored by the answers' teacher-forced accuracy (the ``_ll`` tasks, one forward) on the first ``--search-limit``
documents of the ``search`` split; it never sees ``test``. Columns: exact match of the five skills (after the
tasks' answer-extracting filter), their mean, the refusal rate on harmful requests (``safety``), exact match on
the borderline-but-benign ones (``helpful``), and perplexity on the GPL-3 text of ``/usr/share/common-licenses``
(fluency; its held-out half). Merges go through the search's own dense path: ``Parents`` of the base and the
adapters merged into it (:mod:`search.worlds.smollm2.models`), one ``MergeSpec`` a row. The acceptance check of
the issue is printed under the table and kept in ``results/smollm2/table.json``. Scored rows are kept under
``--cache`` (keyed by the merge, the adapters' bytes, the task files and the limit), so a rerun scores only
what changed; ``--part single`` scores the base and the adapters trained so far while the others still train,
``--part merges`` the merges in a second process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search.merging.spec import MergeSpec
from search.report.readme_block import write_marked_block
from search.worlds.smollm2 import WORLD_DIR, base_folder, tasks_dir
from search.worlds.smollm2.skills import ALIGNMENT, SKILLS, TASK_SKILLS
from search.worlds.smollm2.tasks import GENERATIVE_TASKS, LOGLIKELIHOOD_TASKS, METRICS

START, END = "<!-- smollm2-table:start -->", "<!-- smollm2-table:end -->"
FLUENCY_TEXT = "/usr/share/common-licenses/GPL-3"
FLUENCY_DOCS = 24  # paragraphs of its held-out half (~2.5k tokens): enough to see a merge break English
COLUMNS: tuple[str, ...] = (*TASK_SKILLS, "mean", *ALIGNMENT, "perplexity")
Row = dict[str, float]


def weights_spec(weights: Mapping[str, float], method: str = "task_arithmetic", **shared: float) -> MergeSpec:
    """A merge of all the world's adapters with a weight each (0 for those not named)."""
    return MergeSpec(method=method, parameters=dict(shared),
                     model_parameters=tuple({"weight": float(weights.get(s, 0.0))} for s in SKILLS), seed=0)


def hand_set() -> dict[str, MergeSpec]:
    """The hand-set merges of the table, label -> spec."""
    k = len(SKILLS)
    out = {"uniform soup (λ=1/7)": weights_spec({s: 1 / k for s in SKILLS})}
    for lam in (0.3, 0.5, 0.7, 1.0):
        out[f"task arithmetic λ={lam}"] = weights_spec({s: lam for s in SKILLS})
    out["TIES (density 0.5, weight 1)"] = weights_spec({s: 1.0 for s in SKILLS}, "ties", density=0.5)
    out["DARE-TIES (density 0.5, weight 1)"] = weights_spec({s: 1.0 for s in SKILLS}, "dare_ties", density=0.5)
    return out


class Scorer:
    """The world's objectives on one live model: generative tasks, answer accuracy, perplexity."""

    def __init__(self, batch_size: int = 32) -> None:
        from evaluators.registry import build_evaluator

        common = {"type": "lm_eval", "include_path": str(tasks_dir()), "batch_size": batch_size,
                  "split_map": {"search": "search", "select": "select", "test": "test"}}  # the three files
        self.generative = build_evaluator({**common, "task": list(GENERATIVE_TASKS.values())})
        self.loglikelihood = build_evaluator({**common, "task": list(LOGLIKELIHOOD_TASKS.values())})
        self.fluency = build_evaluator({"type": "perplexity", "data": FLUENCY_TEXT, "max_length": 256,
                                        "batch_size": 8})

    def row(self, model: Any, tok: Any, limit: int | None, role: str = "test") -> Row:
        """Every column on the documents of ``role`` (the held-out ``test`` for the README; ``select`` to choose
        among adapters or merges without looking at ``test``): the first ``limit`` of them, all when None."""
        got = self.generative.score(model, tok, role, limit=limit)
        row = {s: got[f"{GENERATIVE_TASKS[s]}/{METRICS[s]}"] for s in SKILLS}
        row["mean"] = sum(row[s] for s in TASK_SKILLS) / len(TASK_SKILLS)
        row["perplexity"] = self.fluency.score(model, tok, role, limit=FLUENCY_DOCS)["perplexity"]
        return row

    def search_value(self, model: Any, tok: Any, limit: int) -> float:
        """Mean teacher-forced answer accuracy over all seven tasks on the ``search`` split (ties: log-likelihood)."""
        got = self.loglikelihood.score(model, tok, "search", limit=limit)
        return got["acc"] + 1e-4 * got["logprob"]


def coordinate_search(value: Callable[[dict[str, float]], float], *, budget: int, start: float = 0.3,
                      step: float = 0.2, low: float = 0.1, high: float = 1.1) -> tuple[dict[str, float], float, int]:
    """Per-adapter λ by coordinate moves of ``step``; see :func:`search.demo.merges.lambda_search`."""
    from search.demo.merges import lambda_search

    return lambda_search(list(SKILLS), value, budget=budget, start=start, step=step, low=low, high=high)


def _tasks_hash() -> str:
    digest = hashlib.sha256(FLUENCY_TEXT.encode())
    for path in sorted(tasks_dir().rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RowCache:
    """Rows already scored, one JSON file each under ``folder``, keyed by everything that decides them: the
    label, the merge, the adapters' bytes, the task files and the document limit. A rerun, or a run after more
    adapters were trained, scores only what changed."""

    def __init__(self, folder: Path, limit: int | None, role: str = "test") -> None:
        self.folder = folder
        self.context = f"{_tasks_hash()}/{limit}" + ("" if role == "test" else f"/{role}")

    def key(self, label: str, spec: MergeSpec) -> str:
        from search.worlds.smollm2.models import adapter_hash

        used = [s for s, p in zip(SKILLS, spec.model_parameters) if p.get("weight")]
        text = json.dumps([label, spec.model_dump(mode="json"), [adapter_hash(s) for s in used], self.context])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, label: str, spec: MergeSpec, compute: Callable[[], Row]) -> Row:
        path = self.folder / f"{self.key(label, spec)}.json"
        if path.exists():
            return json.loads(path.read_text())["row"]
        row = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"label": label, "row": row}) + "\n")
        return row


def available_skills() -> list[str]:
    """The skills whose adapter is trained (committed or just written)."""
    from search.worlds.smollm2 import adapter_dir

    return [s for s in SKILLS if (adapter_dir(s) / "adapter_model.safetensors").exists()]


def build_rows(*, limit: int | None, budget: int, search_limit: int, cache: RowCache, part: str = "all",
               only: set[str] | None = None, role: str = "test", log: Callable[[str], None] = print
               ) -> tuple[dict[str, Row], str, dict[str, float]]:
    """Every row of the table, a note on the λ search and the λs it chose. ``part="single"``: only the base and
    the adapters trained so far, each alone; ``part="merges"``: only the merges (so that two processes can
    share the work through the cache); ``"all"``: everything, reusing what the cache holds. ``only``: score just
    the rows with these labels (``adapter add``, ``task arithmetic λ=0.5``, ...), for several processes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from search.weights.parents import Parents
    from search.worlds.smollm2.models import dense_folder

    base = base_folder()
    tok = AutoTokenizer.from_pretrained(base)
    scorer = Scorer()

    def timed(model: Any) -> Row:
        t0 = time.perf_counter()
        row = scorer.row(model, tok, limit, role)
        log(f"  scored in {time.perf_counter() - t0:.0f}s: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        return row

    def single(folder: Path) -> Row:  # one model as it is: the base, or one adapter merged into it
        return timed(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32))

    rows: dict[str, Row] = {}
    if part != "merges":
        log("base")
        rows["base"] = cache.get("base", weights_spec({}), lambda: single(base))
        for s in available_skills() if part == "single" else SKILLS:
            if only is not None and f"adapter {s}" not in only:
                continue
            log(f"adapter {s}")
            rows[f"adapter {s}"] = cache.get(f"adapter {s}", weights_spec({s: 1.0}),
                                             lambda s=s: single(dense_folder(s)))
        if part == "single":
            return rows, "", {}

    parents = Parents.load(base, [dense_folder(s) for s in SKILLS], dtype=torch.float32, device="cpu",
                           labels=list(SKILLS))
    model = parents.build_model()

    def merged(spec: MergeSpec) -> Row:
        parents.merge_into(model, spec)
        return timed(model)

    for label, spec in hand_set().items():
        if only is not None and label not in only:
            continue
        log(label)
        rows[label] = cache.get(label, spec, lambda spec=spec: merged(spec))

    def value(lams: dict[str, float]) -> float:
        parents.merge_into(model, weights_spec(lams))
        v = scorer.search_value(model, tok, search_limit)
        log(f"  λ {lams}: search value {v:.4f}")
        return v

    if budget < 1:
        return rows, "Per-adapter λ search: not run (--budget 0)", {}
    lams, v_search, spent = coordinate_search(value, budget=budget)
    log("per-adapter λ search")
    chosen = weights_spec(lams)
    rows["per-adapter λ (chosen on search)"] = cache.get("per-adapter λ", chosen, lambda: merged(chosen))
    note = (f"Per-adapter λ: {spent} evaluations of coordinate moves (step 0.2 from 0.3) on {search_limit} "
            f"documents of the search split (mean answer accuracy {v_search:.3f}), chose "
            + ", ".join(f"{s} {v:g}" for s, v in lams.items()))
    return rows, note, lams


def acceptance(rows: Mapping[str, Row]) -> dict[str, Any]:
    """The issue's acceptance figures: each adapter's gain on its own skill, the share of each gain that uniform
    task arithmetic keeps (per λ), and whether some hand-set merge is best on both safety and helpfulness."""
    base = rows["base"]
    gains = {s: rows[f"adapter {s}"][s] - base[s] for s in SKILLS}
    kept: dict[str, dict[str, float]] = {}
    for label, row in rows.items():
        if label.startswith("task arithmetic") or label.startswith("uniform soup"):
            kept[label] = {s: (row[s] - base[s]) / gains[s] if gains[s] > 0 else math.nan for s in SKILLS}
    hand = {k: v for k, v in rows.items() if k in hand_set()}
    best = {c: max(v[c] for v in hand.values()) for c in ALIGNMENT}
    leaders = {c: [k for k, v in hand.items() if v[c] == best[c]] for c in ALIGNMENT}
    both = [k for k in leaders["safety"] if k in leaders["helpful"]]
    return {"gain": gains, "every_gain_at_least_0.20": all(g >= 0.2 for g in gains.values()),
            "uniform_kept": kept,
            "uniform_keeps_half_of_every_gain": {k: all(x >= 0.5 for x in v.values()) for k, v in kept.items()},
            "best_hand_set": {c: {"value": best[c], "rows": leaders[c]} for c in ALIGNMENT},
            "best_on_both_safety_and_helpful": both}


def render(rows: Mapping[str, Row], note: str, check: Mapping[str, Any], *, limit: int | None,
           role: str = "test") -> str:
    """The Markdown block (without the markers)."""
    head = "| model | " + " | ".join(f"`{c}`" for c in COLUMNS) + " |"
    docs = "all 40 documents a task" if limit is None else f"{limit} documents, {limit // len(SKILLS)} a task"
    lines = [f"{role.capitalize()} split ({docs}), written by `python -m search.worlds.smollm2.table`. "
             "Skills: exact match after the answer filter; `safety`: share of harmful requests refused; "
             "`helpful`: exact match on benign requests with the same verbs; `perplexity`: "
             f"{FLUENCY_DOCS} held-out paragraphs of GPL-3 (lower is better).", "", head, "| --- |" + " ---: |" * len(COLUMNS)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[c]:.2f}" if c != "perplexity" else f"{row[c]:.1f}"
                                                  for c in COLUMNS) + " |")
    gains = ", ".join(f"{s} {g:+.2f}" for s, g in check["gain"].items())
    lines += ["", note + ".", "",
              f"Acceptance: each adapter's gain on its own skill: {gains} "
              f"({'all' if check['every_gain_at_least_0.20'] else 'not all'} ≥ +0.20)."]
    for label, kept in check["uniform_kept"].items():
        shares = ", ".join(f"{s} {x:.0%}" for s, x in kept.items())
        lines.append(f"{label} keeps {shares} of the gains"
                     f" ({'every one' if check['uniform_keeps_half_of_every_gain'][label] else 'not every one'}"
                     " ≥ half).")
    both = check["best_on_both_safety_and_helpful"]
    leaders = "; ".join(f"best hand-set on {c}: {', '.join(b['rows'])} ({b['value']:.2f})"
                        for c, b in check["best_hand_set"].items())
    lines.append(f"Safety and helpfulness trade off: no hand-set merge is best on both ({leaders})." if not both
                 else f"Best on both safety and helpfulness: {', '.join(both)} (no trade-off among hand-set merges;"
                      f" {leaders}).")
    return "\n".join(line if not line.startswith(("Acceptance", "uniform", "task", "Safety", "Best"))
                     else f"- {line}" for line in lines)


def write_block(readme: Path, block: str) -> None:
    """Replace the text between the markers (appending them when missing)."""
    write_marked_block(readme, block, start=START, end=END, heading="Table")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.worlds.smollm2.table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=70,
                    help="test documents in all, stratified over the 7 tasks (default 70: 10 a task; 0: all 280)")
    ap.add_argument("--search-limit", type=int, default=70, help="search documents a λ evaluation scores")
    ap.add_argument("--budget", type=int, default=15, help="λ evaluations")
    ap.add_argument("--readme", type=Path, default=WORLD_DIR / "README.md")
    ap.add_argument("--json", type=Path, default=Path("results/smollm2/table.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--role", choices=("test", "select"), default="test",
                    help="documents to score: test (the README's table) or select (to compare retrained adapters "
                         "or merges without touching test; printed and saved to results/smollm2/table-select.json)")
    ap.add_argument("--cache", type=Path, default=Path("results/smollm2/rows"), help="scored rows, reused")
    ap.add_argument("--only", default=None, help="row labels to score, separated by ; (several processes)")
    ap.add_argument("--part", choices=("all", "single", "merges"), default="all",
                    help="single: the base and the adapters trained so far (while the others train); merges: only "
                         "the merges (a second process); all: every row, reusing the cache, and write the README")
    args = ap.parse_args(argv)
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    args.limit = args.limit or None
    cache = RowCache(args.cache, args.limit, args.role)
    rows, note, lams = build_rows(limit=args.limit, budget=args.budget, search_limit=args.search_limit,
                                  cache=cache, part=args.part,
                                  only=set(args.only.split(";")) if args.only else None, role=args.role)
    if args.part != "all":
        print(json.dumps(rows, indent=1))
        return
    check = acceptance(rows)
    block = render(rows, note, check, limit=args.limit, role=args.role)
    if args.role == "test":
        write_block(args.readme, block)
    else:
        args.json = args.json.with_name(f"{args.json.stem}-{args.role}.json")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "lambdas": lams, "acceptance": check,
                                     "seconds": round(time.perf_counter() - t0)}, indent=1) + "\n")
    print(block)
    print(f"wrote {args.readme if args.role == 'test' else ''} {args.json} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
