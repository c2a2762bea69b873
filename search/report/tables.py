"""The report's tables, as pandas frames: selected models and baselines, run facts, and every trial.

The trial table is ``search trials``'s own (:func:`search.study.progress.trials_frame`), so the report and the
command show the same numbers.

>>> frame = selection_frame(selection)            # doctest: +SKIP
>>> list(frame.columns)[:4]                        # doctest: +SKIP
['id', 'kind', 'model', 'method']
"""

from __future__ import annotations

import math
from typing import Any

from search.selection.record import Item, Selection

KIND_NAMES = {"trial": "trial", "baseline": "baseline", "interpolation": "interpolation",
              "greedy_soup": "greedy soup", "uniform_soup": "uniform soup"}


def ranked_items(selection: Selection) -> list[Item]:
    """Items best first by held-out weighted sum (unscored ones last)."""
    sign = -1.0 if selection.value_direction == "maximize" else 1.0
    return sorted(selection.items, key=lambda it: (it.heldout_value is None,
                                                   sign * (it.heldout_value or 0.0)))


def selection_frame(selection: Selection) -> Any:
    """One row per selected model and baseline: search and held-out score per objective, side by side."""
    import pandas as pd

    rows = []
    for it in ranked_items(selection):
        row: dict[str, Any] = {"id": it.id, "kind": KIND_NAMES[it.kind], "model": it.label,
                               "method": it.method, "frontier": "yes" if it.frontier else ""}
        for o in selection.objectives:
            s, h = it.search.get(o.name), it.heldout.get(o.name)
            row[f"{o.name} search"] = s
            row[f"{o.name} held-out"] = h
            row[f"{o.name} gap"] = (h - s) if (s is not None and h is not None) else None
        if len(selection.objectives) > 1:
            row["weighted search"] = it.search_value
            row["weighted held-out"] = it.heldout_value
        row["note"] = (("winner" if it.id == selection.winner else "")
                       + (f" error: {it.error}" if it.error else ""))
        rows.append(row)
    return pd.DataFrame(rows)


def facts_rows(selection: Selection) -> list[tuple[str, str]]:
    """Run facts as (name, value) pairs."""
    f = selection.facts
    budget = f"/{f.budget}" if f.budget is not None else ""
    rows = [
        ("trials done", f"{f.done}{budget}"),
        ("complete / pruned / failed", f"{f.complete} / {f.pruned} / {f.failed}"),
        ("still running", str(f.running)),
        ("baselines scored", str(f.baselines)),
        ("wall time", _duration(f.wall_seconds)),
        ("trials per hour", "" if f.trials_per_hour is None else f"{f.trials_per_hour:.1f}"),
        ("first trial started", f.first_start or ""),
        ("last trial finished", f.last_complete or ""),
        ("selection time", _duration(selection.seconds.get("total"))),
        ("selection options", f"top_k={selection.options.top_k}, max_front={selection.options.max_front}, "
                              f"alphas={selection.options.alphas}, soup_size={selection.options.soup_size}"),
    ]
    return rows


def failure_rows(selection: Selection) -> list[tuple[str, str]]:
    return [(f"#{n}", reason) for n, reason in selection.facts.failures]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt(value: Any) -> str:
    """A cell as text: floats with 4 decimals, missing values empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(frame: Any) -> str:
    """A GitHub-flavoured Markdown table of a frame (no extra dependency)."""
    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def pairs_markdown(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {v.replace('|', '/')} |" for k, v in rows]])
