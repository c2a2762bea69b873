"""The calibration file of a space (``calibration: {jsonl: ...}``): where it is and whether it holds texts.

Here, in config, because loading a space checks the file before anything runs, and config must not import the
statistics package, which builds on the space (:mod:`search.statistics.calibration` reads the texts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import UserError

if TYPE_CHECKING:
    from search.config.space import Calibration


def jsonl_path(calibration: Calibration, space_file: str | Path) -> Path:
    """The calibration file, relative paths read from the space file's folder."""
    assert calibration.jsonl is not None
    p = Path(calibration.jsonl).expanduser()
    return p if p.is_absolute() else Path(space_file).resolve().parent / p


def check_jsonl(calibration: Calibration, space_file: str | Path) -> int:
    """Refuse a calibration file that is missing, unreadable, or holds no text under ``field``; the count of texts.

    Each line must be a JSON object whose ``field`` is a string; empty lines are skipped.
    """
    path = jsonl_path(calibration, space_file)
    fix_path = "give an existing .jsonl file of texts, relative to the space file"
    if not path.is_file():
        raise UserError(f"calibration file '{calibration.jsonl}' does not exist (resolved to {path})",
                        file=space_file, field="calibration.jsonl", fix=fix_path)
    count = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"line {number} of '{path}' is not JSON ({exc.msg})", file=space_file,
                            field="calibration.jsonl", fix="write one JSON object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get(calibration.field), str):
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
            raise UserError(f"line {number} of '{path}' has no text field '{calibration.field}' (it has: {keys})",
                            file=space_file, field="calibration.field",
                            fix="name the field that holds each line's text")
        count += bool(row[calibration.field].strip())
    if count == 0:
        raise UserError(f"calibration file '{path}' holds no text", file=space_file, field="calibration.jsonl",
                        fix="give a file with at least one non-empty text per line")
    return count
