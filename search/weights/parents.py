"""Parents loaded once for a search: the base and the fine-tunes' task vectors, merged in place per candidate.

``Parents`` holds the base's tensors and, per tensor, the task vectors of the ``k`` parents
(:class:`~search.weights.deltas.TensorDeltas`: ``finetune_i - base`` as dense rows for full checkpoints, as
low-rank factors for LoRA adapters, both mixed freely) in one dtype on one device. A candidate (a
:class:`MergeSpec`) is merged straight into the parameters of a model allocated once by
:meth:`Parents.build_model`: no disk, no model re-creation, no whole-model allocation per candidate. Methods linear
in the task vectors use adapters' factors directly; the others see a dense stack built per tensor, on the fly.

>>> parents = Parents.load("models/base", ["models/add", "adapters/rev"], dtype=torch.float32)  # doctest: +SKIP
>>> model = parents.build_model()                                                            # doctest: +SKIP
>>> parents.merge_into(model, MergeSpec(method="task_arithmetic", parameters={"weight": 0.5},
...                                     model_parameters=({}, {})))                          # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from search.errors import UserError
from search.merging.spec import MergeSpec
from search.methods import TensorParams
from search.weights.checks import check_parents
from search.weights.deltas import TensorDeltas, merge_tensor
from search.weights.layout import ModelLayout
from search.weights.placement import Mode, TensorPlacement, layer_devices
from search.weights.sources import ParentRef, base_value, delta_parts


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Parents:
    """Base tensors and task vectors, resident on ``device`` in ``dtype``."""

    base_path: Path
    model_paths: list[Path]
    layout: ModelLayout
    config: Any
    base: dict[str, torch.Tensor]
    deltas: dict[str, TensorDeltas]
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)  # non-float tensors, copied as they are
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    placement: TensorPlacement | None = None  # None: resident on ``device``
    # data-aware methods: per-parent statistics of the calibration data by kind (search.statistics), attached
    # once per run from the run folder
    statistics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, base_path: str | Path | ParentRef, model_paths: Sequence[str | Path | ParentRef], *,
             dtype: torch.dtype = torch.float32, device: str | torch.device = "auto", allow_pickle: bool = False,
             trust_remote_code: bool = False, labels: Sequence[str] | None = None,
             source: str | None = None, placement: Mode = "resident",
             devices: Sequence[str | torch.device] | None = None) -> Parents:
        """Check the parents against each other, then read each tensor once into base + task vectors.

        A model may be a full checkpoint folder, a LoRA adapter folder (kept as factors) or ``MODEL+ADAPTER``.
        ``devices`` (several GPUs) splits the layers evenly over them: each tensor's base and task vectors live on
        (resident) or stream to (stream) the device of its layer. ``placement: stream`` keeps them in pinned host
        memory and copies them tensor by tensor, one ahead of the merge (see :mod:`search.weights.placement`).
        """
        from transformers import AutoConfig

        dev = resolve_device(device)
        labels = list(labels) if labels is not None else [f"models[{i}]" for i in range(len(model_paths))]
        checked = check_parents([("base_model", base_path)] + list(zip(labels, model_paths)), source=source,
                                allow_pickle=allow_pickle)
        try:
            config = AutoConfig.from_pretrained(str(checked.paths[0]), trust_remote_code=trust_remote_code)
            layout = ModelLayout.from_config(config)
            reference, models = checked.parents[0], checked.parents[1:]
            names = list(checked.reference.names)
            targets = [torch.device(d) for d in devices] if devices else [dev]
            compute = layer_devices(layout, names, targets) if len(targets) > 1 else {n: dev for n in names}
            keep = TensorPlacement(placement, compute)
            base: dict[str, torch.Tensor] = {}
            deltas: dict[str, TensorDeltas] = {}
            fixed: dict[str, torch.Tensor] = {}
            moved = [False] * len(models)
            all_full = reference.adapter is None and all(m.adapter is None and m.checkpoint is not None
                                                         for m in models)
            for name in names:
                # read where it will be merged (resident) or on the CPU, then pinned (stream)
                dev = compute[name] if placement == "resident" else torch.device("cpu")
                dense = reference.dense_value(name, reference, dtype=None, device=dev)  # type: ignore[arg-type]
                if not dense.is_floating_point():
                    fixed[name] = dense
                    continue
                dense = dense.to(dtype)
                if all_full:  # full fine-tunes only: subtract straight into one stack (no second copy)
                    stacked = torch.empty((len(models), *dense.shape), dtype=dtype, device=dev)
                    for i, m in enumerate(models):
                        torch.sub(m.dense_value(name, reference, dtype=dtype, device=dev), dense, out=stacked[i])
                        moved[i] = moved[i] or _nonzero(stacked[i])
                    deltas[name] = TensorDeltas.from_dense(stacked)
                else:
                    parts = delta_parts(reference, models, name, dense, dtype=dtype, device=dev)
                    for i, (d, f) in enumerate(parts):
                        moved[i] = moved[i] or _nonzero(d) or (f is not None and _nonzero(f[0]))
                    deltas[name] = TensorDeltas.build(dense.shape, parts, dtype=dtype, device=dev)
                base[name] = base_value(reference, name, dtype=dtype, device=dev) \
                    if reference.adapter is not None else dense
                if placement == "stream":
                    base[name], deltas[name] = keep.store(name, base[name]), keep.store(name, deltas[name])
        finally:
            checked.close()

        def where(ref: ParentRef) -> tuple[Path | None, Path | None]:
            return tuple(None if p is None else Path(p).resolve() for p in (ref.model, ref.adapter))  # type: ignore

        base_ref = where(checked.parents[0].ref)
        for label, path, changed, parent in zip(labels, model_paths, moved, checked.parents[1:]):
            # the base itself listed as a model is deliberate (mergekit allows it; a space of checkpoints without
            # a base takes its first checkpoint as the reference): identical by construction, no warning
            if not changed and where(parent.ref) != base_ref:
                # legitimate input, but almost surely not what was meant
                warnings.warn(f"{label} ({path}) is identical to the base model: its task vector is zero, so it "
                              "adds nothing to any merge (check that the path names the fine-tune)", UserWarning,
                              stacklevel=2)
        return cls(base_path=checked.paths[0], model_paths=[Path(str(p)) for p in model_paths], layout=layout,
                   config=config, base=base, deltas=deltas, fixed=fixed, dtype=dtype, device=targets[0],
                   placement=keep)

    @property
    def num_models(self) -> int:
        return len(self.model_paths)

    @property
    def names(self) -> list[str]:
        return list(self.base)

    def nbytes(self) -> int:
        """Bytes held: base plus every task vector (adapters at the size of their factors)."""
        tensors = list(self.base.values()) + list(self.fixed.values())
        return sum(t.numel() * t.element_size() for t in tensors) + sum(d.nbytes for d in self.deltas.values())

    def model_nbytes(self) -> int:
        """Bytes of one model (the base) in the parents' dtype."""
        return sum(t.numel() * t.element_size() for t in self.base.values())

    def build_model(self, devices: Mapping[str, torch.device] | None = None) -> Any:
        """The working model, built on the meta device and filled from the base: no random initialisation, no
        second copy of the weights (minutes saved for a 7B model).

        ``devices`` (tensor name -> device, see :func:`search.weights.placement.layer_devices`) shards it by
        layer over several devices, with accelerate's hooks moving activations between them; by default every
        tensor goes to the parents' device. Non-persistent buffers (rotary ``inv_freq``) are computed by the
        modules themselves on the CPU, then moved; tied weights are re-tied after the fill.
        """
        from accelerate import dispatch_model, init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights(include_buffers=False):  # parameters on meta; buffers computed as usual
            model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        model.eval()
        state = model.state_dict()
        missing = [n for n in list(self.base) + list(self.fixed) if n not in state]
        if missing:
            raise UserError(f"the model built from {self.base_path}/config.json has no tensor(s) "
                            f"{', '.join(missing[:3])}", field="base_model",
                            fix="use a checkpoint saved by the same transformers architecture it names")
        default = self.device
        if devices is None and self.placement is not None:
            devices = self.placement.compute  # each tensor where its parents are merged

        def device_of(name: str) -> torch.device:
            return devices.get(name, default) if devices is not None else default

        for name, tensor in {**self.base, **self.fixed}.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            target = device_of(name)
            value = torch.empty(tensor.shape, dtype=tensor.dtype, device=target)  # its own memory, never the base's
            if target.type != "meta":
                value.copy_(tensor)
            if leaf in module._parameters:
                module._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
            else:
                module._buffers[leaf] = value
        first = device_of(next(iter(self.base))) if self.base else default
        for name, buffer in list(model.named_buffers()):
            if name not in self.base and name not in self.fixed:  # non-persistent: computed at construction
                owner, _, leaf = name.rpartition(".")
                model.get_submodule(owner)._buffers[leaf] = buffer.to(devices.get(name, first) if devices
                                                                      else first)
        model.tie_weights()
        unfilled = [n for n, p in model.named_parameters(remove_duplicate=False)
                    if p.device.type == "meta" and device_of(n).type != "meta"]
        if unfilled:
            raise UserError(f"{self.base_path} has no weights for {', '.join(unfilled[:3])}"
                            f"{' and more' if len(unfilled) > 3 else ''}", field="base_model",
                            fix="use a complete checkpoint saved with save_pretrained()")
        placed = {n: t.device for n, t in [*model.named_parameters(remove_duplicate=False),
                                            *model.named_buffers()]}
        targets = set(placed.values())
        if len(targets) > 1 and all(d.type != "meta" for d in targets):
            from search.weights.placement import module_devices

            # from where the tensors are (a tied lm_head sits with the embedding), not where they were asked to be
            dispatch_model(model, device_map=module_devices(self.layout, placed))
        return model

    def merge_into(self, model: Any, spec: MergeSpec, *, names: Sequence[str] | None = None) -> None:
        """Write the merge of ``spec`` into ``model``'s parameters, tensor by tensor, in place."""
        if len(spec.model_parameters) != self.num_models:
            raise ValueError(f"spec has {len(spec.model_parameters)} model parameter sets, parents have "
                             f"{self.num_models} fine-tunes")
        state = model.state_dict()
        method = spec.merge_method
        with torch.no_grad():
            for name, (base, deltas) in self._placed(names or list(self.base)):
                merge_tensor(method, base, deltas, self.tensor_params(spec, name),
                             seed=spec.tensor_seed(name), out=state[name])

    def merge_tensor(self, spec: MergeSpec, name: str, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """One merged tensor of ``spec`` (into ``out`` when given)."""
        (_, (base, deltas)), = self._placed([name])
        return merge_tensor(spec.merge_method, base, deltas, self.tensor_params(spec, name),
                            seed=spec.tensor_seed(name), out=out)

    def tensor_params(self, spec: MergeSpec, name: str) -> TensorParams:
        """``spec``'s parameters for one tensor, with its statistics for a data-aware method."""
        params = spec.tensor_params(name, self.layout)
        kind = spec.merge_method.statistics
        if kind is None:
            return params
        held = self.statistics.get(kind)
        if held is None:
            raise ValueError(f"'{spec.method}' needs the parents' {kind} statistics, and none are attached (a run "
                             "with a calibration source computes them once, in its run folder)")
        return replace(params, statistics=held.for_tensor(name))

    def attach_statistics(self, statistics: Any) -> None:
        """Hold one kind of statistics (a :class:`search.statistics.store.Statistics`) for the merges."""
        if statistics.k != self.num_models:
            raise ValueError(f"statistics of {statistics.k} parents for {self.num_models} parents")
        self.statistics[statistics.kind] = statistics

    def tensor_devices(self) -> dict[str, torch.device]:
        """Where each tensor's base is held (its statistics are held beside it)."""
        return {name: t.device for name, t in self.base.items()}

    def write_parent(self, model: Any, index: int) -> None:
        """Write parent ``index`` itself (``base + delta_i``; an adapter through its factors) into ``model``."""
        state = model.state_dict()
        coeffs = [1.0 if i == index else 0.0 for i in range(self.num_models)]
        with torch.no_grad():
            for name, (base, deltas) in self._placed(list(self.base)):
                deltas.add_linear(base, coeffs, out=state[name])

    def _placed(self, names: Sequence[str]) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``(name, (base, deltas))`` on the device each tensor merges on: as held (resident), or copied one
        tensor ahead on a side CUDA stream (stream)."""
        if self.placement is None:
            return ((n, (self.base[n], self.deltas[n])) for n in names)
        return self.placement.tensors(names, lambda n: (self.base[n], self.deltas[n]))

    def stacked_deltas(self, name: str) -> torch.Tensor:
        """The dense ``(k, *shape)`` task vectors of one tensor, materialised on the device."""
        return self.deltas[name].stacked()

    def merged_state(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """The merge of ``spec`` as a new state dict (for export and tests; the search uses merge_into)."""
        out: dict[str, torch.Tensor] = dict(self.fixed)
        with torch.no_grad():
            for name in self.base:
                out[name] = self.merge_tensor(spec, name)
        return out


def _nonzero(tensor: torch.Tensor | None) -> bool:
    """Whether a task-vector part moves anything (a tensor placed on ``meta``, in tests, counts as moving)."""
    return tensor is not None and (tensor.device.type == "meta" or bool(tensor.any()))
