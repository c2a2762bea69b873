"""Refuse parents that cannot be merged, before any work is done.

Every failure is a :class:`~search.errors.UserError` naming the file, the field and the fix: a missing path,
weights only as a pickle, another architecture, other tensor names or shapes, another vocabulary size, or another
tokenizer (the tokenizer files are compared, not only the vocabulary size). A LoRA adapter is checked against the
reference: its PEFT type, its target modules (present in the base) and its factors' shapes.

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
from search.weights.adapters import LoraAdapter
from search.weights.checkpoint import Checkpoint
from search.weights.layout import tied_aliases
from search.weights.sources import OpenParent, ParentRef, parse_reference

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
_SHOW = 3


@dataclass
class CheckedParents:
    """Parents that passed every check: each open (lazy) with its checkpoint and/or adapter, and the reference
    config. ``parents[0]`` is the reference (the base where there is one)."""

    labels: list[str]
    parents: list[OpenParent]
    config: dict[str, Any]

    @property
    def paths(self) -> list[Path]:
        """Each parent's model folder (the reference's for an adapter given alone)."""
        ref = self.parents[0].ref.model
        return [p.ref.model if p.ref.model is not None else ref for p in self.parents]  # type: ignore[misc]

    @property
    def reference(self) -> Checkpoint:
        return self.parents[0].checkpoint  # type: ignore[return-value]

    def close(self) -> None:
        for parent in self.parents:
            parent.close()


def check_parents(parents: Sequence[tuple[str, str | Path | ParentRef]], *, source: str | None = None,
                  allow_pickle: bool = False) -> CheckedParents:
    """Open and cross-check parents; the first is the reference (the base model where there is one).

    ``parents`` are ``(field, reference)`` pairs: the field names where it was given (``models[1].model``); a
    reference is a model folder, an adapter folder (applied to the reference) or ``MODEL+ADAPTER``.
    """
    labels = [label for label, _ in parents]
    refs = [parse_reference(r) for _, r in parents]
    if refs[0].model is None:
        raise UserError(f"'{refs[0].adapter}' is an adapter, and there is no base model to apply it to",
                        file=source, field=labels[0],
                        fix="name the model it was trained on: base_model: <base folder>, or "
                            "<base folder>+<adapter folder>")
    opened: list[OpenParent] = []
    try:
        for label, ref in zip(labels, refs):
            ckpt = None if ref.model is None else Checkpoint.open(ref.model, allow_pickle=allow_pickle,
                                                                   source=source, field_name=label)
            opened.append(OpenParent(label=label, ref=ref, checkpoint=ckpt, adapter=None))
        configs = {i: _read_config(p.checkpoint.path, source, labels[i])
                   for i, p in enumerate(opened) if p.checkpoint is not None}
        ref_label, ref_config, ref_ckpt = labels[0], configs[0], opened[0].checkpoint
        assert ref_ckpt is not None
        for i, parent in enumerate(opened[1:], start=1):
            if parent.checkpoint is None:
                continue
            label, path, config, ckpt = labels[i], parent.checkpoint.path, configs[i], parent.checkpoint
            _same_architecture(ref_label, ref_config, label, path, config, source)
            _same_tensors(ref_label, ref_ckpt, label, ckpt, source)
            _same_vocabulary(ref_label, ref_config, label, path, config, source)
            _same_tokenizer(ref_label, ref_ckpt.path, label, path, source)
        stored = set(ref_ckpt.names)
        for label, parent in zip(labels, opened):
            if parent.ref.adapter is None:
                continue
            parent.adapter = LoraAdapter.open(parent.ref.adapter, allow_pickle=allow_pickle, source=source,
                                              field_name=label)
            parent.adapter.resolve_names(stored, lambda: _aliases(ref_ckpt.path))
            parent.adapter.check_against(lambda n: ref_ckpt.shape(n) if n in stored else None, ref_label)
    except BaseException:
        for parent in opened:
            parent.close()
        raise
    return CheckedParents(labels=labels, parents=opened, config=ref_config)


def _aliases(folder: Path) -> dict[str, str]:
    """Tied names of the reference's architecture (none when transformers cannot build it: the adapter's
    unknown names are then reported as missing modules)."""
    from transformers import AutoConfig

    try:
        return tied_aliases(AutoConfig.from_pretrained(str(folder)))
    except (ValueError, KeyError, OSError):
        return {}


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
