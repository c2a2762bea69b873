"""Read YAML files into pydantic models with errors that name the file, the line, the field and the fix.

>>> recipe = load_model(Recipe, Path("recipe.yaml"))    # doctest: +SKIP
search.errors.UserError: recipe.yaml: field 'models[0].parameters.densty' (line 7): ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from search.errors import UserError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]


class FieldError(ValueError):
    """A validator's complaint about one part of what it checks: ``loc`` extends the location pydantic gives the
    validator (so the message points at the line of that part), ``fix`` says what to do.

    >>> raise FieldError("names must be unique", loc=(1, "name"), fix="rename one")   # doctest: +SKIP
    """

    def __init__(self, message: str, *, loc: Loc = (), fix: str | None = None) -> None:
        super().__init__(message)
        self.loc = tuple(loc)
        self.fix = fix


def read_yaml(path: Path, *, what: str = "file") -> tuple[Any, dict[Loc, int]]:
    """Parse YAML; return the data and a map from each key/item path to its 1-based line."""
    if not path.exists():
        raise UserError(f"{what} '{path}' does not exist", fix="check the path")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"is not valid YAML{where}: {exc.problem}", file=path,
                        fix="fix the YAML syntax at that line (indentation, a missing ':' or quote)") from exc
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    return data, lines


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = loc + (key.value,)
            lines[child] = key.start_mark.line + 1
            _index_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, loc + (i,), lines)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_loc(field: str) -> Loc:
    """``'objectives[1].evaluator.task'`` -> ``('objectives', 1, 'evaluator', 'task')`` (the inverse of format_loc)."""
    loc: list[Any] = []
    for part in field.replace("]", "").replace("[", ".").split("."):
        if part:
            loc.append(int(part) if part.isdigit() else part)
    return tuple(loc)


def located(error: UserError) -> UserError:
    """The same error with the line of its field in its YAML file added, where it names both and lacks one."""
    if error.line is not None or error.file is None or error.field is None:
        return error
    path = Path(error.file)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return error
    try:
        _, lines = read_yaml(path)
    except UserError:
        return error
    loc = parse_loc(error.field)
    line = lines.get(loc) or (line_of(lines, loc) if len(loc) > 1 else None)
    if line is None:
        return error
    return UserError(error.message, file=error.file, field=error.field, fix=error.fix, line=line)


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the deepest prefix of ``loc`` that the YAML has (pydantic adds union-branch names)."""
    clean = tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "list[", "dict[")))
    for end in range(len(clean), -1, -1):
        if clean[:end] in lines:
            return lines[clean[:end]]
    return None


def load_model(model: type[M], path: Path, *, what: str = "file",
               fix_for: Callable[[dict[str, Any]], str | None] | None = None,
               context: dict[str, Any] | None = None) -> M:
    """Validate a YAML file against ``model``; the first error becomes a UserError with line and fix."""
    data, lines = read_yaml(path, what=what)
    if not isinstance(data, dict):
        raise UserError(f"must be a YAML mapping of fields, got {type(data).__name__}", file=path,
                        fix="start the file with 'key: value' lines")
    try:
        return model.model_validate(data, context=context)
    except UserError as exc:
        raise UserError(str(exc), file=path) from exc
    except ValidationError as exc:
        raise validation_error(exc, path, lines, fix_for) from exc


def validation_error(exc: ValidationError, path: Path, lines: dict[Loc, int],
                     fix_for: Callable[[dict[str, Any]], str | None] | None = None) -> UserError:
    err = _most_specific(exc.errors())
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "list[", "dict["))))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        loc += cause.loc
    line = line_of(lines, loc)
    field = format_loc(loc) or "(top level)"
    where = f"{field}' (line {line})" if line else f"{field}'"
    fix = (cause.fix if isinstance(cause, FieldError) else None) or (fix_for(err) if fix_for else None) \
        or _default_fix(err)
    message = err["msg"].removeprefix("Value error, ")
    text = f"{path}: field '{where}: {message}. Fix: {fix}"
    user = UserError(text)
    user.file, user.field, user.fix, user.line, user.message = path, field, fix, line, message
    return user


def _most_specific(errors: list[dict[str, Any]]) -> dict[str, Any]:
    # Union validation yields one error per branch; the deepest location is the one the user meant.
    return max(errors, key=lambda e: (e["type"] == "extra_forbidden", len(e["loc"])))


def _default_fix(err: dict[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "remove this field (it is not known here; check its spelling)"
    if kind == "missing":
        return "add this field"
    if kind.startswith("literal_error"):
        expected = err.get("ctx", {}).get("expected")
        return f"use one of: {expected}" if expected else "use one of the allowed values"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type"):
        return "give a number"
    if kind in ("bool_parsing", "bool_type"):
        return "write true or false"
    if kind in ("string_type",):
        return "give a string"
    return "see spaces/README.md for the allowed values"
