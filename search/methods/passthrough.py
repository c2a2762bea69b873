"""Passthrough of one whole model, optionally scaled, as mergekit's ``passthrough`` used with ``models:``.

    merged = scale * model          (scale omitted: the model unchanged)

mergekit's passthrough mostly serves frankenmerges (``slices:``), which change the architecture and are not
supported here; with ``models:`` it copies (and can scale, per tensor through filters) a single model. It takes
exactly one input: a recipe that also names a ``base_model`` other than that model gives it two (refused, as
mergekit refuses it).

>>> import torch
>>> base, deltas = torch.ones(2), torch.tensor([[1.0, -1.0]])
>>> passthrough_merge(base, deltas, TensorParams(per_model={"scale": torch.tensor([0.5])}), None, None)
tensor([1., 0.])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, model_values

SCALE = ParamSpec(
    "scale", per_model=True, default=1.0, low=-10.0, high=10.0, search_low=0.0, search_high=1.5,
    doc="factor applied to the model's weights (mergekit's default, none, leaves them unchanged)",
)


def passthrough_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """The one listed model, times its scale."""
    if deltas.shape[0] != 1:
        raise ValueError(f"passthrough takes exactly 1 model, got {deltas.shape[0]}")
    scale = model_values(params, SCALE, 1)[0]
    work = torch.promote_types(base.dtype, torch.float32)
    model = base.to(work) + deltas[0].to(work)
    return (model if scale == 1.0 else model * scale).to(base.dtype)


PASSTHROUGH = MergeMethod(
    name="passthrough",
    fn=passthrough_merge,
    params=(SCALE,),
    needs_base=False,
    min_models=1,
    max_models=1,
    doc="Passthrough: one whole model, optionally scaled, https://github.com/arcee-ai/mergekit",
)
