"""The storage dtype of a search: the space's ``dtype``, or (``auto``) the base checkpoint's own.

Parents and the working model are stored in this dtype; merge arithmetic is float32 per tensor regardless
(see :meth:`search.methods.base.MergeMethod.merge`). ``auto`` reads ``torch_dtype`` (transformers < 5) or
``dtype`` from the base's ``config.json``; a config naming neither, or a non-float type, means float32.

>>> storage_dtype_name("bfloat16", "models/base")
'bfloat16'
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def config_dtype_name(folder: str | Path) -> str:
    """The float dtype a checkpoint's config.json names (``torch_dtype`` or ``dtype``), else ``float32``."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "float32"
    for source in (config, config.get("text_config") or {}):
        for key in ("torch_dtype", "dtype"):
            value = source.get(key)
            if isinstance(value, str):
                name = _ALIASES.get(value.removeprefix("torch."), value.removeprefix("torch."))
                if name in STORAGE_DTYPES:
                    return name
    return "float32"


def storage_dtype_name(space_dtype: str, base_model: str | Path) -> str:
    """``space_dtype`` itself, or for ``auto`` the dtype the base's config.json names."""
    return config_dtype_name(base_model) if space_dtype == "auto" else space_dtype


def storage_dtype(space_dtype: str, base_model: str | Path) -> torch.dtype:
    return STORAGE_DTYPES[storage_dtype_name(space_dtype, base_model)]
