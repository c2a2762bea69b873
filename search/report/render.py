"""The morning report of a run: ``RUN_DIR/report.html`` (plots embedded) and ``RUN_DIR/report.md``.

Built from ``selection.json`` and the study storage alone (nothing is scored here): the winner's test score
against the best hand-set baseline's, with intervals (the headline), the test scores of the models fixed before
test was scored, the table of selected models and baselines ranked on select (what chose the winner), the plots (also written
as PNG files under ``RUN_DIR/report_files/``), run facts, and how to look further (``search trials``,
optuna-dashboard).

>>> render_report(Path("results/demo"))        # doctest: +SKIP
(PosixPath('results/demo/report.html'), PosixPath('results/demo/report.md'))
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from search.config.space import Space
from search.report import plots
from search.report.tables import (
    KIND_NAMES,
    facts_rows,
    failure_rows,
    fmt,
    markdown_table,
    pairs_markdown,
    selection_frame,
    test_frame,
)
from search.selection.record import Item, Selection, read_selection, ref_label
from search.study.folder import REPORT_FILES, RunFolder

PLOTS = (
    ("history", "Optimization history (search split)"),
    ("front", "Frontier, interpolations, soups and baselines"),
    ("heatmap", "Per-layer coefficients of the winner"),
    ("importance", "Parameter importances (Optuna)"),
    ("select_vs_search", "Select against search scores"),
)


def render_report(run_dir: str | Path, *, selection: Selection | None = None, study: Any = None,
                  space: Space | None = None, layout: Any = None) -> tuple[Path, Path]:
    """Write the report files of a run folder; returns (report.html, report.md)."""
    from search.weights.layout import load_layout
    from search.study.progress import trials_frame

    folder = RunFolder(run_dir)
    run_dir = folder.path
    selection = selection or read_selection(folder)
    loaded = folder.loaded()
    space = space or loaded.space
    study = study if study is not None else folder.study()
    trials = study.get_trials(deepcopy=False)
    baselines = folder.baselines(study)
    files = folder.report_files
    files.mkdir(exist_ok=True)
    # the table `search trials RUN_DIR --out trials.csv` writes
    folder.write_text(files / "trials.csv", trials_frame(space, study, baselines).to_csv(index=False))

    if layout is None:
        layout = load_layout(loaded.base_model, trust_remote_code=space.trust_remote_code)
    figures: dict[str, Any] = {
        "history": lambda: plots.history(space, study, baselines),
        "front": lambda: plots.front(selection, trials),
        "heatmap": lambda: plots.coefficient_heatmap(selection, layout, list(space.models)),
        "importance": lambda: plots.importances(study, space),
        "select_vs_search": lambda: plots.select_vs_search(selection),
    }
    images: dict[str, bytes | str] = {}
    for name, make in figures.items():
        result = make()
        if isinstance(result, str):
            images[name] = result
            (files / f"{name}.png").unlink(missing_ok=True)
            continue
        buffer = io.BytesIO()
        result.savefig(buffer, format="png", dpi=110)
        plots.plt.close(result)
        images[name] = buffer.getvalue()
        folder.write_bytes(files / f"{name}.png", images[name])  # type: ignore[arg-type]

    context = _Context(run_dir, selection, space)
    html_path = folder.write_text(folder.report_html, _html(context, images))
    md_path = folder.write_text(folder.report_md, _markdown(context, images))
    return html_path, md_path


def dashboard_command(run_dir: Path, space: Space) -> str:
    """The optuna-dashboard command that opens this run's study as it is."""
    if space.storage:
        target = space.storage.removeprefix("journal:")
    else:
        target = str(run_dir / "study.journal")
    return f"optuna-dashboard {target}"


def result_sentence(sel: Selection) -> str:
    """The one sentence a report (and ``search start``) leads with: the winner against the best hand-set merge,
    on test, with intervals."""
    win = sel.winner_item
    if sel.headline is not None:
        h = sel.headline
        if h.winner == h.baseline:
            return f"Result: {h.sentence}."
        base = sel.item(h.baseline)
        n = sum(h.documents.values())
        where = f"on test ({n} documents used neither to search nor to choose)" if n else "on test"
        return (f"Result {where}: the winner is {h.sentence}. Winner {_with_interval(win)}; "
                f"{base.label} {_with_interval(base)}.")
    if sel.no_test:
        return f"Result: no test figures: {sel.no_test}."
    return "Result: no hand-set baseline was scored, so there is nothing to compare the winner with."


