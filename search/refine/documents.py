"""The documents refinement trains on: (context, answer) pairs from the lm-eval tasks of a space's objectives.

The context is the prompt lm-eval builds for the document (``Task.fewshot_context``: description, few-shot
examples, ``doc_to_text``); the answer is what lm-eval scores as right:

- ``generate_until``: ``target_delimiter + doc_to_target(doc)`` (the first target when there are several);
- ``loglikelihood``: ``doc_to_target(doc)`` (lm-eval's own request continuation);
- ``multiple_choice``: ``target_delimiter + `` the correct choice.

Documents come from a role's fixed order (``evaluator.documents``), so a role's first ``n`` are the ones its
slices score first; roles never share a document, so the select documents that stop refinement early are not
the ones it trains on.

>>> examples = role_examples(loaded, "search", 64)          # doctest: +SKIP
>>> examples[0]                                             # doctest: +SKIP
Example(objective='add', context='Q: 14+31 A:', answer=' 45')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evaluators.examples import ANSWERED, answer_of, context_of, kind_of
from search.errors import UserError


@dataclass(frozen=True)
class Example:
    """One document: its objective, the prompt, and the right answer."""

    objective: str
    context: str
    answer: str


def check_objectives(loaded: Any) -> None:
    """Refuse (UserError) a space whose objectives are not lm-eval tasks: refinement needs documents."""
    for i, obj in enumerate(loaded.space.objectives):
        if obj.evaluator.get("type") != "lm_eval":
            raise UserError(f"refinement trains on the documents of lm-eval tasks; objective '{obj.name}' is "
                            f"scored by a '{obj.evaluator.get('type')}' evaluator", file=loaded.file,
                            field=f"objectives[{i}].evaluator.type",
                            fix="remove 'refine' from the space (or refine a run whose objectives are lm_eval tasks)")


def role_examples(loaded: Any, role: str, count: int, *, evaluators: dict[str, Any] | None = None) -> list[Example]:
    """``count`` examples of ``role``, split among the objectives in proportion to their weights (at least one
    each): each objective's first documents of the role's fixed order."""
    from evaluators.registry import build_evaluator

    space = loaded.space
    objectives = [o for o in space.objectives if o.weight > 0] or list(space.objectives)
    total = sum(o.weight for o in objectives) or float(len(objectives))
    out: list[Example] = []
    for i, obj in enumerate(space.objectives):
        if obj not in objectives:
            continue
        if evaluators is None or obj.name not in evaluators:
            evaluator = build_evaluator(obj.evaluator, device="cpu", config_file=loaded.file,
                                        field=f"objectives[{i}].evaluator")
            if evaluators is not None:
                evaluators[obj.name] = evaluator
        else:
            evaluator = evaluators[obj.name]
        share = max(1, math.ceil(count * (obj.weight or 1.0) / total))
        out += examples_of(evaluator, role, share, objective=obj.name, file=loaded.file, index=i)
    return out


def examples_of(evaluator: Any, role: str, limit: int, *, objective: str, file: Any = None,
                index: int = 0) -> list[Example]:
    """The first ``limit`` documents of ``role`` of one lm-eval evaluator, as examples."""
    if evaluator.num_docs(role) == 0:
        return []
    tasks = evaluator.tasks(role)
    out = []
    for task_name, doc in evaluator.documents(role, limit):
        task = tasks[task_name]
        kind = kind_of(task)
        if kind not in ANSWERED:
            raise UserError(f"refinement needs an answer per document; task '{task_name}' is '{kind}'",
                            file=file, field=f"objectives[{index}].evaluator.task",
                            fix=f"refine spaces whose tasks are {', '.join(ANSWERED)}")
        context = context_of(task, doc, fewshot_seed=evaluator.spec.fewshot_seed)
        if not isinstance(context, str):
            raise UserError(f"task '{task_name}' builds several contexts per document", file=file,
                            field=f"objectives[{index}].evaluator.task", fix="refine single-context tasks")
        out.append(Example(objective, context, answer_of(task, doc)))
    return out
