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
    """Items best first by select weighted sum, the ranking that chose the winner (unscored ones last)."""
    sign = -1.0 if selection.value_direction == "maximize" else 1.0
    return sorted(selection.items, key=lambda it: (it.select_value is None,
                                                   sign * (it.select_value or 0.0)))


def interval_text(item: Item) -> str:
    """``0.8125 [0.7700, 0.8500]``: an item's weighted test value and its 95 % interval (empty when untested)."""
    if item.test_value is None:
        return ""
    iv = item.test_interval
    return fmt(item.test_value) + (f" [{fmt(iv.low)}, {fmt(iv.high)}]" if iv is not None else "")


def selection_frame(selection: Selection) -> Any:
    """One row per selected model and baseline, ranked on select (what chose the winner): search and select
    score per objective side by side, and the test score of the few models scored on test."""
    import pandas as pd

    roles = {item_id: role for role, item_id in reversed(list(selection.test_set.items()))}
    rows = []
    for it in ranked_items(selection):
        row: dict[str, Any] = {"id": it.id, "kind": KIND_NAMES[it.kind], "model": it.label,
                               "method": it.method, "frontier": "yes" if it.frontier else ""}
        for o in selection.objectives:
            s, h = it.search.get(o.name), it.select.get(o.name)
            row[f"{o.name} search"] = s
            row[f"{o.name} select"] = h
            row[f"{o.name} gap"] = (h - s) if (s is not None and h is not None) else None
        if len(selection.objectives) > 1:
            row["weighted search"] = it.search_value
            row["weighted select"] = it.select_value
        row["test [95% CI]"] = interval_text(it)
        row["note"] = (("winner" if it.id == selection.winner else roles.get(it.id, ""))
                       + (f" error: {it.error}" if it.error else ""))
        rows.append(row)
    return pd.DataFrame(rows)


def test_frame(selection: Selection) -> Any:
    """The models scored on test (fixed from select scores before test was scored), one row each: the
    figures a report states."""
    import pandas as pd

    rows = []
    for role, item_id in selection.test_set.items():
        it = selection.item(item_id)
        row: dict[str, Any] = {"role": role, "id": it.id, "model": it.label}
        for o in selection.objectives:
            row[f"{o.name} test"] = it.test.get(o.name)
        iv = it.test_interval
        row["weighted test" if len(selection.objectives) > 1 else "test"] = it.test_value
        row["95% CI"] = "" if iv is None else f"{iv.low:.4f} to {iv.high:.4f}"
        row["note"] = it.error or ""
        rows.append(row)
    return pd.DataFrame(rows)


def front_frame(selection: Selection) -> Any:
    """Pareto mode: the select-role Pareto front, scored on test, one row a point along the front: each
    objective's test score with its 95 % interval, and whether the point is still undominated on test among
    the front's points (the trade-off as documents that chose nothing see it)."""
    import pandas as pd

    from search.selection.pareto import dominates

    objs = selection.objectives
    maximize = [o.direction == "maximize" for o in objs]
    front = [selection.item(i) for i in selection.test_front]
    scored = {it.id: [it.test[o.name] for o in objs] for it in front if all(o.name in it.test for o in objs)}
    roles = {}
    for role, item_id in selection.test_set.items():
        roles.setdefault(item_id, []).append(role)
    rows = []
    for it in front:
        row: dict[str, Any] = {"id": it.id, "model": it.label}
        for o in objs:
            iv = it.test_intervals.get(o.name)
            value = it.test.get(o.name)
            row[f"{o.name} select"] = it.select.get(o.name)
            row[f"{o.name} test [95% CI]"] = fmt(value) + (f" [{fmt(iv.low)}, {fmt(iv.high)}]" if iv else "")
        mine = scored.get(it.id)
        row["undominated on test"] = ("" if mine is None else "no" if any(
            dominates(other, mine, maximize=maximize) for j, other in scored.items() if j != it.id) else "yes")
        row["note"] = ", ".join(roles.get(it.id, [])) + (f" error: {it.error}" if it.error else "")
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
        ("trials per hour", "" if f.trials_per_hour is None else f"{f.trials_per_hour:.1f}"),
        ("first trial started", f.first_start or ""),
        ("last trial finished", f.last_complete or ""),
        ("wall time, first trial to last", _duration(f.wall_seconds)),
        ("search time", _duration(f.search_seconds)),
        ("selection time", _duration(selection.seconds.get("total"))),
        ("of which test scoring", _duration(selection.seconds.get("test"))),
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
