"""The demo world: a tiny base model, fine-tunes of it on different skills, and lm-eval tasks that score them.

The models are bundled under ``search/demo/models/<name>/`` (HF folders: model.safetensors, config.json,
generation_config.json, tokenizer files) and rebuilt bit for bit by ``python -m search.demo.build``.
The lm-eval tasks live in ``evaluators/tasks/demo_*`` (``python -m search.demo.tasks`` regenerates them).

    >>> from search.demo import BASE_MODEL, FINETUNES, demo_models_dir
    >>> (demo_models_dir() / BASE_MODEL / "model.safetensors").is_file()
    True
    >>> FINETUNES["rev"]
    'demo-rev'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Folder name of the base model.
BASE_MODEL = "demo-base"
#: Skill -> folder name of the model fine-tuned on it. ``title`` answers the same prompts as ``up``
#: differently (``Abcd`` against ``ABCD``): the conflicting fine-tune.
FINETUNES: dict[str, str] = {
    "add": "demo-add",
    "rev": "demo-rev",
    "up": "demo-up",
    "sort": "demo-sort",
    "title": "demo-title",
}
#: Every bundled model, base first.
MODEL_NAMES: tuple[str, ...] = (BASE_MODEL, *FINETUNES.values())
#: The pair of fine-tunes whose skills conflict (same prompts, different answers).
CONFLICT: tuple[str, str] = ("up", "title")


def demo_models_dir() -> Path:
    """The folder that holds the bundled demo models (one sub-folder per name in ``MODEL_NAMES``)."""
    return Path(__file__).resolve().parent / "models"


def demo_tasks_dir() -> Path:
    """The folder of the demo lm-eval tasks (``evaluators/tasks``), for ``TaskManager(include_path=...)``."""
    return Path(__file__).resolve().parents[2] / "evaluators" / "tasks"


def load_demo_model(name: str, models_dir: Path | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a bundled model and its tokenizer by folder name or skill (``"demo-add"`` or ``"add"``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = (models_dir or demo_models_dir()) / FINETUNES.get(name, name)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no demo model there; build it with "
                                f"`python -m search.demo.build --out {folder.parent}`")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


__all__ = ["BASE_MODEL", "CONFLICT", "FINETUNES", "MODEL_NAMES", "demo_models_dir", "demo_tasks_dir",
           "load_demo_model"]
