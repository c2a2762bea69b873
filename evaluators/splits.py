"""Deterministic splits and document orders, from each document's content.

Where several roles (``search``, ``select``, ``test``) read one data set, its documents are partitioned by a hash
of their CONTENT (not their position), so the role of a document never changes when the file is reordered or
grows: ``u = hash("split" + content)`` in [0, 1) falls into one interval per role, in the order select, test,
search, each as wide as the role's share of the fractions. Identical documents land in the same role, so a
duplicate cannot leak from one role into another. (With ``select`` first, a two-way partition at a held-out
fraction ``f`` is the one this project made before the three roles: held out iff ``u < f``.)

The fixed order in which slices are taken (``limit=k`` scores the first ``k``) is also a content hash: growing
limits give nested slices, each a uniform-looking sample of the split rather than the file's first lines.

>>> docs = [{"q": str(i)} for i in range(10)]
>>> parts = hash_partition([fingerprint(d) for d in docs], {"search": 0.5, "select": 0.25, "test": 0.25})
>>> sorted(parts["search"] + parts["select"] + parts["test"]) == list(range(10))
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from evaluators.protocol import SplitName

# The order of the intervals of [0, 1): select first keeps the two-way partitions of earlier runs (see above).
_INTERVAL_ORDER: tuple[SplitName, ...] = ("select", "test", "search")

_SPLIT_SALT = "merge-search/split/"
_ORDER_SALT = "merge-search/order/"


def fingerprint(doc: Any) -> str:
    """A stable hex digest of a document's content (a string, or JSON-like data with keys in any order).

    >>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    True
    """
    text = doc if isinstance(doc, str) else json.dumps(
        doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def unit_hash(text: str) -> float:
    """Map a string to [0, 1) through sha256: uniform-looking and the same on every machine and run."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16) / 2.0**64


def assign_split(doc_fingerprint: str, fractions: Mapping[SplitName, float]) -> SplitName:
    """Which role a document belongs to, from its fingerprint alone, among the roles of ``fractions``
    (each role's share, normalised over the roles given; a zero share takes no document).

    >>> assign_split(fingerprint("a doc"), {"search": 1.0})
    'search'
    """
    total = sum(fractions.values())
    if not fractions or total <= 0 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"fractions must be non-negative with a positive sum, got {dict(fractions)!r}")
    u = unit_hash(_SPLIT_SALT + doc_fingerprint) * total
    edge = 0.0
    roles = [r for r in _INTERVAL_ORDER if r in fractions] + [r for r in fractions if r not in _INTERVAL_ORDER]
    for role in roles:
        edge += fractions[role]
        if u < edge:
            return role
    return next(r for r in reversed(roles) if fractions[r] > 0)  # u == total after rounding


def fixed_order(keys: Sequence[str], indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (default: all) sorted by the hash of their key; ties (identical keys) by index.

    >>> fixed_order(["x", "y", "z"]) == fixed_order(["x", "y", "z"])
    True
    """
    chosen = range(len(keys)) if indices is None else indices
    return sorted(chosen, key=lambda i: (unit_hash(_ORDER_SALT + keys[i]), i))


def hash_partition(fingerprints: Sequence[str], fractions: Mapping[SplitName, float]) -> dict[SplitName, list[int]]:
    """Indices of the documents of each role of ``fractions``, each list in the fixed order of
    :func:`fixed_order`."""
    members: dict[SplitName, list[int]] = {role: [] for role in fractions}
    for i, fp in enumerate(fingerprints):
        members[assign_split(fp, fractions)].append(i)
    return {split: fixed_order(fingerprints, idx) for split, idx in members.items()}


def interleave(orders: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """One fixed order over several groups (tasks), each kept in its own order, mixed in proportion: any
    prefix of ``k`` entries holds ``k * n_g / N`` entries of group ``g``, give or take one.

    A stratified sample: a small slice of a multi-task evaluator has every large-enough task in it, weighted as
    in the whole split.

    >>> interleave({"a": [0, 1, 2, 3], "b": [0, 1]})
    [('a', 0), ('b', 0), ('a', 1), ('a', 2), ('b', 1), ('a', 3)]
    """
    keyed = [((rank + 0.5) / len(order), name, i) for name, order in orders.items() for rank, i in enumerate(order)]
    return [(name, i) for _, name, i in sorted(keyed)]


def first(order: Sequence[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` entries of a fixed order (all when None): the documents a call scores."""
    return list(order if limit is None else order[:limit])


def shared_documents(fingerprints: Mapping[SplitName, Sequence[str]]) -> list[tuple[SplitName, SplitName, int]]:
    """``(role a, role b, documents both hold)`` for every pair of roles that share a document.

    >>> shared_documents({"search": ["x", "y"], "select": ["y"], "test": ["z"]})
    [('search', 'select', 1)]
    """
    roles = list(fingerprints)
    sets = {r: set(fingerprints[r]) for r in roles}
    out = []
    for i, a in enumerate(roles):
        for b in roles[i + 1:]:
            n = len(sets[a] & sets[b])
            if n:
                out.append((a, b, n))
    return out


def role_orders(fingerprints: Sequence[str], fractions: Any, ctx: Any) -> dict[SplitName, list[int]]:
    """Local data divided among the roles by content hash (``fractions``: a ``RoleFractions``), each role in its
    fixed order; a role with a zero share (test: 0) is absent (empty). A role left without a document is a
    UserError from ``ctx`` (a ``SpecContext``) on field ``fractions``."""
    from evaluators.protocol import SPLIT_NAMES

    parts = hash_partition(fingerprints, fractions.among(SPLIT_NAMES))
    for split, order in parts.items():
        if not order:
            raise ctx.error("fractions", f"the {split!r} role has no documents ({len(fingerprints)} in all)",
                            "add documents or change fractions")
    return {split: parts.get(split, []) for split in SPLIT_NAMES}
