"""The task vectors of one tensor: dense rows for full checkpoints, low-rank factors for LoRA adapters.

Model ``i``'s delta of a tensor is ``dense_i + up_i @ down_i`` where either part may be absent: a full
fine-tune has a dense row, a LoRA adapter has factors (``up = scale * B``, ``down = A``) and a dense row only for
its ``modules_to_save``, and a parent that leaves the tensor alone has neither. :class:`TensorDeltas` holds them
and gives two views:

- :meth:`TensorDeltas.stacked`: the dense ``(k, *shape)`` stack every method can read, materialised on the fly
  (the stored stack itself, no copy, when every parent is dense);
- :meth:`TensorDeltas.add_linear`: ``out += sum_i c_i * delta_i`` without materialising any delta: dense rows in
  one fused pass, all factors in one matmul of concatenated factors (``[c_1 up_1 | c_2 up_2] @ [down_1; down_2]``).

:func:`merge_tensor` picks the second for methods linear in the task vectors (linear, task_arithmetic) and the
first for the rest (TIES, DARE, TSV, ... mask, elect or decompose per element).

>>> tv = TensorDeltas.build((2, 2), [(None, (torch.ones(2, 1), torch.ones(1, 2))), (torch.ones(2, 2), None)],
...                         dtype=torch.float32, device=torch.device("cpu"))
>>> tv.stacked()[0]
tensor([[1., 1.],
        [1., 1.]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from search.methods.base import HALF_DTYPES, MergeMethod, TensorParams
from search.methods.linear import add_weighted_deltas

Factors = tuple[torch.Tensor, torch.Tensor]          # (up, down): delta = up @ down
DeltaParts = tuple[torch.Tensor | None, Factors | None]  # (dense delta, factors) of one model


@dataclass
class TensorDeltas:
    """The ``k`` task vectors of one tensor of shape ``shape``."""

    shape: torch.Size
    k: int
    dense: torch.Tensor | None          # (len(dense_rows), *shape)
    dense_rows: tuple[int, ...]         # the model each row of ``dense`` belongs to
    factors: dict[int, Factors]         # model -> (up, down)
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    @classmethod
    def build(cls, shape: Sequence[int], parts: Sequence[DeltaParts], *, dtype: torch.dtype,
              device: torch.device) -> TensorDeltas:
        """From each model's ``(dense, factors)``; dense rows are stacked into one tensor."""
        shape = torch.Size(shape)
        rows = tuple(i for i, (d, _) in enumerate(parts) if d is not None)
        dense = None
        if rows:
            dense = torch.empty((len(rows), *shape), dtype=dtype, device=device)
            for j, i in enumerate(rows):
                dense[j].copy_(parts[i][0])  # type: ignore[arg-type]
        factors = {i: (f[0].to(device=device, dtype=dtype), f[1].to(device=device, dtype=dtype))
                   for i, (_, f) in enumerate(parts) if f is not None}
        return cls(shape=shape, k=len(parts), dense=dense, dense_rows=rows, factors=factors, dtype=dtype,
                   device=device)

    @classmethod
    def from_dense(cls, stacked: torch.Tensor) -> TensorDeltas:
        """Every model dense (full checkpoints): the stack as it is."""
        k = stacked.shape[0]
        return cls(shape=stacked.shape[1:], k=k, dense=stacked, dense_rows=tuple(range(k)), factors={},
                   dtype=stacked.dtype, device=stacked.device)

    @property
    def all_dense(self) -> bool:
        return not self.factors and self.dense_rows == tuple(range(self.k))

    @property
    def nbytes(self) -> int:
        """Bytes held: dense rows at full size, adapters at the size of their factors."""
        total = 0 if self.dense is None else self.dense.numel() * self.dense.element_size()
        for up, down in self.factors.values():
            total += up.numel() * up.element_size() + down.numel() * down.element_size()
        return total

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TensorDeltas:
        """The same task vectors with ``fn`` applied to every tensor held (dense rows, factors): placement moves
        them, e.g. to pinned host memory or onto a GPU."""
        dense = None if self.dense is None else fn(self.dense)
        factors = {i: (fn(up), fn(down)) for i, (up, down) in self.factors.items()}
        device = dense.device if dense is not None else next((f[0].device for f in factors.values()), self.device)
        return replace(self, dense=dense, factors=factors, device=device)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TensorDeltas:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor held (for CUDA stream bookkeeping)."""
        held = [] if self.dense is None else [self.dense]
        return held + [t for pair in self.factors.values() for t in pair]

    def stacked(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The dense ``(k, *shape)`` stack (into ``out`` when given, unless the stored stack is returned)."""
        if self.all_dense:
            return self.dense  # type: ignore[return-value]
        if out is None:
            out = torch.empty((self.k, *self.shape), dtype=self.dtype, device=self.device)
        for i in range(self.k):
            row = out[i]
            if i in self.dense_rows:
                row.copy_(self.dense[self.dense_rows.index(i)])  # type: ignore[index]
            else:
                row.zero_()
            if i in self.factors:
                up, down = self.factors[i]
                _add_product(row, up, down)
        return out

    def add_linear(self, base: torch.Tensor, coeffs: Sequence[float], *, beta: float = 1.0,
                   out: torch.Tensor | None = None) -> torch.Tensor:
        """``beta * base + sum_i coeffs[i] * delta_i``, no delta materialised (written into ``out`` if given).

        Half-precision storage is combined in float32 (this tensor only) and rounded once, as every method is.
        """
        half = base.dtype in HALF_DTYPES
        work = base.float() if half else base
        target = None if half else out
        if self.dense is not None:
            dense = self.dense.float() if half else self.dense
            result = add_weighted_deltas(work, dense, [coeffs[i] for i in self.dense_rows], beta=beta, out=target)
        elif target is not None:
            result = torch.mul(work, beta, out=target)
        else:
            result = work * beta
        used = [i for i in sorted(self.factors) if coeffs[i] != 0.0]
        if used:
            up = torch.cat([self.factors[i][0].to(work.dtype) * coeffs[i] for i in used], dim=1)
            down = torch.cat([self.factors[i][1].to(work.dtype) for i in used], dim=0)
            _add_product(result, up, down)
        if not half:
            return result
        return result.to(base.dtype) if out is None else out.copy_(result)


def _add_product(target: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
    """``target += up @ down`` for a 2-D ``target``."""
    matrix = target.view(up.shape[0], down.shape[1])
    if target.device.type == "cpu" and target.dtype in (torch.bfloat16, torch.float16):
        # CPU half-precision matmuls are slow and round the product per step: one float32 product, one rounding.
        matrix.add_((up.float() @ down.float()).to(target.dtype))
    else:
        matrix.addmm_(up, down)


def merge_tensor(method: MergeMethod, base: torch.Tensor, deltas: TensorDeltas, params: TensorParams, *,
                 seed: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Merge one tensor: factors used directly where the method is linear in the deltas, else the dense stack
    materialised for this tensor only (the stored stack itself when every parent is dense)."""
    if method.linear_coefficients is not None and not deltas.all_dense:
        beta, coeffs = method.linear_coefficients(params, deltas.k)
        return deltas.add_linear(base, coeffs, beta=beta, out=out)
    return method.merge(base, deltas.stacked(), params, seed=seed, out=out)
