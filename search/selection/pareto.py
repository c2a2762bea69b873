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


def thin(ordered: Sequence[int], keep: int, *, must_keep: Sequence[int] = ()) -> list[int]:
    """At most ``keep`` points of an ordered front, evenly spaced, always with both ends and ``must_keep``.

    >>> thin(list(range(10)), 4)
    [0, 3, 6, 9]
    >>> thin(list(range(10)), 3, must_keep=[4])
    [0, 4, 9]
    """
    ordered = list(ordered)
    if len(ordered) <= keep:
        return ordered
    fixed = {ordered[0], ordered[-1], *must_keep}
    chosen = set(fixed)
    slots = keep - len(chosen)
    if slots > 0:
        step = (len(ordered) - 1) / (slots + 1)
        for s in range(1, slots + 1):
            position = round(s * step)
            # the nearest not-yet-chosen point to the even spacing
            for offset in range(len(ordered)):
                for p in (position + offset, position - offset):
                    if 0 <= p < len(ordered) and ordered[p] not in chosen:
                        chosen.add(ordered[p])
                        break
                else:
                    continue
                break
    return [i for i in ordered if i in chosen]


def neighbour_pairs(ordered: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive pairs of an ordered front, plus the two ends when they are not already neighbours.

    >>> neighbour_pairs([4, 7, 2])
    [(4, 7), (7, 2), (4, 2)]
    """
    pairs = [(ordered[i], ordered[i + 1]) for i in range(len(ordered) - 1)]
    if len(ordered) > 2:
        pairs.append((ordered[0], ordered[-1]))
    return pairs
