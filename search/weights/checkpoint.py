"""Lazy, tensor-by-tensor reading of a Hugging Face model folder.

A folder holds ``model.safetensors`` or shards listed by ``model.safetensors.index.json``. Nothing is read until a
tensor is asked for, and then only that tensor (``safe_open`` memory-maps the file), so a one-shot merge of several
7B parents streams instead of holding every parent in memory.

Pickled checkpoints (``pytorch_model.bin``) can run code when loaded: they are refused unless ``allow_pickle`` is
given, and even then read with ``torch.load(weights_only=True)``.

>>> ckpt = Checkpoint.open("path/to/model")      # doctest: +SKIP
>>> ckpt.shape("model.embed_tokens.weight")      # doctest: +SKIP
(32000, 4096)
>>> ckpt.get("model.embed_tokens.weight", dtype=torch.float32)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.errors import UserError

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"

_SAFE_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass
class Checkpoint:
    """The tensors of one model folder, read lazily. Use :meth:`open`; close with :meth:`close` or ``with``."""

    path: Path
    shard_of: dict[str, str]
    is_pickle: bool = False
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)
    _pickled: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool = False, source: str | None = None,
             field_name: str | None = None) -> Checkpoint:
        """Find the weights of ``path``; ``source``/``field_name`` say where the path came from, for errors."""
        folder = Path(path)
        if not folder.exists():
            raise UserError(f"model path '{folder}' does not exist", file=source, field=field_name,
                            fix="give the path of a local Hugging Face model folder (nothing is fetched from a hub)")
        if not folder.is_dir():
            raise UserError(f"model path '{folder}' is a file, not a model folder", file=source, field=field_name,
                            fix="give the folder that holds config.json and the *.safetensors files")
        if (folder / SAFE_INDEX).exists():
            return cls(folder, _read_index(folder / SAFE_INDEX, source, field_name))
        if (folder / SAFE_SINGLE).exists():
            return cls(folder, {name: SAFE_SINGLE for name in _safetensors_names(folder / SAFE_SINGLE)})
        pickled = [p for p in (PICKLE_INDEX, PICKLE_SINGLE) if (folder / p).exists()]
        if pickled and not allow_pickle:
            raise UserError(
                f"'{folder}' has only a pickled checkpoint ({pickled[0]}), which can run code when loaded",
                file=source, field=field_name,
                fix="convert it to safetensors (model.save_pretrained(dir, safe_serialization=True)), "
                    "or pass --allow-pickle if you trust it",
            )
        if pickled:
            if pickled[0] == PICKLE_INDEX:
                shard_of = _read_index(folder / PICKLE_INDEX, source, field_name)
            else:
                state = torch.load(folder / PICKLE_SINGLE, map_location="cpu", weights_only=True, mmap=True)
                shard_of = {name: PICKLE_SINGLE for name in state}
                ckpt = cls(folder, shard_of, is_pickle=True)
                ckpt._pickled[PICKLE_SINGLE] = state
                return ckpt
            return cls(folder, shard_of, is_pickle=True)
        raise UserError(f"'{folder}' has no model weights (no *.safetensors, no index)", file=source,
                        field=field_name, fix="point to a folder saved with save_pretrained()")

    @property
    def names(self) -> list[str]:
        return list(self.shard_of)

    def __contains__(self, name: str) -> bool:
        return name in self.shard_of

    def __iter__(self) -> Iterator[str]:
        return iter(self.shard_of)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.is_pickle:
            return tuple(self._pickle_shard(self.shard_of[name])[name].shape)
        return tuple(self._handle(self.shard_of[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        if self.is_pickle:
            return self._pickle_shard(self.shard_of[name])[name].dtype
        return _SAFE_DTYPES[self._handle(self.shard_of[name]).get_slice(name).get_dtype()]

    def get(self, name: str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Read one tensor (and only it), converted to ``dtype`` on ``device``."""
        shard = self.shard_of[name]
        if self.is_pickle:
            tensor = self._pickle_shard(shard)[name]
        else:
            tensor = self._handle(shard).get_tensor(name)
        return tensor.to(device=device, dtype=dtype or tensor.dtype)

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()
        self._pickled.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, shard: str) -> Any:
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            handle = self._stack.enter_context(safe_open(str(self.path / shard), framework="pt", device="cpu"))
            self._handles[shard] = handle
        return handle

    def _pickle_shard(self, shard: str) -> dict[str, torch.Tensor]:
        state = self._pickled.get(shard)
        if state is None:
            state = torch.load(self.path / shard, map_location="cpu", weights_only=True, mmap=True)
            self._pickled[shard] = state
        return state


def _read_index(index: Path, source: str | None, field_name: str | None) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"'{index}' is not a valid shard index ({exc})", file=source, field=field_name,
                        fix="re-save the model with save_pretrained()") from exc
    missing = sorted({s for s in weight_map.values() if not (index.parent / s).exists()})
    if missing:
        raise UserError(f"'{index}' lists shards that are missing: {', '.join(missing[:3])}", file=source,
                        field=field_name, fix="copy the missing shard files into the folder")
    return dict(weight_map)


def _safetensors_names(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        return list(handle.keys())
