"""Parents as users name them, and each parent's task vector of one tensor.

A parent reference is a model folder, a PEFT adapter folder (applied to the base), a ``.gguf`` file (dequantized
once, see :mod:`search.weights.gguf`), or mergekit's ``MODEL+ADAPTER`` (the adapter applied to that model). Every
model's value of a tensor is a *dense value* (its checkpoint's tensor, or the adapter's ``modules_to_save``
replacement) plus the adapter's low-rank product. The task vector against the base is then

    delta = (dense value - base's dense value) + up @ down - base_up @ base_down

where the dense part is skipped when both dense values come from the same stored tensor (an adapter on the base:
only its factors are kept) or are equal, and the base's own adapter (``base_model: BASE+ADAPTER``) enters with a
minus sign, as factors.

>>> parse_reference("models/base+adapters/code")        # doctest: +SKIP
ParentRef(model=PosixPath('models/base'), adapter=PosixPath('adapters/code'))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from search.weights.adapters import LoraAdapter, is_adapter
from search.weights.checkpoint import Checkpoint
from search.weights.deltas import DeltaParts, Factors


@dataclass(frozen=True)
class ParentRef:
    """A model folder, an adapter folder, or both (``MODEL+ADAPTER``); ``model=None``: the base itself."""

    model: Path | None
    adapter: Path | None = None

    def __str__(self) -> str:
        if self.adapter is None:
            return str(self.model)
        return str(self.adapter) if self.model is None else f"{self.model}+{self.adapter}"


def parse_reference(value: str | Path | ParentRef) -> ParentRef:
    """A reference as written: ``MODEL+ADAPTER`` splits (as mergekit's ``ModelReference``); an adapter folder
    alone is applied to the base; anything else is a model."""
    if isinstance(value, ParentRef):
        return value
    text = str(value)
    if "+" in text and not Path(text).exists():
        model, _, adapter = text.partition("+")
        return ParentRef(model=Path(model), adapter=Path(adapter))
    if is_adapter(text):
        return ParentRef(model=None, adapter=Path(text))
    return ParentRef(model=Path(text))


@dataclass
class OpenParent:
    """A parent with its stores open: a checkpoint (None: the base's) and an adapter (None: none)."""

    label: str
    ref: ParentRef
    checkpoint: Checkpoint | None
    adapter: LoraAdapter | None

    def dense_source(self, name: str, base: OpenParent) -> tuple[str, ...]:
        """Where this parent's dense value of ``name`` is stored (equal sources: equal values)."""
        if self.adapter is not None and name in self.adapter.replacements:
            return ("adapter", str(self.adapter.path.resolve()), name)
        ckpt = self.checkpoint if self.checkpoint is not None else base.checkpoint
        assert ckpt is not None, "the base parent always has a checkpoint"
        return ("checkpoint", str(ckpt.path.resolve()), name)

    def dense_value(self, name: str, base: OpenParent, *, dtype: torch.dtype | None,
                    device: torch.device | str) -> torch.Tensor:
        if self.adapter is not None and name in self.adapter.replacements:
            return self.adapter.replacement(name, dtype=dtype, device=device)  # type: ignore[return-value]
        ckpt = self.checkpoint if self.checkpoint is not None else base.checkpoint
        return ckpt.get(name, dtype=dtype, device=device)  # type: ignore[union-attr]

    def factors(self, name: str, *, dtype: torch.dtype, device: torch.device | str) -> Factors | None:
        return None if self.adapter is None else self.adapter.factors(name, dtype=dtype, device=device)

    def close(self) -> None:
        if self.checkpoint is not None:
            self.checkpoint.close()
        if self.adapter is not None:
            self.adapter.close()


def base_value(base: OpenParent, name: str, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The base's tensor: its dense value plus its own adapter's product (``base_model: BASE+ADAPTER``)."""
    value = base.dense_value(name, base, dtype=dtype, device=device)
    factors = base.factors(name, dtype=torch.float32 if value.is_floating_point() else dtype, device=device)
    if factors is not None:
        up, down = factors
        value = (value.float() + up @ down).to(dtype)
    return value


def delta_parts(base: OpenParent, models: list[OpenParent], name: str, base_dense: torch.Tensor, *,
                dtype: torch.dtype, device: torch.device | str) -> list[DeltaParts]:
    """Each model's ``(dense delta or None, factors or None)`` for ``name``; ``base_dense`` is the base's
    dense value (before its own adapter) in ``dtype`` on ``device``."""
    base_source = base.dense_source(name, base)
    base_factors = base.factors(name, dtype=dtype, device=device)
    parts: list[DeltaParts] = []
    for model in models:
        dense = None
        source = model.dense_source(name, base)
        if source != base_source:
            dense = model.dense_value(name, base, dtype=dtype, device=device) - base_dense
            if "adapter" in (source[0], base_source[0]) and not dense.any():
                dense = None  # a saved copy of the base's tensor (PEFT saves an embedding target's base layer)
        factors = model.factors(name, dtype=dtype, device=device)
        if base_factors is not None:
            minus = (-base_factors[0], base_factors[1])
            factors = minus if factors is None else (torch.cat([factors[0], minus[0]], dim=1),
                                                     torch.cat([factors[1], minus[1]], dim=0))
        parts.append((dense, factors))
    return parts
