"""The calibration texts a run's data-aware statistics are computed on: a jsonl file, or an lm-eval task's search role.

A task's texts are the first ``documents`` of its ``search`` role in the evaluator's fixed order (the documents the
search scores), each written as lm-eval writes it: the prompt (``doc_to_text``), the target delimiter and the
answer (``doc_to_target``; for a multiple-choice task, the right choice). The ``select`` and ``test`` roles are
never read: the figures that choose and report a model stay apart from the data that shaped its merge.

>>> jsonl_texts(Calibration(jsonl="texts.jsonl", documents=2), Path("space.yaml"))    # doctest: +SKIP
['the first text', 'the second text']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from search.config.space import Calibration
from search.errors import UserError


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


def jsonl_texts(calibration: Calibration, space_file: str | Path) -> list[str]:
    """The first ``documents`` non-empty texts of the calibration file, in file order."""
    path = jsonl_path(calibration, space_file)
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            text = json.loads(line)[calibration.field]
            if text.strip():
                texts.append(text)
        if len(texts) == calibration.documents:
            break
    return texts


def task_texts(calibration: Calibration, evaluator: Any) -> list[str]:
    """The first ``documents`` documents of the task's ``search`` role (of an lm-eval evaluator), as texts."""
    task = evaluator.tasks("search")[calibration.task]
    texts = []
    for name, doc in evaluator.documents("search"):
        if name == calibration.task:
            texts.append(document_text(task, doc))
            if len(texts) == calibration.documents:
                break
    return texts


def document_text(task: Any, doc: Any) -> str:
    """One document as the model reads it with its answer: prompt + target delimiter + target."""
    context = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    if task.get_config("output_type") == "multiple_choice":
        choices = task.doc_to_choice(doc)
        if isinstance(context, int):  # the choice is the context (winogrande-style tasks)
            context = choices[context]
        if isinstance(target, int):
            target = choices[target]
    if isinstance(target, list):
        target = target[0] if target else ""
    if output_rolling(task):
        return str(target)
    delimiter = task.get_config("target_delimiter")
    return f"{context}{' ' if delimiter is None else delimiter}{target}"


def output_rolling(task: Any) -> bool:
    return task.get_config("output_type") == "loglikelihood_rolling"


def texts_digest(texts: list[str]) -> str:
    """A hash of the texts themselves: a statistics file is reused only for the very same texts."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