class _Context:
    """Sentences shared by the HTML and the Markdown report."""

    def __init__(self, run_dir: Path, selection: Selection, space: Space) -> None:
        self.run_dir = run_dir
        self.selection = selection
        self.space = space

    def scores(self, item: Item, split: str) -> str:
        scores = {"search": item.search, "select": item.select, "test": item.test}[split]
        return ", ".join(f"{o.name} {fmt(scores.get(o.name))}" for o in self.selection.objectives)

    def result(self) -> str:
        return result_sentence(self.selection)

    def headline(self) -> list[str]:
        """The result, the winner and why, as short paragraphs (plain text with `code` spans)."""
        sel = self.selection
        win = sel.winner_item
        n_scored = sum(1 for it in sel.items if it.select_value is not None)
        n_base = sum(1 for it in sel.items if it.kind == "baseline" and it.select_value is not None)
        objective_word = ("weighted sum of the objectives' select scores"
                          if len(sel.objectives) > 1 else f"its select {sel.objectives[0].name} score")
        lines = [
            self.result(),
            f"Winner: {win.label} (`{win.id}`, {KIND_NAMES[win.kind]}, method {win.method}).",
            f"Why: of {n_scored} models scored on the select role ({n_scored - n_base} from the search, "
            f"{n_base} hand-set baselines), it has the best {objective_word} ({sel.value_direction}). "
            f"Select: {self.scores(win, 'select')}; search: {self.scores(win, 'search')}. These select "
            "scores chose it, so they are optimistic: the test scores are the result.",
        ]
        if win.test:
            lines.append(f"Test: {self.scores(win, 'test')}.")
        base = sel.item(sel.best_baseline) if sel.best_baseline else None
        if base is not None and win.kind == "baseline" and sel.best_searched:
            found = sel.item(sel.best_searched)
            lines.append(f"No model of the search beat the hand-set baseline on select. The best from "
                         f"the search, {found.label} (`{found.id}`), scored {self.scores(found, 'select')}.")
        if sel.test_set:
            roles = ", ".join(f"{role} (`{item_id}`)" for role, item_id in sel.test_set.items())
            lines.append(f"Scored on test, a set fixed from select scores before any test document was scored: "
                         f"{roles}.")
        lines.append(f"Export it: `search export {self.run_dir} --pick best` (a Hugging Face folder and its "
                     f"mergekit YAML).")
        return lines

    def looking_further(self) -> list[str]:
        return [
            f"Every trial: `search trials {self.run_dir}` (the same numbers as this report; also "
            f"`{REPORT_FILES}/trials.csv`).",
            f"The study in optuna-dashboard, as it is: `pip install optuna-dashboard` then "
            f"`{dashboard_command(self.run_dir, self.space)}` (study `merge-search`).",
            f"Other picks: `search export {self.run_dir} --pick soup|pareto|N|ITEM_ID`; re-select with other "
            f"knobs: `search select {self.run_dir} --top-k 8 --alphas 0.2,0.4,0.6,0.8`.",
            f"The libraries' messages (lm-eval, transformers, datasets, Optuna, Ray): `{RunFolder(self.run_dir).log_file}` "
            "(`--verbose` shows them on the terminal).",
        ]


def _with_interval(item: Item) -> str:
    if item.test_value is None:
        return "not scored on test"
    iv = item.test_interval
    return f"{item.test_value:.4f}" + (f" (95% CI {iv.low:.4f} to {iv.high:.4f})" if iv is not None else "")


TEST_NOTE = ("Each model here was fixed from select scores before any test document was scored, and scored on "
             "test once; 95% intervals are percentile bootstraps over documents (10,000 resamples, seeded).")
TABLE_NOTE = ("This ranking on the select role is what chose the winner (so its select scores are optimistic). "
              "Search = the documents the search optimised; select = documents the search never saw, used to "
              "choose; gap = select − search; test = the figure to report, for the few models scored on it.")


