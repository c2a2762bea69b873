"""Merges of a base with exactly one model, as mergekit's ``nearswap`` and ``arcee_fusion``.

**nearswap** (``a`` = base, ``b`` = the model): take the model where it is close to the base, per entry

    w = clamp(t / max(|a - b|, 1e-6), 0, 1),   merged = w b + (1 - w) a

so entries that differ by at most ``t`` become the model's, larger differences move only ``t`` towards it.

**arcee_fusion**: keep the model's change only where it matters most. Per entry, with softmax over the last
dimension (a 1-D tensor is one row):

    I      = |b - a| * KL(softmax(b) + 1e-8 || softmax(a) + 1e-8)        (the KL of each row, broadcast)
    tau    = median(I) + 1.5 (q3(I) - q1(I))       (quantiles as sorted(I)[floor(q (n - 1))])
    merged = a + (b - a) [I >= tau]

mergekit estimates the quantiles from 1,000,000 entries drawn at random for larger tensors; here they are
always exact (the same numbers up to 1e6 entries, and no randomness above).

>>> import torch
>>> base, deltas = torch.zeros(3), torch.tensor([[0.05, 0.5, -2.0]])
>>> nearswap_merge(base, deltas, TensorParams(globals={"t": 0.1}), None, None)
tensor([ 0.0500,  0.1000, -0.1000])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value, model_rows

T = ParamSpec(
    "t", default=None, low=0.0, high=1e6, search_low=0.0, search_high=0.01,
    doc="distance below which an entry becomes the model's (in weight units)",
)


def _pair(base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, name: str):
    rows = model_rows(params, deltas.shape[0])
    if len(rows) != 1:
        raise ValueError(f"{name} merges the base with exactly one other model, got {len(rows)}")
    work = torch.promote_types(base.dtype, torch.float32)
    a = base.to(work)
    return a, a + deltas[rows[0]].to(work)


def nearswap_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Move each entry of the base towards the model by at most ``t``."""
    a, b = _pair(base, deltas, params, "nearswap")
    weight = (float(global_value(params, T)) / torch.abs(a - b).clamp(min=1e-6)).clamp(min=0, max=1)
    return (weight * b + (1 - weight) * a).to(base.dtype)


def fusion_importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """``|model - base|`` times the KL divergence of the rows' softmaxes (mergekit's importance score)."""
    p = F.softmax(model, dim=-1) + 1e-8
    q = F.softmax(base, dim=-1) + 1e-8
    return (model - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def fusion_threshold(importance: torch.Tensor) -> torch.Tensor:
    """``median + 1.5 IQR`` of the importance scores, quantiles taken at ``floor(q (n - 1))`` of the sorted."""
    flat = importance.reshape(-1)
    # float32 index arithmetic, as mergekit computes it
    index = (torch.tensor([0.25, 0.5, 0.75]) * (flat.numel() - 1)).long().tolist()
    q1, median, q3 = (torch.kthvalue(flat, i + 1).values for i in index)
    return median + 1.5 * (q3 - q1)


def arcee_fusion_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Keep the model's change where its importance reaches the outlier threshold, the base elsewhere."""
    a, b = _pair(base, deltas, params, "arcee_fusion")
    importance = fusion_importance(b, a)
    mask = (importance >= fusion_threshold(importance)).to(a.dtype)
    return (a + (b - a) * mask).to(base.dtype)


NEARSWAP = MergeMethod(
    name="nearswap",
    fn=nearswap_merge,
    params=(T,),
    needs_base=True,
    min_models=1,
    max_models=1,
    doc="NearSwap: take the model's values where they lie within t of the base, "
        "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001",
)
ARCEE_FUSION = MergeMethod(
    name="arcee_fusion",
    fn=arcee_fusion_merge,
    params=(),
    needs_base=True,
    min_models=1,
    max_models=1,
    doc="Arcee Fusion: keep the model's changes whose importance is an outlier, https://arcee.ai",
)
