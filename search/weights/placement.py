"""Where each tensor of the parents and of the working model lives, and how a merge reaches it.

Two questions, one module:

- **Which device holds a tensor** (``layer_devices``): with one device, all of them; with ``gpus_per_worker: N``
  the decoder layers are split evenly into N contiguous blocks, embeddings go to the first device and the other
  tensors outside the layer stack (final norm, lm_head) to the last — so a parent tensor sits on the GPU that
  holds its layer of the working model. ``module_devices`` turns that into accelerate's ``device_map``.
- **Where the parents are kept, and how a tensor reaches the merge** (:class:`TensorPlacement`):
  ``resident`` keeps base and task vectors on their compute device and hands them over as they are; ``stream``
  keeps them in pinned host memory and copies them tensor by tensor on a side CUDA stream, one tensor ahead of
  the merge (double buffering): GPU memory holds the working model plus two tensors in flight.

``Parents`` calls it per tensor: ``store`` when loading, ``tensors`` when merging a candidate.

>>> placement = TensorPlacement("resident", {"w": torch.device("cpu")})
>>> [name for name, (b, d) in placement.tensors(["w"], lambda n: (torch.zeros(2), torch.ones(1, 2)))]
['w']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from search.errors import UserError
from search.weights.layout import ModelLayout

Mode = Literal["resident", "stream"]


def layer_devices(layout: ModelLayout, names: Iterable[str], devices: Sequence[str | torch.device],
                  *, tied: Mapping[str, str] | None = None) -> dict[str, torch.device]:
    """Tensor name -> device, the decoder layers split evenly (in order) over ``devices``.

    Layer ``i`` of ``L`` goes to device ``i * N // L``; tensors outside the stack go to the first device
    (embeddings) or the last (final norm, lm_head, anything else). A tied tensor (``tied[name] = source``)
    goes with its source, as one parameter cannot live on two devices.

    >>> layout = ModelLayout(num_layers=4, layers_prefix="model.layers")
    >>> names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.mlp.up_proj.weight" for i in range(4)]
    >>> [str(d) for d in layer_devices(layout, names + ["lm_head.weight"], ["cpu", "meta"]).values()]
    ['cpu', 'cpu', 'cpu', 'meta', 'meta', 'meta']
    """
    if not devices:
        raise ValueError("layer_devices needs at least one device")
    targets = [torch.device(d) for d in devices]
    n, layers = len(targets), max(1, layout.num_layers)
    out: dict[str, torch.device] = {}
    for name in names:
        role = layout.role(name)
        if role.layer is not None:
            out[name] = targets[min(n - 1, role.layer * n // layers)]
        elif role.kind == "embedding" or (role.kind != "lm_head" and ".embed" in name):
            out[name] = targets[0]
        else:
            out[name] = targets[-1]
    for name, source in (tied or {}).items():
        if source in out:
            out[name] = out[source]
    return out


def module_devices(layout: ModelLayout, tensor_devices: Mapping[str, torch.device]) -> dict[str, str]:
    """accelerate's ``device_map`` (module path -> device) for tensors placed by :func:`layer_devices`:
    one entry per decoder layer, one per module outside the stack."""
    out: dict[str, str] = {}
    for name, device in tensor_devices.items():
        role = layout.role(name)
        module = f"{layout.layers_prefix}.{role.layer}" if role.layer is not None else name.rpartition(".")[0]
        out[module] = str(device)
    return out


def visible_devices(gpus: int, device: str | torch.device) -> list[torch.device]:
    """The devices a worker spreads its model over: ``gpus`` visible CUDA devices, else ``device`` alone."""
    device = torch.device(device)
    if gpus <= 1 or device.type != "cuda":
        return [device]
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > visible:
        raise UserError(f"resources.gpus_per_worker is {gpus} but {visible} GPU(s) are visible",
                        field="resources.gpus_per_worker", fix=f"set it to at most {visible}")
    first = device.index or 0
    return [torch.device("cuda", (first + i) % visible) for i in range(gpus)]


@dataclass
class TensorPlacement:
    """Where the parents keep each tensor (``store``) and how a merge gets it on its device (``tensors``).

    ``compute`` maps each tensor name to the device its slot in the working model lives on.
    """

    mode: Mode
    compute: Mapping[str, torch.device]

    def __post_init__(self) -> None:
        if self.mode == "stream" and not any(d.type == "cuda" for d in self.compute.values()):
            raise UserError("placement: stream copies parents from host memory to a GPU, and this run has no GPU",
                            field="placement", fix="remove placement (CPU runs keep the parents in memory)")

    def store(self, name: str, held: Any) -> Any:
        """The copy of ``held`` (a tensor, or a holder of several with ``map``, like TensorDeltas) the parents
        keep: on its compute device (resident), or in pinned host memory (stream; page-locked, so the copy to the
        GPU runs asynchronously at full bus speed)."""
        if isinstance(held, torch.Tensor):
            return self._store(name, held)
        return held.map(lambda t: self._store(name, t))

    def _store(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.mode == "resident":
            return tensor.to(self.compute[name])
        if not torch.cuda.is_available():
            return tensor.to("cpu")
        # one copy straight into page-locked memory (``.cpu().pin_memory()`` would copy twice)
        return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)

    def tensors(self, names: Iterable[str], held: Callable[[str], Sequence[Any]]
                ) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``(name, tensors)`` in order, each on the name's compute device. ``held(name)`` gives what the parents
        keep for a tensor (base and dense deltas, or low-rank factors): resident hands it over as it is; stream
        copies the next tensor's on a side CUDA stream while the caller merges the current one."""
        if self.mode == "resident":
            for name in names:
                yield name, tuple(held(name))
            return
        yield from prefetched(list(names), held, self.compute)


def prefetched(names: list[str], held: Callable[[str], Sequence[Any]],
               compute: Mapping[str, torch.device]) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Double-buffered host -> device copies: the copy of tensor ``i + 1`` is issued (on a side CUDA stream)
    before tensor ``i`` is handed to the caller, and the caller's stream waits only for tensor ``i``'s copy.

    At most two tensors' copies exist on the device at once. Where the target is not CUDA (tests), the copies are
    plain synchronous ``to`` calls in the same order.
    """
    sides: dict[torch.device, torch.cuda.Stream] = {}

    def issue(name: str) -> tuple[str, tuple[Any, ...], torch.cuda.Event | None]:
        device = compute[name]
        if device.type != "cuda":
            return name, tuple(t.to(device) for t in held(name)), None
        side = sides.get(device)
        if side is None:
            side = sides[device] = torch.cuda.Stream(device=device)
        # fresh allocations only: blocks freed by earlier tensors are reused safely thanks to record_stream below
        with torch.cuda.stream(side):
            # tensors, or holders of several (TensorDeltas): anything with .to(device, non_blocking=...)
            copies = tuple(t.to(device, non_blocking=True) for t in held(name))
            done = torch.cuda.Event()
            done.record(side)
        return name, copies, done

    if not names:
        return
    pending = issue(names[0])
    for i in range(len(names)):
        name, copies, done = pending
        if i + 1 < len(names):
            pending = issue(names[i + 1])  # the next copy runs while the caller merges this one
        if done is not None:
            stream = torch.cuda.current_stream(compute[name])
            stream.wait_event(done)
            for item in copies:  # allocated on the side stream, used on this one: keep them until this one is done
                for t in (item,) if isinstance(item, torch.Tensor) else item.tensors():
                    t.record_stream(stream)
        yield name, copies
