"""The demo space (spaces/demo.yaml) cut down for tests: fewer skills, paths made absolute so it runs anywhere.

>>> data = demo_space_data(("add", "rev"))
>>> sorted(data["models"]), [o["name"] for o in data["objectives"]]
(['add', 'rev'], ['add', 'rev'])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "spaces" / "demo.yaml"


def demo_space_data(skills: Sequence[str] = ("add", "rev")) -> dict[str, Any]:
    """The demo space as YAML data, with only ``skills`` as fine-tunes and objectives, every path absolute."""
    data = yaml.safe_load(DEMO.read_text())
    data["base_model"] = str((DEMO.parent / data["base_model"]).resolve())
    data["models"] = {k: str((DEMO.parent / v).resolve()) for k, v in data["models"].items() if k in skills}
    data["objectives"] = [o for o in data["objectives"] if o["name"] in skills]
    for o in data["objectives"]:
        o["evaluator"]["include_path"] = str((DEMO.parent / o["evaluator"]["include_path"]).resolve())
    return data
