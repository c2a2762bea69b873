"""A merge of LoRA adapters, exported back as one PEFT LoRA adapter (``search export ... --as adapter``).

A merge linear in the task vectors (linear, task_arithmetic, and mixtures of them: soups, interpolations) of
adapters is itself low-rank, per module:

    delta = sum_i a_i * up_i @ down_i = [a_1 up_1 | ... | a_k up_k] @ [down_1; ...; down_k]

so it is written as a LoRA whose rank is the sum of the parents' ranks (``lora_alpha = r`` per module: scale 1),
exact up to float rounding. ``a_i`` is resolved per tensor, so every granularity applies. Tensors the parents
change densely (their ``modules_to_save``) are saved whole, as ``modules_to_save``. Refused, naming the reason:
methods that are not linear in the task vectors (TIES, DARE, ...), a merge that scales the base (linear with
``normalize: false`` and weights not summing to 1), full-checkpoint parents, and a delta on a tied embedding
matrix (PEFT applies a LoRA to one of the two tied modules only).

>>> plan = adapter_plan(parents, [(spec, 1.0)])                    # doctest: +SKIP
>>> write_adapter(plan, Path("out/merged-adapter"), base=Path("models/base"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from search.errors import UserError
from search.merging.spec import MergeSpec
from search.weights.writer import check_destination

PREFIX = "base_model.model."


@dataclass
class AdapterPlan:
    """The tensors of the merged adapter, by PEFT key, and what its config must say."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)                # module -> rank
    modules_to_save: list[str] = field(default_factory=list)
    fan_in_fan_out: bool = False


def adapter_plan(parents: Any, mixture: Sequence[tuple[MergeSpec, float]], *, field_name: str = "--as") -> AdapterPlan:
    """Per tensor, the merged delta as factors (or whole, for dense ones); refuses what is not an adapter."""
    for spec, _ in mixture:
        if spec.merge_method.linear_coefficients is None:
            raise UserError(f"a '{spec.method}' merge is not linear in the task vectors, so it is not a LoRA",
                            field=field_name, fix="export it as a full folder (without --as adapter), or pick a "
                                                  "linear or task_arithmetic candidate")
    kinds = _module_kinds(parents)
    tied = set(_tied_names(parents))
    # PEFT has one fan_in_fan_out flag per adapter: with Conv1D targets (GPT-2), Linear ones are saved whole
    conv = any(kinds.get(n.rpartition(".")[0]) == "conv1d" and d.factors for n, d in parents.deltas.items())
    plan = AdapterPlan(fan_in_fan_out=conv)
    for name, deltas in parents.deltas.items():
        beta, coeffs = _mixture_coefficients(parents, mixture, name)
        if abs(beta - 1.0) > 1e-6:
            raise UserError(f"this merge scales the base by {beta:g} on '{name}', which no adapter can express",
                            field=field_name, fix="export it as a full folder, or use normalize: true")
        if deltas.all_dense and deltas.k:
            raise UserError("the parents include full checkpoints: their merge is not low-rank",
                            field=field_name, fix="export it as a full folder (without --as adapter)")
        used = [i for i in range(deltas.k) if coeffs[i] != 0.0 and (i in deltas.factors or i in deltas.dense_rows)]
        if not used:
            continue
        if name in tied:
            raise UserError(f"the merge changes '{name}', a matrix tied between two modules; a LoRA applies to one "
                            "of them only", field=field_name, fix="export it as a full folder")
        module, _, leaf = name.rpartition(".")
        kind = kinds.get(module)
        dense = (any(i in deltas.dense_rows for i in used) or leaf != "weight" or kind is None
                 or (kind == "linear" and conv))
        if dense:
            merged = deltas.add_linear(parents.base[name], coeffs)
            plan.tensors[f"{PREFIX}{name}"] = merged.detach().cpu().contiguous()
            if module not in plan.modules_to_save:
                plan.modules_to_save.append(module)
            continue
        up = torch.cat([deltas.factors[i][0] * coeffs[i] for i in used], dim=1)
        down = torch.cat([deltas.factors[i][1] for i in used], dim=0)
        plan.ranks[module] = up.shape[1]
        if kind == "embedding":       # delta = (B @ A)^T: A = up^T, B = down^T
            plan.tensors[f"{PREFIX}{module}.lora_embedding_A"] = up.T.contiguous().cpu()
            plan.tensors[f"{PREFIX}{module}.lora_embedding_B"] = down.T.contiguous().cpu()
        elif kind == "conv1d":        # delta = (B @ A)^T as well, stored (in, out)
            plan.tensors[f"{PREFIX}{module}.lora_A.weight"] = up.T.contiguous().cpu()
            plan.tensors[f"{PREFIX}{module}.lora_B.weight"] = down.T.contiguous().cpu()
        else:
            plan.tensors[f"{PREFIX}{module}.lora_A.weight"] = down.contiguous().cpu()
            plan.tensors[f"{PREFIX}{module}.lora_B.weight"] = up.contiguous().cpu()
    if not plan.ranks and not plan.modules_to_save:
        raise UserError("this merge changes nothing (every adapter's coefficient is 0)", field=field_name,
                        fix="pick another candidate")
    return plan


def write_adapter(plan: AdapterPlan, out_dir: Path, *, base: Path, card: str | None = None,
                  overwrite: bool = False) -> Path:
    """``adapter_config.json`` (PEFT's LoraConfig) and ``adapter_model.safetensors``, written atomically."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    check_destination(out_dir, overwrite=overwrite, field="--out")
    modules = list(plan.ranks)
    top = max(plan.ranks.values(), default=1)
    config = LoraConfig(r=top, lora_alpha=top, target_modules=modules or None, rank_pattern=dict(plan.ranks),
                        alpha_pattern=dict(plan.ranks), modules_to_save=plan.modules_to_save or None,
                        fan_in_fan_out=plan.fan_in_fan_out, base_model_name_or_path=str(base),
                        task_type="CAUSAL_LM", inference_mode=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file(plan.tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        if card is not None:
            (tmp / "README.md").write_text(card)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _mixture_coefficients(parents: Any, mixture: Sequence[tuple[MergeSpec, float]],
                          name: str) -> tuple[float, list[float]]:
    """``(beta, a)`` of ``sum_j c_j * merge_j`` on ``name``: ``beta * base + sum_i a_i * delta_i``."""
    k = parents.num_models
    beta, total = 0.0, [0.0] * k
    for spec, c in mixture:
        b, coeffs = spec.merge_method.linear_coefficients(spec.tensor_params(name, parents.layout), k)
        beta += c * b
        total = [t + c * x for t, x in zip(total, coeffs)]
    return beta, total


def _module_kinds(parents: Any) -> dict[str, str]:
    """Module name -> linear | conv1d | embedding, for the modules a LoRA can target (built on ``meta``)."""
    from torch import nn
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(parents.config)
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, Conv1D):
            kinds[name] = "conv1d"
        elif isinstance(module, nn.Embedding):
            kinds[name] = "embedding"
    return kinds


def _tied_names(parents: Any) -> list[str]:
    from search.weights.layout import tied_aliases

    return list(set(tied_aliases(parents.config).values()))
