"""Run folders written before the three roles (search / select / test) read as two-role runs.

Before, an objective had ``search_split`` / ``heldout_split`` and an evaluator split its data in two
(``heldout_fraction``; a task's validation / test split). Such a run's trials were scored on what is now its
``search`` role, and what it called held-out becomes its ``select`` role; it has no ``test`` role (every document
it has was either searched or used to choose). The evaluators are marked ``legacy_two_roles`` so that they
rebuild exactly the old partition.

>>> old = {"objectives": [{"name": "a", "metric": "acc", "search_split": "search", "heldout_split": "heldout",
...                        "evaluator": {"type": "python", "function": "m:f", "data": "d.jsonl",
...                                      "heldout_fraction": 0.3}}]}
>>> migrate_space(old)["objectives"][0]["evaluator"]["fractions"]
{'search': 0.7, 'select': 0.3, 'test': 0.0}
"""

from __future__ import annotations

import copy
from typing import Any

_OLD_OBJECTIVE_FIELDS = ("search_split", "heldout_split")


def is_two_role(space: dict[str, Any]) -> bool:
    """Whether a dumped space (``resolved.json``'s ``space``) predates the three roles."""
    return any(k in o for o in space.get("objectives", []) for k in _OLD_OBJECTIVE_FIELDS)


def migrate_space(space: dict[str, Any]) -> dict[str, Any]:
    """A dumped space of either age, as the current models read it (a copy; a current one comes back equal)."""
    if not is_two_role(space):
        return space
    out = copy.deepcopy(space)
    for objective in out["objectives"]:
        for key in _OLD_OBJECTIVE_FIELDS:
            objective.pop(key, None)
        objective["evaluator"] = two_role_evaluator(objective["evaluator"])
    return out


def two_role_evaluator(spec: dict[str, Any]) -> dict[str, Any]:
    """An evaluator spec of an old run, as the two-role evaluator that rebuilds its old partition."""
    out = dict(spec)
    if out.get("legacy_two_roles"):
        return out
    held = float(out.pop("heldout_fraction", 0.5))
    out["fractions"] = {"search": round(1.0 - held, 12), "select": held, "test": 0.0}
    out["legacy_two_roles"] = True
    if isinstance(out.get("split_map"), dict) and "heldout" in out["split_map"]:
        old = out["split_map"]
        out["split_map"] = {"search": old["search"], "select": old["heldout"], "test": None}
    return out
