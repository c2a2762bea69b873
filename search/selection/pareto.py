"""Which trials to keep: the Pareto frontier on the search split (or, with one objective, the top k).

Pure functions of score vectors; no Optuna, no torch.

>>> pareto_front([[1, 5], [2, 4], [1, 4], [3, 1]], maximize=[True, True])
[0, 1, 3]
>>> dominates([2, 2], [1, 2], maximize=[True, True]), dominates([1, 2], [1, 2], maximize=[True, True])
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], *, maximize: Sequence[bool]) -> bool:
    """``a`` is at least as good as ``b`` on every objective and strictly better on one."""
    better = False
    for x, y, up in zip(a, b, maximize):
        if (x < y) if up else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(points: Sequence[Sequence[float]], *, maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates, in input order (ties all stay on the front)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, maximize=maximize) for j, q in enumerate(points) if j != i)]


def top_k(values: Sequence[float], k: int, *, maximize: bool) -> list[int]:
    """Indices of the ``k`` best values, best first (stable for ties).

    >>> top_k([0.2, 0.9, 0.5], 2, maximize=True)
    [1, 2]
    """
    order = sorted(range(len(values)), key=lambda i: -values[i] if maximize else values[i])
    return order[:k]


def order_front(points: Sequence[Sequence[float]], indices: Sequence[int]) -> list[int]:
    """Front points sorted along the first objective (then the second): neighbours follow each other."""
    return sorted(indices, key=lambda i: tuple(points[i]))


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """The volume the points dominate above ``ref`` (every objective maximised), sliced one objective at a time:
    exact, and quick for the few dozen points of a front.

    >>> hypervolume([[1, 2], [2, 1]], [0, 0])
    3.0
    >>> hypervolume([[1, 1, 1], [2, 2, 0.5]], [0, 0, 0])
    2.5
    """
    pts = [list(p) for p in points if all(x > r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return float(max(p[0] for p in pts) - ref[0])
    levels = sorted({p[-1] for p in pts}, reverse=True)
    total = 0.0
    for i, level in enumerate(levels):  # the slab between this level and the next holds the points at least as high
        below = levels[i + 1] if i + 1 < len(levels) else ref[-1]
        total += (level - below) * hypervolume([p[:-1] for p in pts if p[-1] >= level], ref[:-1])
    return total


def spread(points: Sequence[Sequence[float]], indices: Sequence[int], keep: int, *, maximize: Sequence[bool],
           must_keep: Sequence[int] = (), scale: Sequence[float] | None = None) -> list[int]:
    """At most ``keep`` of ``indices`` (a front) that span it: ``must_keep``, the best point on each objective,
    then, one at a time, the point that adds the most hypervolume to those chosen.

    Objective ``j`` counts ``scale[j]`` times its value (selection passes the objectives' weights: the units of
    the run's weighted sum); without ``scale``, each objective's range over the points counts 1. The reference point
    lies a tenth of each range below the worst. Evenly spaced picks along a sorted order span a front of two
    objectives but not of three: sorted by the first, the best on the second can fall between two picks, and
    points that trade a whole rate for a little of the third objective take the places of the trade-offs.
    Returned in the order of ``indices``.

    >>> front = [[0.0, 1.0], [0.2, 0.9], [0.4, 0.7], [0.6, 0.5], [0.8, 0.3], [1.0, 0.0]]
    >>> spread(front, range(6), 3, maximize=[True, True])  # both ends, then the point adding the most area
    [0, 3, 5]
    >>> spread([[0, 0.5, 9], [0, 0.9, 10], [1, 0, 10], [0.5, 0.5, 10]], range(4), 3, maximize=[True, True, False])
    [0, 1, 2]
    >>> pts = [[0, 1, 50], [1, 0.5, 51], [0.05, 0.9, 48], [1, 0.1, 50.5], [0.6, 0.8, 51]]
    >>> spread(pts, range(5), 4, maximize=[True, True, False], scale=[1, 1, 0.01])  # not #3: 0.4 of a rate for 0.5 ppl
    [0, 1, 2, 4]
    """
    indices = list(indices)
    pool = list(dict.fromkeys([*must_keep, *indices]))
    if len(pool) <= keep:
        return [i for i in indices if i in pool] + [i for i in must_keep if i not in indices]
    k = len(maximize)
    if scale is None:  # each objective's range over the points counts 1
        spans = [max(points[i][j] for i in pool) - min(points[i][j] for i in pool) for j in range(k)]
        scale = [1.0 / s if s else 0.0 for s in spans]
    # every objective maximised, in the units of ``scale``
    g = {i: [(1.0 if maximize[j] else -1.0) * scale[j] * points[i][j] for j in range(k)] for i in pool}
    ref = []
    for j in range(k):
        worst, best = min(v[j] for v in g.values()), max(v[j] for v in g.values())
        ref.append(worst - 0.1 * (best - worst or 1.0))
    chosen = list(dict.fromkeys(must_keep))
    for j in range(k):  # the best on objective j; ties go to the best weighted sum of them all
        best_j = max(indices, key=lambda i: (g[i][j], sum(g[i])))
        if best_j not in chosen:
            chosen.append(best_j)
    chosen = chosen[:keep]
    while len(chosen) < keep:
        rest = [i for i in indices if i not in chosen]
        if not rest:
            break
        chosen.append(max(rest, key=lambda i: hypervolume([g[c] for c in [*chosen, i]], ref)))
    return [i for i in indices if i in chosen] + [i for i in chosen if i not in indices]


def neighbour_pairs(ordered: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive pairs of an ordered front, plus the two ends when they are not already neighbours.

    >>> neighbour_pairs([4, 7, 2])
    [(4, 7), (7, 2), (4, 2)]
    """
    pairs = [(ordered[i], ordered[i + 1]) for i in range(len(ordered) - 1)]
    if len(ordered) > 2:
        pairs.append((ordered[0], ordered[-1]))
    return pairs
