"""Write a complete Hugging Face model folder, atomically.

Tensors go to ``model-0000i-of-0000N.safetensors`` shards of at most ``max_shard_bytes`` with
``model.safetensors.index.json``; config, generation config and tokenizer files are copied from a source folder;
a model card (README.md) says what was merged and how. Everything is written into a temporary folder beside the
destination and renamed into place at the end, so a crash leaves no half-written model.

>>> with ModelFolderWriter("out/merged", source=Path("models/base")) as w:   # doctest: +SKIP
...     w.add("model.embed_tokens.weight", tensor)
...     w.finish(card="# merged\\n")
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from search.errors import UserError

COPIED_FILES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
DEFAULT_SHARD_BYTES = 2 * 1024**3


def check_destination(out_dir: Path, *, overwrite: bool = False, field: str = "OUT_DIR") -> None:
    """Refuse to replace a non-empty folder unless asked: nothing a user has is lost by mistake."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' exists and is a file", field=field, fix="choose another output folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"'{out_dir}' exists and is not empty", field=field,
                        fix="choose a new folder, or pass --overwrite to replace it")


class ModelFolderWriter:
    """Collects tensors into shards in a temporary folder; :meth:`finish` renames the folder into place."""

    def __init__(self, out_dir: str | Path, *, source: Path | None, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 dtype: torch.dtype | None = None, overwrite: bool = False,
                 config_updates: dict[str, Any] | None = None) -> None:
        self.out_dir = Path(out_dir)
        check_destination(self.out_dir, overwrite=overwrite)
        self.source = source
        self.max_shard_bytes = max_shard_bytes
        self.dtype = dtype
        self.config_updates = config_updates or {}
        self.overwrite = overwrite
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent))
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self._total_bytes = 0
        self._done = False

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor (cast to the output dtype, moved to CPU); flushes a shard when it is full."""
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        tensor = tensor.detach().to("cpu").contiguous()
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor
        self._pending_bytes += size
        self._total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._pending:
            return
        file = f"shard-{len(self._shards):05d}.safetensors"
        save_file(self._pending, str(self.tmp / file), metadata={"format": "pt"})
        self._shards.append((file, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self, *, card: str | None = None, extra_files: dict[str, str] | None = None) -> Path:
        """Write the last shard, the index, config/tokenizer files and the card; move the folder into place."""
        self._flush()
        total = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, (file, names) in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            os.replace(self.tmp / file, self.tmp / final)
            weight_map.update({n: final for n in names})
        index = {"metadata": {"total_size": self._total_bytes}, "weight_map": weight_map}
        (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if self.source is not None:
            for name in COPIED_FILES:
                if (self.source / name).exists():
                    shutil.copy2(self.source / name, self.tmp / name)
        self._update_config()
        if card is not None:
            (self.tmp / "README.md").write_text(card)
        for name, text in (extra_files or {}).items():
            (self.tmp / name).write_text(text)
        if self.out_dir.exists():
            check_destination(self.out_dir, overwrite=self.overwrite)
            shutil.rmtree(self.out_dir)
        os.replace(self.tmp, self.out_dir)
        self._done = True
        return self.out_dir

    def _update_config(self) -> None:
        file = self.tmp / "config.json"
        if not file.exists():
            return
        config = json.loads(file.read_text())
        if self.dtype is not None:
            name = str(self.dtype).removeprefix("torch.")
            config["dtype"] = name
            config.pop("torch_dtype", None)
        config.update(self.config_updates)
        file.write_text(json.dumps(config, indent=2) + "\n")

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ModelFolderWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self._done:
            self.abort()
