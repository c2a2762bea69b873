"""A copy of a space file with its paths made absolute and some fields replaced, for the benchmarks' runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def space_copy(space: Path, out: Path, **updates: Any) -> Path:
    """Write ``<out>.yaml`` beside ``out``: ``space`` with absolute model/task paths and ``updates`` applied."""
    data = yaml.safe_load(space.read_text())
    data["base_model"] = str((space.parent / data["base_model"]).resolve())
    data["models"] = {k: str((space.parent / v).resolve()) for k, v in data["models"].items()}
    for obj in data["objectives"]:
        for key in ("include_path", "data"):
            if key in obj["evaluator"]:
                obj["evaluator"][key] = str((space.parent / obj["evaluator"][key]).resolve())
    data.update(updates)
    file = out.parent / f"{out.name}.yaml"
    file.write_text(yaml.safe_dump(data))
    return file
