"""Refuse parents that cannot be merged, before any work is done.

Every failure is a :class:`~search.errors.UserError` naming the file, the field and the fix: a missing path,
weights only as a pickle, another architecture, other tensor names or shapes, another vocabulary size, or another
tokenizer (the tokenizer files are compared, not only the vocabulary size).

>>> parents = check_parents([("base_model", "models/base"), ("models[0].model", "models/code")],
...                         source="recipe.yaml")                              # doctest: +SKIP
>>> parents.config["model_type"]                                            # doctest: +SKIP
'llama'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.weights.checkpoint import Checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
_SHOW = 3


@dataclass
class CheckedParents:
    """Parents that passed every check: their checkpoints (open, lazy) and the reference config."""

    labels: list[str]
    paths: list[Path]
    checkpoints: list[Checkpoint]
    config: dict[str, Any]

    def close(self) -> None:
        for ckpt in self.checkpoints:
            ckpt.close()


def check_parents(parents: Sequence[tuple[str, str | Path]], *, source: str | None = None,
                  allow_pickle: bool = False) -> CheckedParents:
    """Open and cross-check parents; the first is the reference (the base model where there is one).

    ``parents`` are ``(field, path)`` pairs: the field names where the path was given (``models[1].model``).
    """
    labels = [label for label, _ in parents]
    paths = [Path(p) for _, p in parents]
    checkpoints = [Checkpoint.open(p, allow_pickle=allow_pickle, source=source, field_name=label)
                   for label, p in parents]
    configs = [_read_config(p, source, label) for label, p in zip(labels, paths)]
    ref_label, ref_config, ref_ckpt = labels[0], configs[0], checkpoints[0]
    for label, path, config, ckpt in zip(labels[1:], paths[1:], configs[1:], checkpoints[1:]):
        _same_architecture(ref_label, ref_config, label, path, config, source)
        _same_tensors(ref_label, ref_ckpt, label, ckpt, source)
        _same_vocabulary(ref_label, ref_config, label, path, config, source)
        _same_tokenizer(ref_label, paths[0], label, path, source)
    return CheckedParents(labels=labels, paths=paths, checkpoints=checkpoints, config=ref_config)


def _read_config(folder: Path, source: str | None, label: str) -> dict[str, Any]:
    file = folder / "config.json"
    if not file.exists():
        raise UserError(f"'{folder}' has no config.json", file=source, field=label,
                        fix="point to a Hugging Face model folder saved with save_pretrained()")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"'{file}' is not valid JSON ({exc})", file=source, field=label,
                        fix="repair or re-save the model's config.json") from exc


def _same_architecture(ref_label: str, ref: dict[str, Any], label: str, path: Path, config: dict[str, Any],
                       source: str | None) -> None:
    for key in ("model_type", "architectures"):
        if ref.get(key) != config.get(key):
            raise UserError(
                f"'{path}' is a different architecture: {key} {config.get(key)!r} where {ref_label} has "
                f"{ref.get(key)!r}", file=source, field=label,
                fix="merge only fine-tunes of the same base model",
            )


def _same_tensors(ref_label: str, ref: Checkpoint, label: str, ckpt: Checkpoint, source: str | None) -> None:
    ref_names, names = set(ref.names), set(ckpt.names)
    missing = [n for n in ref.names if n not in names]
    extra = [n for n in ckpt.names if n not in ref_names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} tensor(s) of {ref_label} ({', '.join(missing[:_SHOW])})")
        if extra:
            parts.append(f"has {len(extra)} tensor(s) {ref_label} lacks ({', '.join(extra[:_SHOW])})")
        raise UserError(f"'{ckpt.path}' {'; '.join(parts)}", file=source, field=label,
                        fix="merge only models with the same tensor names (fine-tunes of one base, adapters merged)")
    wrong = [(n, ref.shape(n), ckpt.shape(n)) for n in ref.names if ref.shape(n) != ckpt.shape(n)]
    if wrong:
        shown = ", ".join(f"{n} {list(s)} vs {list(r)}" for n, r, s in wrong[:_SHOW])
        raise UserError(f"'{ckpt.path}' has {len(wrong)} tensor(s) whose shape differs from {ref_label}: {shown}",
                        file=source, field=label, fix="merge only models of the same size and vocabulary")


def _vocab_size(config: dict[str, Any]) -> int | None:
    if "vocab_size" in config:
        return config["vocab_size"]
    text = config.get("text_config")
    return text.get("vocab_size") if isinstance(text, dict) else None


def _same_vocabulary(ref_label: str, ref: dict[str, Any], label: str, path: Path, config: dict[str, Any],
                     source: str | None) -> None:
    if _vocab_size(ref) != _vocab_size(config):
        raise UserError(
            f"'{path}' has vocab_size {_vocab_size(config)} where {ref_label} has {_vocab_size(ref)}",
            file=source, field=label, fix="merge only models that share the base's vocabulary",
        )


def _same_tokenizer(ref_label: str, ref_path: Path, label: str, path: Path, source: str | None) -> None:
    """Compare the tokenizer files both folders have; a fine-tune saved without a tokenizer uses the base's."""
    for name in TOKENIZER_FILES:
        a, b = ref_path / name, path / name
        if not (a.exists() and b.exists()):
            continue
        if a.read_bytes() == b.read_bytes():
            continue
        difference = _tokenizer_json_difference(a, b) if name == "tokenizer.json" else "contents differ"
        if difference is None:
            continue
        raise UserError(f"'{path}' has another tokenizer than {ref_label}: {name}: {difference}",
                        file=source, field=label,
                        fix="merge only fine-tunes that kept the base's tokenizer (same vocabulary and special tokens)")


def _tokenizer_json_difference(a: Path, b: Path) -> str | None:
    """The first vocabulary/merge/added-token difference between two tokenizer.json files, or None (same)."""
    try:
        ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    except json.JSONDecodeError:
        return "contents differ"
    ma, mb = ja.get("model", {}), jb.get("model", {})
    if ma.get("type") != mb.get("type"):
        return f"model type {mb.get('type')!r} vs {ma.get('type')!r}"
    va, vb = ma.get("vocab"), mb.get("vocab")
    if va != vb:
        if isinstance(va, dict) and isinstance(vb, dict):
            ida = {i: t for t, i in va.items()}
            idb = {i: t for t, i in vb.items()}
            for i in sorted(set(ida) | set(idb)):
                if ida.get(i) != idb.get(i):
                    return f"token id {i} is {idb.get(i)!r} vs {ida.get(i)!r}"
        return "vocabularies differ"
    if ma.get("merges") != mb.get("merges"):
        return "BPE merges differ"
    added_a = [(t.get("id"), t.get("content")) for t in ja.get("added_tokens", [])]
    added_b = [(t.get("id"), t.get("content")) for t in jb.get("added_tokens", [])]
    if added_a != added_b:
        return f"added/special tokens differ ({added_b[:_SHOW]} vs {added_a[:_SHOW]})"
    return None
