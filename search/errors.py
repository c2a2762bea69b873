"""Errors that reach a user: each says which file, which field, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input from the user. The CLI prints the message and exits with code 2, having written nothing.

    >>> str(UserError("'tiez' is unknown", file="recipe.yaml", field="merge_method", fix="use one of: ties, ..."))
    "recipe.yaml: field 'merge_method': 'tiez' is unknown. Fix: use one of: ties, ..."
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | Path | None = None, field: str | None = None,
                 fix: str | None = None, line: int | None = None) -> None:
        parts = []
        if file is not None:
            parts.append(f"{file}")
        if field is not None:
            parts.append(f"field '{field}'" + (f" (line {line})" if line else ""))
        prefix = ": ".join(parts)
        text = f"{prefix}: {message}" if prefix else message
        if fix:
            text = f"{text}. Fix: {fix}"
        super().__init__(text)
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        self.line = line
