"""The report's plots (matplotlib, Agg backend): each function returns a Figure, or a sentence saying why not.

- :func:`history`: Optuna's optimization history (``optuna.visualization.matplotlib``) of the sampled trials on
  the search split, one panel per objective (the weighted view in weighted mode), with the best baseline's line;
- :func:`front`: the frontier on the search split (and the same models on select) with the interpolation
  curves, the soups and the baselines marked, and in Pareto mode the select-role front scored on test with its
  intervals; with one objective, score against alpha along each curve;
- :func:`coefficient_heatmap`: the winner's coefficients per layer (rows: parameter, model, module kind);
- :func:`importances`: Optuna's parameter importance plot (PED-ANOVA) per objective;
- :func:`select_vs_search`: select against search score of every scored model: overfitting shows as the
  distance below the diagonal (above it, for objectives that are minimised).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from search.config.space import Space  # noqa: E402
from search.selection.record import Item, Selection, ref_label  # noqa: E402
from search.study.candidate import read_record  # noqa: E402

COLORS = {"trial": "#1f77b4", "baseline": "#d62728", "interpolation": "#2ca02c", "greedy_soup": "#9467bd",
          "uniform_soup": "#8c564b"}
MARKERS = {"trial": "o", "baseline": "^", "interpolation": ".", "greedy_soup": "*", "uniform_soup": "P"}


def _complete(trials: Sequence[Any]) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.COMPLETE]


def _sampled(trials: Sequence[Any]) -> list[Any]:
    """The complete trials the sampler proposed (not the hand-set baselines)."""
    return [t for t in _complete(trials) if read_record(t.user_attrs).baseline is None]


def _view(study: Any, trials: Sequence[Any]) -> Any:
    """An in-memory study of some of a run's trials, for Optuna's plots (the run's own is not touched)."""
    import optuna

    view = optuna.create_study(directions=study.directions)
    view.add_trials(trials)
    return view


def _optuna_plot(draw: Any) -> Any:
    """Call an ``optuna.visualization.matplotlib`` function (experimental: its warning says nothing to a user)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return draw()


def _side_by_side(figures: list[Figure], width: float = 5.5, height: float = 4.0) -> Figure:
    """One figure of several (Optuna's plots each draw their own), as images side by side."""
    fig, axes = plt.subplots(1, len(figures), figsize=(width * len(figures), height), squeeze=False)
    for ax, part in zip(axes[0], figures):
        part.canvas.draw()
        ax.imshow(part.canvas.buffer_rgba())
        ax.axis("off")
        plt.close(part)
    fig.tight_layout()
    return fig


def _history_view(trials: Sequence[Any], direction: str, value: Any) -> Any:
    """A one-objective in-memory study for Optuna's history plot: every trial of the run in order (so the view's
    trial numbers are the run's), the sampled complete ones with ``value(trial)``, the rest (baselines, pruned,
    failed, running) as failed placeholders, which the plot leaves out."""
    import optuna
    from optuna.trial import TrialState, create_trial

    view = optuna.create_study(direction=direction)
    keep = {t.number for t in _sampled(trials)}
    view.add_trials([create_trial(state=TrialState.COMPLETE, value=value(t)) if t.number in keep
                     else create_trial(state=TrialState.FAIL) for t in sorted(trials, key=lambda t: t.number)])
    return view


def history(space: Space, study: Any, baselines: Sequence[Any] = ()) -> Figure | str:
    """Optuna's optimization history of the sampled trials on the search split (points and the best so far), with
    the best baseline as a dashed line: the study's value (one objective, or the weighted view), or one panel per
    objective in pareto mode."""
    from optuna.visualization.matplotlib import plot_optimization_history

    trials = study.get_trials(deepcopy=False)
    if not _sampled(trials):
        return "no complete sampled trial yet"
    done = [b for b in baselines if b.state == "COMPLETE"]
    panels: list[tuple[Any, str, list[float], str]] = []
    if len(study.directions) == 1:
        name = space.objectives[0].name if len(space.objectives) == 1 else "weighted"
        direction = "maximize" if study.direction.name == "MAXIMIZE" else "minimize"
        panels.append((lambda t: t.values[0], f"{name} (search)", [b.values[0] for b in done if b.values],
                       direction))
    else:
        for i, o in enumerate(space.objectives):
            panels.append(((lambda t, i=i: t.values[i]), f"{o.name} ({o.metric}, search)",
                           [b.search[o.name] for b in done if o.name in b.search], o.direction))
    figures = []
    for value, label, base, direction in panels:
        view = _history_view(trials, direction, value)
        ax = _optuna_plot(lambda view=view, label=label: plot_optimization_history(view, target_name=label))
        if base:
            ax.axhline(max(base) if direction == "maximize" else min(base), color=COLORS["baseline"], ls="--",
                       lw=1, label="best baseline")
            ax.legend(fontsize=8)
        ax.set_title(f"{label}: {direction}", fontsize=10)
        figures.append(ax.figure)
    return figures[0] if len(figures) == 1 else _side_by_side(figures)


def _curves(selection: Selection) -> dict[tuple[str, str], list[Item]]:
    """Interpolation items by (end a, end b), sorted by alpha."""
    curves: dict[tuple[str, str], list[Item]] = {}
    for it in selection.items:
        if it.kind == "interpolation" and it.ends is not None:
            curves.setdefault(tuple(it.ends), []).append(it)  # type: ignore[arg-type]
    return {k: sorted(v, key=lambda it: it.alpha or 0.0) for k, v in curves.items()}


def _single(selection: Selection) -> dict[str, Item]:
    """Trial and baseline items by ref."""
    return {it.refs[0]: it for it in selection.items if it.kind in ("trial", "baseline")}


def front(selection: Selection, trials: Sequence[Any]) -> Figure | str:
    """The frontier with interpolation curves, soups and baselines (search and select panels)."""
    objs = selection.objectives
    singles = _single(selection)
    curves = _curves(selection)
    if selection.mode == "weighted" or len(objs) == 1:
        return _alpha_curves(selection, singles, curves)
    x, y = objs[0].name, objs[1].name
    tested = [selection.item(i) for i in selection.test_front]
    tested = [it for it in tested if x in it.test and y in it.test]
    fig, axes = plt.subplots(1, 3 if tested else 2, figsize=(18 if tested else 12, 5), squeeze=False)
    if tested:
        _front_on_test(axes[0][2], selection, tested, x, y)
    for ax, split in zip(axes[0], ("search", "select")):
        def point(it: Item, split: str = split) -> tuple[float, float] | None:
            scores = it.search if split == "search" else it.select
            return (scores[x], scores[y]) if x in scores and y in scores else None

        if split == "search":
            others = [read_record(t.user_attrs).search for t in _sampled(trials)]
            ax.scatter([o.get(x) for o in others], [o.get(y) for o in others], s=12, color="#bbbbbb",
                       label="trials")
        pts = [point(singles[n]) for n in selection.frontier if n in singles]
        pts = [p for p in pts if p is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", color="black", ms=5, lw=1.2,
                    label="frontier (search)", zorder=4)
        for i, ((a, b), items) in enumerate(curves.items()):
            chain = [singles.get(a), *items, singles.get(b)]
            cpts = [point(it) for it in chain if it is not None]
            cpts = [p for p in cpts if p is not None]
            if cpts:
                ax.plot([p[0] for p in cpts], [p[1] for p in cpts], "--.", color=COLORS["interpolation"],
                        alpha=0.8, lw=1, label="interpolations" if i == 0 else None, zorder=3)
        for it in selection.items:
            if it.kind in ("baseline", "greedy_soup", "uniform_soup"):
                p = point(it)
                if p is None:
                    continue
                ax.scatter([p[0]], [p[1]], marker=MARKERS[it.kind], s=90 if it.kind != "baseline" else 45,
                           color=COLORS[it.kind], zorder=5, edgecolor="black", linewidth=0.4)
                ax.annotate(it.baseline or it.kind.replace("_", " "), p, fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        win = selection.winner_item
        wp = point(win)
        if wp is not None:
            ax.scatter([wp[0]], [wp[1]], s=260, facecolors="none", edgecolors="red", linewidths=2, zorder=6,
                       label=f"winner ({win.id})")
        ax.set_xlabel(f"{x} ({objs[0].direction})")
        ax.set_ylabel(f"{y} ({objs[1].direction})")
        ax.set_title("search split" if split == "search" else "select role (same models)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _front_on_test(ax: Any, selection: Selection, tested: list[Item], x: str, y: str) -> None:
    """The select-role front scored on test: each point with its per-objective 95 % intervals, in front order."""
    objs = selection.objectives
    for it in tested:
        xv, yv = it.test[x], it.test[y]
        ix, iy = it.test_intervals.get(x), it.test_intervals.get(y)
        ax.errorbar([xv], [yv], xerr=None if ix is None else [[xv - ix.low], [ix.high - xv]],
                    yerr=None if iy is None else [[yv - iy.low], [iy.high - yv]], fmt=MARKERS[it.kind],
                    color=COLORS[it.kind], ms=8 if it.kind != "interpolation" else 12, capsize=3, lw=1, zorder=4)
        ax.annotate(it.baseline or it.id, (xv, yv), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.plot([it.test[x] for it in tested], [it.test[y] for it in tested], ":", color="black", lw=1,
            label="front on select, in order", zorder=3)
    win = selection.winner_item
    if win.id in {it.id for it in tested}:
        ax.scatter([win.test[x]], [win.test[y]], s=260, facecolors="none", edgecolors="red", linewidths=2,
                   zorder=6, label=f"winner ({win.id})")
    ax.set_xlabel(f"{x} ({objs[0].direction})")
    ax.set_ylabel(f"{y} ({objs[1].direction})")
    ax.set_title("test role: the select front, 95% intervals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _alpha_curves(selection: Selection, singles: dict[str, Item], curves: dict[tuple[str, str], list[Item]]
                  ) -> Figure | str:
    if not curves:
        return "no interpolation curve (fewer than two frontier points)"
    single = len(selection.objectives) == 1
    name = selection.objectives[0].name if single else "weighted sum"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((a, b), items) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        for split, style in (("search", "-o"), ("select", "--s")):
            xs, ys = [], []
            chain = [(0.0, singles.get(a)), *[(it.alpha or 0.0, it) for it in items], (1.0, singles.get(b))]
            for alpha, it in chain:
                if it is None:
                    continue
                value = (it.search if split == "search" else it.select).get(name) if single else \
                    (it.search_value if split == "search" else it.select_value)
                if value is not None:
                    xs.append(alpha)
                    ys.append(value)
            ax.plot(xs, ys, style, color=color, ms=4, lw=1,
                    label=f"{ref_label(a)}→{ref_label(b)} {'search' if split == 'search' else 'select'}")
    for item_id, kind in ((selection.best_baseline, "baseline"), ("greedy-soup", "greedy_soup")):
        found = next((it for it in selection.items if it.id == item_id), None)
        value = None if found is None else (found.select.get(name) if single else found.select_value)
        if value is not None:
            ax.axhline(value, color=COLORS[kind], ls=":", lw=1.2, label=f"{found.label} (select)")
    ax.set_xlabel("α (0: first end, 1: second end)")
    ax.set_ylabel(f"{name}")
    ax.set_title("interpolations between frontier points (search: solid, select: dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def coefficient_rows(selection: Selection, item: Item, layout: Any, model_names: Sequence[str]
                     ) -> tuple[list[str], list[list[float]]]:
    """Rows (label, values per layer) of an item's numeric coefficients, one per parameter / model / kind."""
    labels: list[str] = []
    rows: list[list[float]] = []
    reps: dict[tuple[int, str], str] = {}
    for name, role in layout.roles.items():
        if role.layer is not None and role.kind in ("attention", "mlp", "norm"):
            reps.setdefault((role.layer, role.kind), name)
    kinds = [k for k in ("attention", "mlp", "norm") if any(kk == k for (_, kk) in reps)]
    for part in item.parts:
        spec = selection.specs[part.ref]
        prefix = f"{ref_label(part.ref)}×{part.coefficient:.2g} " if len(item.parts) > 1 else ""
        method = spec.merge_method
        table: dict[tuple[str, str, str], list[float]] = {}
        for kind in kinds:
            for layer in range(layout.num_layers):
                name = reps.get((layer, kind))
                if name is None:
                    continue
                params = spec.tensor_params(name, layout)
                for p in method.per_model_params:
                    if p.kind == "bool" or p.name not in params.per_model:
                        continue
                    for i, v in enumerate(params.per_model[p.name].tolist()):
                        table.setdefault((p.name, model_names[i] if i < len(model_names) else str(i), kind),
                                         [math.nan] * layout.num_layers)[layer] = float(v)
                for p in method.global_params:
                    v = params.globals.get(p.name)
                    if p.kind == "bool" or v is None or isinstance(v, bool):
                        continue
                    table.setdefault((p.name, "", kind), [math.nan] * layout.num_layers)[layer] = float(v)
        # one row per (parameter, model) when every kind takes the same values
        grouped: dict[tuple[str, str], dict[str, list[float]]] = {}
        for (pname, model, kind), values in table.items():
            grouped.setdefault((pname, model), {})[kind] = values
        for (pname, model), by_kind in grouped.items():
            distinct = {tuple(v) for v in by_kind.values()}
            if _constant_default(pname, method, by_kind):
                continue
            if len(distinct) == 1:
                labels.append(f"{prefix}{pname} {model}".strip())
                rows.append(next(iter(by_kind.values())))
            else:
                for kind, values in by_kind.items():
                    labels.append(f"{prefix}{pname} {model} {kind}".strip())
                    rows.append(values)
    return labels, rows


def _constant_default(pname: str, method: Any, by_kind: dict[str, list[float]]) -> bool:
    """A parameter left at its default everywhere (e.g. task arithmetic's unused density) is not drawn."""
    default = method.param(pname).default
    values = {v for vals in by_kind.values() for v in vals if not math.isnan(v)}
    return default is not None and not isinstance(default, bool) and values == {float(default)}


def coefficient_heatmap(selection: Selection, layout: Any, model_names: Sequence[str], max_rows: int = 40
                        ) -> Figure | str:
    """The winner's coefficients per decoder layer as a heatmap."""
    import numpy as np

    item = selection.winner_item
    labels, rows = coefficient_rows(selection, item, layout, model_names)
    if not rows:
        return f"the winner ({item.id}) has no numeric coefficient that varies"
    labels, rows = labels[:max_rows], rows[:max_rows]
    data = np.array(rows, dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * layout.num_layers + 3), 0.42 * len(rows) + 1.6))
    image = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(layout.num_layers), [str(i) for i in range(layout.num_layers)], fontsize=8)
    ax.set_xlabel("decoder layer")
    ax.set_title(f"coefficients of the winner: {item.label}", fontsize=10)
    if data.size <= 400:
        for (r, c), v in np.ndenumerate(data):
            if not math.isnan(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < np.nanmean(data) else "black")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def _importance_targets(study: Any, space: Space) -> dict[str, Any]:
    """Label -> target for Optuna's importances. PED-ANOVA rates what leads to LOW target values: the values of
    maximised objectives are negated."""
    import optuna

    targets: dict[str, Any] = {}
    if len(study.directions) == 1:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        targets["weighted" if len(space.objectives) > 1 else space.objectives[0].name] = \
            (lambda t, s=sign: s * t.values[0])
    else:
        for i, o in enumerate(space.objectives):
            sign = -1.0 if o.direction == "maximize" else 1.0
            targets[o.name] = (lambda t, i=i, s=sign: s * t.values[i])
    return targets


def _importance_trials(study: Any) -> tuple[str, list[Any], list[str]] | str:
    """(method, its complete sampled trials, the parameters they share) of the most sampled method, or why not."""
    complete = [t for t in _sampled(study.get_trials(deepcopy=False)) if t.params]
    if len(complete) < 3:
        return f"only {len(complete)} complete sampled trial(s): too few for parameter importances"
    methods = [read_record(t.user_attrs).method or "" for t in complete]
    method = max(set(methods), key=methods.count)
    chosen = [t for t, m in zip(complete, methods) if m == method]
    names = set.intersection(*(set(t.params) for t in chosen)) - {"method", "method_index"}
    names = {n for n in names if n.startswith(f"{method}.")} or names
    if len(chosen) < 3 or not names:
        return f"too few complete trials of one method ({method}: {len(chosen)}) for parameter importances"
    return method, chosen, sorted(names)


def importance_values(study: Any, space: Space) -> dict[str, dict[str, float]] | str:
    """Objective (or 'weighted') -> parameter -> importance, over the most sampled method's trials."""
    import optuna

    picked = _importance_trials(study)
    if isinstance(picked, str):
        return picked
    method, chosen, names = picked
    view = _view(study, chosen)
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            for label, target in _importance_targets(study, space).items():
                out[f"{label} ({method})"] = optuna.importance.get_param_importances(view, params=names,
                                                                                      target=target)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return f"Optuna could not compute importances ({type(exc).__name__}: {exc})"
    return out


def importances(study: Any, space: Space, top: int = 20) -> Figure | str:
    """Optuna's parameter importance plot (PED-ANOVA) over the most sampled method's trials, per objective."""
    from optuna.visualization.matplotlib import plot_param_importances

    picked = _importance_trials(study)
    if isinstance(picked, str):
        return picked
    method, chosen, names = picked
    view = _view(study, chosen)
    figures = []
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            for label, target in _importance_targets(study, space).items():
                ax = _optuna_plot(lambda: plot_param_importances(view, params=names, target=target,
                                                                  target_name=f"{label} ({method})"))
                ax.tick_params(axis="y", labelsize=7)
                if ax.get_legend() is not None:  # it names the target, which the title does
                    ax.get_legend().remove()
                shown = ""
                if len(names) > top:  # Optuna draws the most important at the top: show those, values unchanged
                    ax.set_ylim(len(names) - top - 0.5, len(names) - 0.5)
                    for text in ax.texts:  # (the value labels of the bars cut off)
                        text.set_clip_on(True)
                    shown = f" (top {top} of {len(names)})"
                ax.set_title(f"{label} ({method}){shown}", loc="left", fontsize=9)
                ax.set_xlabel("importance (PED-ANOVA, normalised)")
                ax.figure.set_size_inches(6.5, 0.32 * min(len(names), top) + 1.8)
                ax.figure.tight_layout()
                figures.append(ax.figure)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        for f in figures:
            plt.close(f)
        return f"Optuna could not compute importances ({type(exc).__name__}: {exc})"
    return figures[0] if len(figures) == 1 else _side_by_side(figures, width=6.5,
                                                               height=0.32 * min(len(names), top) + 1.8)


def select_vs_search(selection: Selection) -> Figure | str:
    """Held-out against search score of every scored model, per objective, with the diagonal."""
    objs = selection.objectives
    scored = [it for it in selection.items if it.select and it.search]
    if not scored:
        return "no model was scored on both splits"
    fig, axes = plt.subplots(1, len(objs), figsize=(5.2 * len(objs), 4.6), squeeze=False)
    for ax, o in zip(axes[0], objs):
        seen: set[str] = set()
        for it in scored:
            if o.name not in it.search or o.name not in it.select:
                continue
            label = it.kind.replace("_", " ") if it.kind not in seen else None
            seen.add(it.kind)
            ax.scatter([it.search[o.name]], [it.select[o.name]], marker=MARKERS[it.kind],
                       color=COLORS[it.kind], s=60 if it.kind != "interpolation" else 30, label=label,
                       edgecolor="black", linewidth=0.3)
        win = selection.winner_item
        if o.name in win.search and o.name in win.select:
            ax.scatter([win.search[o.name]], [win.select[o.name]], s=240, facecolors="none",
                       edgecolors="red", linewidths=2, label="winner")
        lo, hi = ax.get_xlim()
        lo2, hi2 = ax.get_ylim()
        a, b = min(lo, lo2), max(hi, hi2)
        ax.plot([a, b], [a, b], color="grey", lw=1, ls=":", label="select = search")
        ax.set_xlabel(f"{o.name} on the search split")
        ax.set_ylabel(f"{o.name} on select")
        ax.set_title(f"{o.name} ({o.direction})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
