"""Deterministic splits and document orders, from each document's content.

Where a data set has no split of its own for ``search`` and ``heldout``, its documents are partitioned by a hash
of their CONTENT (not their position), so the partition of a document never changes when the file is reordered
or grows: a document is held out iff ``hash("split" + content) < heldout_fraction``. Identical documents land in
the same split, so a duplicate cannot leak from one split into the other.

The fixed order in which slices are taken (``limit=k`` scores the first ``k``) is also a content hash: growing
limits give nested slices, each a uniform-looking sample of the split rather than the file's first lines.

>>> docs = [{"q": str(i)} for i in range(10)]
>>> parts = hash_partition([fingerprint(d) for d in docs], heldout_fraction=0.3)
>>> sorted(parts["search"] + parts["heldout"]) == list(range(10))
True
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from evaluators.protocol import SplitName

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


def assign_split(doc_fingerprint: str, heldout_fraction: float) -> SplitName:
    """Which of our splits a document belongs to, from its fingerprint alone."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    return "heldout" if unit_hash(_SPLIT_SALT + doc_fingerprint) < heldout_fraction else "search"


def fixed_order(keys: Sequence[str], indices: Sequence[int] | None = None) -> list[int]:
    """``indices`` (default: all) sorted by the hash of their key; ties (identical keys) by index.

    >>> fixed_order(["x", "y", "z"]) == fixed_order(["x", "y", "z"])
    True
    """
    chosen = range(len(keys)) if indices is None else indices
    return sorted(chosen, key=lambda i: (unit_hash(_ORDER_SALT + keys[i]), i))


def hash_partition(fingerprints: Sequence[str], heldout_fraction: float) -> dict[SplitName, list[int]]:
    """Indices of the documents of each split, each list in the fixed order of :func:`fixed_order`."""
    members: dict[SplitName, list[int]] = {"search": [], "heldout": []}
    for i, fp in enumerate(fingerprints):
        members[assign_split(fp, heldout_fraction)].append(i)
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
