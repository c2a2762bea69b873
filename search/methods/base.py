"""The contract every merge method meets.

A merge method is a pure function of one tensor's worth of inputs:

    merged = method.merge(base, deltas, params, seed=..., out=...)

- ``base``: the base model's tensor (or, for methods without a base, a reference parent's tensor).
- ``deltas``: one row per model listed in the recipe, stacked: ``deltas[i] = model_i - base``; shape
  ``(k, *base.shape)``. A model that *is* the base has an all-zero row and ``is_base[i] == True``; methods
  that, like mergekit, leave the base out of the combination drop those rows.
- ``params``: the already-resolved scalars for this tensor (granularity and filters are resolved before a method
  is called): per-model values as 1-D tensors of length ``k`` and global values as Python scalars.

Methods never touch disk, devices, Optuna or Ray. They compute in the dtype and on the device of ``base``.

Per-model values are best given as float64 tensors: ``int(density * numel)`` then counts exactly what mergekit
counts (a float32 ``0.29`` is ``0.28999999165``).

>>> import torch
>>> from search.methods import get_method, TensorParams
>>> base, deltas = torch.zeros(3), torch.tensor([[1.0, -2.0, 0.0], [3.0, 2.0, 0.0]])
>>> params = TensorParams(per_model={"weight": torch.tensor([0.5, 0.5], dtype=torch.float64)})
>>> get_method("task_arithmetic").merge(base, deltas, params)
tensor([2., 0., 0.])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

ParamKind = Literal["float", "bool", "int"]
HALF_DTYPES = (torch.bfloat16, torch.float16)  # merged in float32, one tensor at a time


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method, as a recipe or a search space names it.

    ``per_model`` parameters are given under ``models[i].parameters`` (one value per model);
    the others under the recipe's top-level ``parameters``. ``default=None`` means required.
    ``low``/``high`` bound valid values (inclusive); ``search_low``/``search_high`` are the range a search
    samples from when a space file names the parameter without a range.
    """

    name: str
    kind: ParamKind = "float"
    per_model: bool = False
    default: float | bool | int | None = None
    low: float | None = None
    high: float | None = None
    search_low: float | None = None
    search_high: float | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    def check(self, value: float | bool | int) -> str | None:
        """Return a sentence saying what is wrong with ``value``, or None when it is valid."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                return f"'{self.name}' must be true or false, got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"'{self.name}' must be a number, got {value!r}"
        if self.kind == "int" and not isinstance(value, int):
            return f"'{self.name}' must be a whole number, got {value!r}"
        if value != value:
            return f"'{self.name}' must be a number, got NaN"
        if self.low is not None and value < self.low:
            return f"'{self.name}' must be >= {self.low}, got {value}"
        if self.high is not None and value > self.high:
            return f"'{self.name}' must be <= {self.high}, got {value}"
        return None


@dataclass(frozen=True)
class TensorParams:
    """Resolved parameters for one tensor: per-model values (shape ``(k,)``) and global scalars."""

    per_model: Mapping[str, torch.Tensor] = field(default_factory=dict)
    globals: Mapping[str, float | bool | int] = field(default_factory=dict)
    is_base: torch.Tensor | None = None  # bool (k,), True where the listed model is the base
    # False when the recipe names no base: ``base`` is then only a reference parent (the first model), which
    # methods with an optional base (nuslerp, multislerp) must not interpolate around.
    has_base: bool = True
    # data-aware methods (fisher, regmean): this tensor's per-parent statistics over the calibration data, by kind
    # (``fisher``: (k, *shape); ``gram``: (k, in, in) for a linear layer's weight; ``fisher_norm``: (k,))
    statistics: Mapping[str, torch.Tensor] = field(default_factory=dict)


# fn(base, deltas, params, seed, out) -> merged tensor (``out`` itself when the method wrote through it)
MergeFn = Callable[[torch.Tensor, torch.Tensor, TensorParams, int | None, torch.Tensor | None], torch.Tensor]
# linear_coefficients(params, k) -> (beta, coeffs): the method is merged = beta * base + sum_i coeffs[i] * delta_i
LinearCoefficients = Callable[[TensorParams, int], tuple[float, list[float]]]
# check_values(per-model values by name, global values by name) -> what is wrong, or None
ValuesCheck = Callable[[Mapping[str, Sequence[float]], Mapping[str, float | bool | int]], str | None]
# check_count(models merged, global values by name) -> what is wrong, or None (lawa: k <= models)
CountCheck = Callable[[int, Mapping[str, float | bool | int]], str | None]


@dataclass(frozen=True)
class MergeMethod:
    """A registry entry: a name, its parameters, and the pure function that merges one tensor.

    ``min_models``/``max_models`` count the models the method combines: for a method that ``needs_base`` (or
    takes an ``optional_base``), the listed models other than the base (slerp: exactly 1); for one that ignores
    the base (linear, karcher), every listed model, the base too when it is listed (mergekit's ``BasePolicy``:
    required, optional, ignored).
    ``check_values``, when set, checks constraints between values (della: ``density +/- epsilon`` inside
    ``(0, 1)``) and returns a sentence saying what is wrong, or None; ``check_count`` does the same for the
    number of models against global values (lawa's window). ``takes_base=False`` refuses a recipe that names a
    base at all (checkpoint averaging: the checkpoints are the models). ``statistics`` names the per-parent
    statistics over calibration data a data-aware method reads from ``TensorParams.statistics`` (``fisher``,
    ``gram``): a run computes them once (:mod:`search.statistics`); a recipe alone cannot give them.
    ``linear_coefficients``, when set, says the method is linear in the task vectors
    (``beta * base + sum_i c_i * delta_i``) and gives ``(beta, c)``: low-rank task vectors (LoRA) are then
    combined as factors, and such a merge of adapters can be exported as an adapter.
    """

    name: str
    fn: MergeFn
    params: tuple[ParamSpec, ...]
    needs_base: bool
    min_models: int = 1
    max_models: int | None = None
    stochastic: bool = False
    doc: str = ""
    check_values: ValuesCheck | None = None
    elementwise: bool = False  # each output entry depends only on the same entry of base and deltas
    linear_coefficients: LinearCoefficients | None = None
    optional_base: bool = False
    takes_base: bool = True
    check_count: CountCheck | None = None
    statistics: str | None = None

    @property
    def excludes_base(self) -> bool:
        """True when a listed base takes no part as a model (mergekit's required or optional base)."""
        return self.needs_base or self.optional_base

    def count_models(self, is_base: Sequence[bool]) -> int:
        """How many of the listed models count towards ``min_models``/``max_models``."""
        return sum(1 for b in is_base if not b) if self.excludes_base else len(is_base)

    def check_model_count(self, is_base: Sequence[bool]) -> str | None:
        """Return a sentence saying why this many models cannot be merged, or None."""
        n = self.count_models(is_base)

        def what(k: int) -> str:
            return f"{k} model{'' if k == 1 else 's'}" + (" besides the base" if self.excludes_base else "")

        if self.max_models is not None and self.min_models == self.max_models and n != self.min_models:
            return f"'{self.name}' merges exactly {what(self.min_models)}, got {n}"
        if n < self.min_models:
            return f"'{self.name}' needs at least {what(self.min_models)}, got {n}"
        if self.max_models is not None and n > self.max_models:
            return f"'{self.name}' merges at most {what(self.max_models)}, got {n}"
        return None

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def per_model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.per_model)

    @property
    def global_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if not p.per_model)

    def merge(
        self,
        base: torch.Tensor,
        deltas: torch.Tensor,
        params: TensorParams,
        *,
        seed: int | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge one tensor; write into ``out`` when given (and return it).

        ``fn`` may write straight into ``out`` (fused kernels for the linear family); otherwise the result is
        copied into it. Half-precision inputs (bf16, fp16 storage) are merged in float32: this one tensor's base
        and deltas are upcast, merged, and the result written back in the storage dtype — so a bf16 search
        differs from a float32 one by the rounding of its inputs and output only.
        """
        if out is not None and out.device != base.device:  # a working model sharded over devices: merge, then move
            out.copy_(self.merge(base, deltas, params, seed=seed))
            return out
        if (base.dtype in HALF_DTYPES or deltas.dtype in HALF_DTYPES) and self.elementwise:
            return _merge_in_chunks(self.fn, base, deltas, params, seed, out)
        if base.dtype in HALF_DTYPES or deltas.dtype in HALF_DTYPES:
            storage = base.dtype if out is None else out.dtype
            result = self.fn(base.float(), deltas.float(), params, seed, None)
            if out is None:
                return result.to(storage)
            out.copy_(result)
            return out
        result = self.fn(base, deltas, params, seed, out)
        if out is None:
            return result
        if result.data_ptr() != out.data_ptr():
            out.copy_(result)
        return out


def _merge_in_chunks(fn: MergeFn, base: torch.Tensor, deltas: torch.Tensor, params: TensorParams,
                     seed: int | None, out: torch.Tensor | None) -> torch.Tensor:
    """An elementwise method on half-precision storage, in float32, a slice of the flattened tensor at a time.

    The same numbers as upcasting the whole tensor (each entry sees only its own inputs), but the float32
    copies are a few reused, cache-sized buffers instead of (k + 2) fresh tensor-sized allocations: the merge
    streams the bf16 inputs once (4 x 16.7 M-entry task vectors: ~0.35 s instead of ~2.1 s on one loaded CPU thread).
    """
    n, k = base.numel(), deltas.shape[0]
    storage = base.dtype if out is None else out.dtype
    result = out if out is not None and out.is_contiguous() else torch.empty(base.shape, dtype=storage,
                                                                               device=base.device)
    flat_base, flat_deltas, flat_out = base.reshape(-1), deltas.reshape(k, -1), result.view(-1)
    step = min(n, CHUNK_CUDA if base.device.type == "cuda" else CHUNK_CPU)
    buffer = torch.empty((k + 2) * step, dtype=torch.float32, device=base.device)
    for start in range(0, n, step):
        size = min(step, n - start)
        b = buffer[:size].copy_(flat_base[start:start + size])
        d = buffer[step:step + k * size].view(k, size).copy_(flat_deltas[:, start:start + size])
        o = buffer[(k + 1) * step:(k + 1) * step + size]
        flat_out[start:start + size].copy_(fn(b, d, params, seed, o))
    if out is not None and result is not out:
        out.copy_(result)
        return out
    return result


CHUNK_CPU = 1 << 18   # float32 entries per slice: 1 MiB per row, in cache; smaller slices pay Python per slice
CHUNK_CUDA = 1 << 24  # on a GPU, slices only bound the float32 scratch (64 MiB per row)


def model_values(params: TensorParams, spec: ParamSpec, k: int) -> list[float]:
    """The ``k`` per-model values of ``spec`` (its default when unresolved) as Python floats."""
    value = params.per_model.get(spec.name)
    if value is None:
        if spec.default is None:
            raise ValueError(f"per-model parameter '{spec.name}' was not resolved for this tensor")
        return [float(spec.default)] * k
    values = value.tolist() if isinstance(value, torch.Tensor) else list(value)
    if len(values) != k:
        raise ValueError(f"per-model parameter '{spec.name}' has {len(values)} values for {k} models")
    return [float(v) for v in values]


def global_value(params: TensorParams, spec: ParamSpec) -> float | bool | int:
    """The value of the global parameter ``spec`` (its default when unresolved)."""
    value = params.globals.get(spec.name, spec.default)
    if value is None:
        raise ValueError(f"parameter '{spec.name}' was not resolved for this tensor")
    if isinstance(value, torch.Tensor):
        value = value.item()
    return value


def base_rows(params: TensorParams, k: int) -> list[bool]:
    """``is_base`` as a list of ``k`` booleans (all False when unset)."""
    if params.is_base is None:
        return [False] * k
    flags = [bool(b) for b in params.is_base.tolist()]
    if len(flags) != k:
        raise ValueError(f"is_base has {len(flags)} entries for {k} models")
    return flags


def model_rows(params: TensorParams, k: int) -> list[int]:
    """Indices of the rows of ``deltas`` that are not the base."""
    return [i for i, b in enumerate(base_rows(params, k)) if not b]


def select_rows(deltas: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``deltas[rows]``, a view (no copy) when ``rows`` is a contiguous range."""
    rows = list(rows)
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return deltas.narrow(0, rows[0], len(rows))
    return deltas[torch.tensor(rows, dtype=torch.long, device=deltas.device)]


def flat_out(out: torch.Tensor | None) -> torch.Tensor | None:
    """``out`` as a flat view when it can be written through one, else None (the result is then copied)."""
    if out is None or not out.is_contiguous():
        return None
    return out.view(-1)


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded from ``seed`` (fresh entropy when None).

    Random masks are always drawn on the CPU and then moved to the tensor's device: CUDA's generator (Philox)
    gives other bits than the CPU's (Mersenne Twister) for the same seed, and a candidate scored on a GPU must be
    the very weights exported on a CPU.
    """
    generator = torch.Generator(device="cpu")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator
