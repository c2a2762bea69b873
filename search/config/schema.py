"""The space file's JSON Schema and the merge-method reference table, both generated from the code.

    python -m search.config.schema spaces/schema.json                  # regenerate the shipped schema
    python -m search.config.schema --readme spaces/README.md           # refresh the README's methods table
    python -m search.config.schema --methods-table                     # print that table

The schema is pydantic's ``Space.model_json_schema()`` made tighter where the models take plain data:
``objectives[].evaluator`` is the evaluator union of ``evaluators/registry.py``, ``methods`` lists every merge
method of the registry with its parameters and their bounds, and ``granularity`` also takes its short strings.
Editors that read JSON Schema (e.g. the YAML language server) then complete and check a space file as it is
typed.

>>> schema = space_schema()
>>> schema["title"], "ties" in schema["properties"]["methods"]["properties"]
('merge-search space file', True)
>>> methods_table().splitlines()[0]
'| method | what it merges | models | stochastic | source |'
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from search.config.space import Space
from search.methods import METHODS, MergeMethod, ParamSpec
from search.methods.registry import MERGEKIT_METHODS

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
TITLE = "merge-search space file"
GRANULARITY_SHORTHANDS = ("global", "per_layer", "module_kinds")
TABLE_START = "<!-- methods:start -->"
TABLE_END = "<!-- methods:end -->"


def space_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a space file."""
    from evaluators.registry import EvaluatorSpec

    model = Space.model_json_schema()
    schema: dict[str, Any] = {"$schema": JSON_SCHEMA_DIALECT, **model, "title": TITLE}
    defs: dict[str, Any] = schema["$defs"]
    props: dict[str, Any] = schema["properties"]

    evaluator = TypeAdapter(EvaluatorSpec).json_schema()
    for name, definition in evaluator.pop("$defs", {}).items():
        if name in defs:
            raise RuntimeError(f"schema definition '{name}' is defined by both the space and the evaluators")
        defs[name] = definition
    objective = defs["Objective"]["properties"]
    objective["evaluator"] = {**evaluator, "description": objective["evaluator"].get("description", "")}

    props["methods"] = {
        "title": "Methods",
        "description": props["methods"].get("description", ""),
        "type": "object",
        "minProperties": 1,
        "properties": {name: _method_schema(method) for name, method in METHODS.items()},
        "additionalProperties": False,
    }
    props["granularity"] = {
        "title": "Granularity",
        "description": "global | per_layer | module_kinds, or a mapping like "
                       "{layer_groups: 4, module_kinds: true}.",
        "anyOf": [{"type": "string", "enum": list(GRANULARITY_SHORTHANDS)}, {"$ref": "#/$defs/Granularity"}],
    }
    return schema


def write_schema(path: str | Path) -> Path:
    """Write :func:`space_schema` as indented JSON (the shipped ``spaces/schema.json``)."""
    path = Path(path)
    path.write_text(json.dumps(space_schema(), indent=2) + "\n")
    return path


def _method_schema(method: MergeMethod) -> dict[str, Any]:
    return {
        "description": _summary(method)[0],
        "type": "object",
        "properties": {p.name: _param_schema(p) for p in method.params},
        "additionalProperties": False,
    }


def _param_schema(spec: ParamSpec) -> dict[str, Any]:
    scope = "per model" if spec.per_model else "shared"
    if spec.kind == "bool":
        return {"description": f"{spec.doc} ({scope}; fixed true/false)", "type": "boolean"}
    value: dict[str, Any] = {"type": "integer" if spec.kind == "int" else "number"}
    if spec.low is not None:
        value["minimum"] = spec.low
    if spec.high is not None:
        value["maximum"] = spec.high
    return {
        "description": f"{spec.doc} ({scope}; a value is fixed, [low, high] is searched)",
        "anyOf": [value, {"type": "array", "prefixItems": [value, value], "minItems": 2, "maxItems": 2}],
    }


