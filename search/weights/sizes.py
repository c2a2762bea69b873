"""How many bytes a parent's task vector takes, from the safetensors headers alone (no tensor data read).

For a memory plan made before loading: a full checkpoint's task vector is as large as the model's floating-point
tensors; a LoRA adapter's is its factors (``A``, ``B``) plus the tensors it saves whole (``modules_to_save``;
the copies of an embedding's base layer PEFT saves beside an embedding target are counted too, an upper bound:
loading drops them when they equal the base). Headers are read directly (8-byte length + JSON), so checkpoints
written as sparse files cost nothing to plan.

>>> task_vector_bytes("adapters/code", itemsize=2)          # doctest: +SKIP
41943040
>>> task_vector_bytes("models/code", itemsize=2)            # a full 7B fine-tune in bf16   # doctest: +SKIP
13476831232
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from search.weights.adapters import PICKLE_WEIGHTS, SAFE_WEIGHTS, is_adapter
from search.weights.checkpoint import SAFE_INDEX, SAFE_SINGLE

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


def header(file: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` of one safetensors file, from its header only."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        meta = json.loads(handle.read(length))
    return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in meta.items() if name != "__metadata__"}


def folder_header(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The header entries of a model folder (one file, or every shard its index names)."""
    folder = Path(folder)
    if (folder / SAFE_INDEX).exists():
        shards = sorted(set(json.loads((folder / SAFE_INDEX).read_text())["weight_map"].values()))
    else:
        shards = [SAFE_SINGLE]
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for shard in shards:
        out.update(header(folder / shard))
    return out


def float_elements(entries: dict[str, tuple[str, tuple[int, ...]]]) -> int:
    return sum(math.prod(shape) for dtype, shape in entries.values() if dtype in _FLOAT_DTYPES)


def task_vector_elements(path: str | Path) -> int:
    """Elements the task vector of ``path`` holds: an adapter's factors and saved tensors, or every floating
    tensor of a full checkpoint folder. A memory plan multiplies by the storage dtype's size."""
    folder = Path(path)
    if is_adapter(folder):
        if not (folder / SAFE_WEIGHTS).exists():
            raise FileNotFoundError(f"{folder / SAFE_WEIGHTS} (a pickled {PICKLE_WEIGHTS} has no readable header)")
        return float_elements(header(folder / SAFE_WEIGHTS))
    return float_elements(folder_header(folder))


def task_vector_bytes(path: str | Path, *, itemsize: int) -> int:
    """Bytes of the task vector ``path`` gives at ``itemsize`` bytes per element (4: float32, 2: bf16/fp16)."""
    return task_vector_elements(path) * itemsize