def _markdown(ctx: _Context, images: dict[str, bytes | str]) -> str:
    sel = ctx.selection
    out = [f"# merge-search report: `{ctx.run_dir}`", "", f"Selected {sel.created}.", "", "## The winner", ""]
    out += [f"- {line}" for line in ctx.headline()]
    if sel.test_set:
        out += ["", "## Test scores", "", TEST_NOTE, "", markdown_table(test_frame(sel))]
    out += ["", "## Selected models and baselines, ranked on select", "", TABLE_NOTE, "",
            markdown_table(selection_frame(sel)), ""]
    for name, title in PLOTS:
        out += [f"## {title}", ""]
        image = images[name]
        out.append(f"![{title}]({REPORT_FILES}/{name}.png)" if isinstance(image, bytes)
                   else f"_Not drawn: {image}._")
        out.append("")
    out += ["## Run facts", "", pairs_markdown(facts_rows(sel)), ""]
    failures = failure_rows(sel)
    if failures:
        out += ["### Failed trials", "", pairs_markdown(failures), ""]
    if sel.greedy_log:
        out += ["### Greedy soup, step by step", "",
                "| candidate | soup search value with it | kept |", "|---|---|---|",
                *[f"| {ref_label(s.ref)} | {fmt(s.score) or 'failed'} | {'yes' if s.accepted else 'no'} |"
                  for s in sel.greedy_log], ""]
    out += ["## Looking further", ""] + [f"- {line}" for line in ctx.looking_further()] + [""]
    return "\n".join(out)


def _code_spans(text: str) -> str:
    """Escape text for HTML, turning `code` spans into <code>."""
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _html_table(frame: Any, winner_id: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        values = list(row)
        cls = ' class="winner"' if winner_id is not None and values and values[0] == winner_id else ""
        cells = "".join(f'<td class="num">{fmt(v)}</td>' if isinstance(v, float)
                        else f"<td>{html.escape(fmt(v))}</td>" for v in values)
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _pairs_html(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='facts'>{body}</table>"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
     color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.winner-box{background:#f3f8f1;border:1px solid #9c9;padding:10px 16px;border-radius:6px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 6px}
th{background:#f5f5f5;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.winner td{background:#fff3c4;font-weight:600} img{max-width:100%;border:1px solid #eee}
code{background:#f2f2f2;padding:1px 4px;border-radius:3px} .note{color:#777;font-style:italic}
"""


def _html(ctx: _Context, images: dict[str, bytes | str]) -> str:
    sel = ctx.selection
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>merge-search report</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>merge-search report: <code>{html.escape(str(ctx.run_dir))}</code></h1>",
             f"<p>Selected {html.escape(sel.created)}.</p>",
             "<h2>The winner</h2><div class='winner-box'>",
             *[f"<p>{_code_spans(line)}</p>" for line in ctx.headline()], "</div>",
             *([f"<h2>Test scores</h2><p>{html.escape(TEST_NOTE)}</p>", _html_table(test_frame(sel))]
               if sel.test_set else []),
             "<h2>Selected models and baselines, ranked on select</h2>",
             f"<p>{html.escape(TABLE_NOTE)} The winner's row is highlighted.</p>",
             _html_table(selection_frame(sel), sel.winner)]
    for name, title in PLOTS:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        image = images[name]
        if isinstance(image, bytes):
            data = base64.b64encode(image).decode()
            parts.append(f"<img id='plot-{name}' alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<p class='note'>Not drawn: {html.escape(image)}.</p>")
    parts += ["<h2>Run facts</h2>", _pairs_html(facts_rows(sel))]
    failures = failure_rows(sel)
    if failures:
        parts += ["<h3>Failed trials</h3>", _pairs_html(failures)]
    if sel.greedy_log:
        rows = [(ref_label(s.ref), f"{fmt(s.score) or 'failed'} ({'kept' if s.accepted else 'dropped'})")
                for s in sel.greedy_log]
        parts += ["<h3>Greedy soup, step by step (soup search value with the candidate)</h3>",
                  _pairs_html(rows)]
    parts += ["<h2>Looking further</h2><ul>", *[f"<li>{_code_spans(x)}</li>" for x in ctx.looking_further()],
              "</ul></body></html>"]
    return "\n".join(parts)