# ---------------------------------------------------------------------------------------------- methods table
def methods_table() -> str:
    """The merge methods and their parameters as Markdown, from the registry (for spaces/README.md)."""
    lines = ["| method | what it merges | models | stochastic | source |", "| --- | --- | --- | --- | --- |"]
    for method in METHODS.values():
        text, link = _summary(method)
        what = f"{text} ([{'arXiv' if 'arxiv.org' in link else 'ref'}]({link}))" if link else text
        stochastic = "yes" if method.stochastic else "no"
        source = "mergekit 0.1.5 (equal to 1e-5)" if method.name in MERGEKIT_METHODS else "paper's equation (tested)"
        lines.append(f"| `{method.name}` | {what} | {_models(method)} | {stochastic} | {source} |")
    lines += ["", "| method | parameter | per model | valid | if omitted | suggested range | meaning |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in METHODS.values():
        if not method.params:
            lines.append(f"| `{method.name}` | (none) | | | | | |")
        for i, p in enumerate(method.params):
            name = f"`{method.name}`" if i == 0 else ""
            per_model = "yes" if p.per_model else "no"
            doc = p.doc.replace("|", "\\|")
            cells = [name, f"`{p.name}`", per_model, _valid(p), _omitted(p), _suggested(p), doc]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def replace_methods_table(readme: str) -> str:
    """``readme`` with the text between the methods markers replaced by :func:`methods_table`."""
    pattern = re.compile(re.escape(TABLE_START) + r".*?" + re.escape(TABLE_END), re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"the README has no {TABLE_START} ... {TABLE_END} markers")
    return pattern.sub(lambda _: f"{TABLE_START}\n{methods_table()}{TABLE_END}", readme, count=1)


def readme_methods_table(readme: str) -> str:
    """The text between the methods markers of ``readme`` (tests compare it with :func:`methods_table`)."""
    start = readme.index(TABLE_START) + len(TABLE_START)
    return readme[start:readme.index(TABLE_END, start)].lstrip("\n")


def _summary(method: MergeMethod) -> tuple[str, str | None]:
    text, sep, link = method.doc.partition(", http")
    return text.strip(), ("http" + link.strip()) if sep else None


def _models(method: MergeMethod) -> str:
    if not method.takes_base:
        return f"{_count(method)} checkpoints, oldest first (no base)"
    if method.optional_base:
        return f"{_count(method)} (with a base: their task vectors)"
    if not method.needs_base:
        return f"{_count(method)} (the base is not used)"
    return f"base + {_count(method)}"


def _count(method: MergeMethod) -> str:
    if method.max_models is not None and method.max_models == method.min_models:
        return f"exactly {method.min_models}"
    if method.max_models is not None:
        return f"{method.min_models} to {method.max_models}"
    return f"{method.min_models} or more"


def _num(value: float | bool | int | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else f"{value:g}"


def _valid(p: ParamSpec) -> str:
    if p.kind == "bool":
        return "true / false"
    return f"[{_num(p.low) or '-inf'}, {_num(p.high) or 'inf'}]"


def _omitted(p: ParamSpec) -> str:
    if p.required:
        return f"searched in [{_num(p.search_low if p.search_low is not None else p.low)}, " \
               f"{_num(p.search_high if p.search_high is not None else p.high)}]"
    return f"fixed at {_num(p.default)}"


def _suggested(p: ParamSpec) -> str:
    if p.search_low is None or p.search_high is None:
        return ""
    return f"[{_num(p.search_low)}, {_num(p.search_high)}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m search.config.schema",
                                     description="Write the space file's JSON Schema and methods table.")
    parser.add_argument("path", nargs="?", type=Path, help="write the JSON Schema here (spaces/schema.json)")
    parser.add_argument("--readme", type=Path, help="rewrite the methods table between this README's markers")
    parser.add_argument("--methods-table", action="store_true", help="print the methods table")
    args = parser.parse_args(argv)
    if args.path is None and args.readme is None and not args.methods_table:
        parser.error("give a path for the schema, --readme or --methods-table")
    if args.path is not None:
        print(f"wrote {write_schema(args.path)}")
    if args.readme is not None:
        args.readme.write_text(replace_methods_table(args.readme.read_text()))
        print(f"updated the methods table in {args.readme}")
    if args.methods_table:
        print(methods_table(), end="")


if __name__ == "__main__":
    main()
