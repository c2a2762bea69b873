"""The report's plots (matplotlib, Agg backend): each function returns a Figure, or a sentence saying why not.

- :func:`history`: search score of every trial in order, the best so far, and the best baseline;
- :func:`front`: the frontier on the search split (and the same models on select) with the interpolation
  curves, the soups and the baselines marked; with one objective, score against alpha along each curve;
- :func:`coefficient_heatmap`: the winner's coefficients per layer (rows: parameter, model, module kind);
- :func:`importances`: Optuna's parameter importances (PED-ANOVA) per objective;
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

COLORS = {"trial": "#1f77b4", "baseline": "#d62728", "interpolation": "#2ca02c", "greedy_soup": "#9467bd",
          "uniform_soup": "#8c564b"}
MARKERS = {"trial": "o", "baseline": "^", "interpolation": ".", "greedy_soup": "*", "uniform_soup": "P"}


def _complete(trials: Sequence[Any]) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in trials if t.state == TrialState.COMPLETE]


def history(space: Space, trials: Sequence[Any], baselines: Sequence[Any] = ()) -> Figure | str:
    """Search score per trial number, best so far, and the best baseline, one panel per objective."""
    sampled = sorted((t for t in _complete(trials) if "baseline" not in t.user_attrs), key=lambda t: t.number)
    done_baselines = [b for b in baselines if b.state == "COMPLETE"]
    if not sampled and not done_baselines:
        return "no complete trial yet"
    objectives = space.objectives
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.5 * len(objectives), 3.8), squeeze=False)
    for ax, o in zip(axes[0], objectives):
        key = f"search.{o.name}"
        xs = [t.number for t in sampled if key in t.user_attrs]
        ys = [t.user_attrs[key] for t in sampled if key in t.user_attrs]
        ax.scatter(xs, ys, s=18, color=COLORS["trial"], label="trial", zorder=3)
        pick = max if o.direction == "maximize" else min
        best, running = [], None
        for y in ys:
            running = y if running is None else pick(running, y)
            best.append(running)
        if xs:
            ax.step(xs, best, where="post", color="black", lw=1.2, label="best so far")
        values = [b.search[o.name] for b in done_baselines if o.name in b.search]
        if values:
            ax.axhline(pick(values), color=COLORS["baseline"], ls="--", lw=1, label="best baseline")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"{o.name} ({o.metric}, search)")
        ax.set_title(f"{o.name}: {o.direction}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


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
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), squeeze=False)
    for ax, split in zip(axes[0], ("search", "select")):
        def point(it: Item, split: str = split) -> tuple[float, float] | None:
            scores = it.search if split == "search" else it.select
            return (scores[x], scores[y]) if x in scores and y in scores else None

        if split == "search":
            others = [t for t in _complete(trials) if "baseline" not in t.user_attrs]
            ax.scatter([t.user_attrs.get(f"search.{x}") for t in others],
                       [t.user_attrs.get(f"search.{y}") for t in others], s=12, color="#bbbbbb",
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


def importance_values(study: Any, space: Space) -> dict[str, dict[str, float]] | str:
    """Objective (or 'weighted') -> parameter -> importance, over the most sampled method's trials."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "baseline" not in t.user_attrs and t.params]
    if len(complete) < 3:
        return f"only {len(complete)} complete sampled trial(s): too few for parameter importances"
    counts: dict[str, int] = {}
    for t in complete:
        counts[t.user_attrs.get("method", "")] = counts.get(t.user_attrs.get("method", ""), 0) + 1
    method = max(counts, key=lambda m: counts[m])
    chosen = [t for t in complete if t.user_attrs.get("method") == method]
    names = set.intersection(*(set(t.params) for t in chosen)) - {"method", "method_index"}
    names = {n for n in names if n.startswith(f"{method}.")} or names
    if len(chosen) < 3 or not names:
        return f"too few complete trials of one method ({method}: {len(chosen)}) for parameter importances"
    # PED-ANOVA rates what leads to LOW target values: negate the values of maximised objectives
    targets: dict[str, Any] = {}
    if len(study.directions) == 1:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        targets["weighted" if len(space.objectives) > 1 else space.objectives[0].name] = \
            (lambda t, s=sign: s * t.values[0])
    else:
        for i, o in enumerate(space.objectives):
            sign = -1.0 if o.direction == "maximize" else 1.0
            targets[o.name] = (lambda t, i=i, s=sign: s * t.values[i])
    out: dict[str, dict[str, float]] = {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            for label, target in targets.items():
                out[f"{label} ({method})"] = optuna.importance.get_param_importances(
                    study, params=sorted(names), target=target)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        return f"Optuna could not compute importances ({type(exc).__name__}: {exc})"
    return out


def importances(study: Any, space: Space, top: int = 15) -> Figure | str:
    values = importance_values(study, space)
    if isinstance(values, str):
        return values
    fig, axes = plt.subplots(1, len(values), figsize=(6.5 * len(values), 0.32 * top + 1.5), squeeze=False)
    for ax, (label, imp) in zip(axes[0], values.items()):
        items = sorted(imp.items(), key=lambda kv: kv[1])[-top:]
        ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS["trial"])
        ax.set_title(f"parameter importance: {label}", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel("importance (PED-ANOVA, normalised)")
    fig.tight_layout()
    return fig


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
