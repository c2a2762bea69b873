"""A document of an lm-eval task as the model reads it: the prompt lm-eval builds and the answer it scores as right.

One place for what refinement trains on (:mod:`search.refine.documents`) and what data-aware statistics are
computed on (:mod:`search.statistics.calibration`):

- the context is ``Task.fewshot_context`` (description, few-shot examples, ``doc_to_text``);
- the answer is ``doc_to_target`` for ``loglikelihood``, ``target_delimiter`` + the right choice for
  ``multiple_choice``, ``target_delimiter`` + the (first) target for ``generate_until``;
- a ``loglikelihood_rolling`` document (perplexity tasks) is its target text alone, with no prompt.

>>> context_of(task, doc, fewshot_seed=1234) + answer_of(task, doc)      # doctest: +SKIP
'Q: 14+31 A: 45'
"""

from __future__ import annotations

from typing import Any

ANSWERED = ("generate_until", "loglikelihood", "multiple_choice")


def kind_of(task: Any) -> str:
    return str(task.get_config("output_type"))


def context_of(task: Any, doc: Any, *, fewshot_seed: int | None = None) -> str | list[str]:
    """The prompt lm-eval builds for ``doc`` (several for a task whose documents have several contexts)."""
    if fewshot_seed is not None:
        task.set_fewshot_seed(seed=fewshot_seed)
    return task.fewshot_context(doc, num_fewshot=task.get_config("num_fewshot") or 0)


def answer_of(task: Any, doc: Any) -> str:
    """The continuation lm-eval counts as right for ``doc``."""
    kind = kind_of(task)
    target = task.doc_to_target(doc)
    delimiter = task.get_config("target_delimiter")
    delimiter = " " if delimiter is None else delimiter  # lm-eval's default
    if kind == "loglikelihood":
        return str(target)
    if kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        return f"{delimiter}{choices[target] if isinstance(target, int) else target}"
    if isinstance(target, list):
        target = target[0] if target else ""
    return f"{delimiter}{target}"


def document_text(task: Any, doc: Any, *, fewshot_seed: int | None = None) -> str:
    """``doc`` with its answer, as one text: prompt + answer (a rolling document: its text)."""
    if kind_of(task) == "loglikelihood_rolling":
        return str(task.doc_to_target(doc))
    context = context_of(task, doc, fewshot_seed=fewshot_seed)
    if not isinstance(context, str):
        context = context[0]
    return context + answer_of(task, doc)
