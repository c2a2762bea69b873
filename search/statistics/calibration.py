"""The calibration texts a run's data-aware statistics are computed on: a jsonl file, or an lm-eval task's search role.

A task's texts are the first ``documents`` of its ``search`` role in the evaluator's fixed order (the documents the
search scores), each as the model reads it with its answer (:func:`evaluators.examples.document_text`: the prompt
lm-eval builds and the answer it scores as right; the same pairs refinement trains on). The ``select`` and ``test`` roles are
never read: the figures that choose and report a model stay apart from the data that shaped its merge.

>>> jsonl_texts(Calibration(jsonl="texts.jsonl", documents=2), Path("space.yaml"))    # doctest: +SKIP
['the first text', 'the second text']
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evaluators.examples import document_text
# the file's checks live in config (a space is checked on load); check_jsonl is re-exported for callers here
from search.config.calibration_file import check_jsonl, jsonl_path  # noqa: F401
from search.config.space import Calibration


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
            texts.append(document_text(task, doc, fewshot_seed=evaluator.spec.fewshot_seed))
            if len(texts) == calibration.documents:
                break
    return texts


def texts_digest(texts: list[str]) -> str:
    """A hash of the texts themselves: a statistics file is reused only for the very same texts."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
