"""Merge methods: pure functions that merge one tensor, and the registry that names them.

>>> import torch
>>> from search.methods import TensorParams, get_method
>>> ties = get_method("ties")
>>> base, deltas = torch.zeros(4), torch.tensor([[1.0, -2.0, 0.5, 3.0], [2.0, 1.0, -0.5, 3.0]])
>>> weights = torch.tensor([1.0, 1.0], dtype=torch.float64)
>>> ties.merge(base, deltas, TensorParams(per_model={"weight": weights}))  # 0.5 vs -0.5: a tie elects +
tensor([ 1.5000, -2.0000,  0.5000,  3.0000])
"""

from search.methods.base import MergeMethod, ParamKind, ParamSpec, TensorParams
from search.methods.registry import METHODS, get_method

__all__ = ["METHODS", "MergeMethod", "ParamKind", "ParamSpec", "TensorParams", "get_method"]
