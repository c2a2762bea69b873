"""How much memory a search needs, where, and whether it fits — computed before any tensor is read.

The plan reads only ``config.json`` and the safetensors headers of the parents (no tensor data), so it answers
in a second for a 70B family. Parts, per worker:

- ``base``: every base tensor in the storage dtype (non-float tensors at their own size);
- ``task vectors``: one dense delta per fine-tune, in the storage dtype;
- ``working model``: the model candidates are merged into and scored with;
- ``merge scratch``: the float32 upcast of the largest tensor's base, deltas, result and method temporaries
  (``(2k + 8) x 4`` bytes per element: TIES' upcast deltas, weighted copies, masks and top-k working copies
  are the worst case);
- ``stream buffers`` (stream only): two tensors' worth of base + deltas on the GPU (double buffering);
- ``statistics`` (data-aware methods only): the per-parent statistics they read, float32, where the parents are:
  ``fisher`` one value per parameter and fine-tune; ``gram`` an ``in x in`` matrix per linear layer and fine-tune
  (from the config: ``layers x (6 hidden² + intermediate²) + hidden²``, a llama-like block's seven linears and
  the output head);
- ``activations``: an estimate for the largest evaluator batch (see :func:`activation_bytes`);
- ``process``: torch, transformers and lm-eval themselves in host memory (~2 GiB, measured on CPU);
- ``CUDA reserve``: the CUDA context and allocator slack, 1 GiB per GPU.

Placement (the space's ``placement``): ``resident`` keeps base and task vectors on the GPU(s); ``stream`` keeps
them in pinned host memory and copies one tensor at a time to the GPU; ``auto`` picks resident when it fits,
else stream. A CPU run keeps everything in host memory (resident). With ``gpus_per_worker: N > 1`` the model,
base and task vectors are split by layer over N GPUs.

>>> shape = ParentsShape(float_numel=7_000_000_000, other_bytes=0, largest_numel=131_072_000,
...                      native_bytes=2, num_models=4, hidden=4096, intermediate=11008, vocab=32000,
...                      layers=32, kv_width=1024, max_positions=4096)
>>> plan = plan_memory(shape, dtype="bfloat16", placement="auto", device="cuda", gpus=1,
...                    gpu_memory=80 * GIB, cpu_memory=128 * GIB)
>>> plan.placement, plan.fits
('stream', True)
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from search.errors import UserError

GIB = 1024**3
CUDA_RESERVE = 1 * GIB           # context + allocator slack per GPU
PROCESS_BYTES = 2 * GIB          # python, torch, transformers, lm-eval resident in host memory
PLANNED_SEQ_CAP = 2048           # activations are estimated for sequences up to this many tokens
DEFAULT_BATCH = 8                # evaluators without a numeric batch_size
AUTO_BATCH = 32                  # batch_size: auto is assumed to reach this

Placement = Literal["resident", "stream"]
_SAFE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOAT_TYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ParentsShape:
    """What the plan needs to know of a family: counts from the headers, sizes from config.json."""

    float_numel: int            # elements of the base's floating-point tensors
    other_bytes: int            # bytes of its other tensors (kept as they are)
    largest_numel: int          # elements of its largest tensor
    native_bytes: int           # bytes per element the base is saved in (for `auto` dtype)
    num_models: int             # fine-tunes
    hidden: int
    intermediate: int
    vocab: int
    layers: int
    kv_width: int               # key/value heads x head dim (the KV cache per token and layer is 2x this)
    max_positions: int
    task_numels: tuple[int, ...] = ()  # elements held per fine-tune (LoRA: its factors); empty: all dense

    def task_numel(self, k: int | None = None) -> int:
        """Elements of the first ``k`` fine-tunes' task vectors (dense: a base each; adapters: their factors)."""
        k = self.num_models if k is None else k
        held = self.task_numels or (self.float_numel,) * self.num_models
        return sum(held[:k])

    @classmethod
    def from_folders(cls, base: str | Path, models: list[str | Path]) -> ParentsShape:
        """Read the base's config.json and safetensors headers (no tensor data)."""
        tensors = header_tensors(base)
        floats = [(t, n) for t, n in tensors.values() if t in _FLOAT_TYPES]
        float_numel = sum(n for _, n in floats)
        native = max((_SAFE_BYTES[t] for t, _ in floats), default=4)
        task_numels = tuple(_task_numel(m, tensors, float_numel) for m in models)
        config = _text_config(base)
        hidden = int(config.get("hidden_size") or config.get("n_embd") or config.get("d_model") or 0)
        heads = int(config.get("num_attention_heads") or config.get("n_head") or 1)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
        return cls(
            float_numel=float_numel,
            other_bytes=sum(n * _SAFE_BYTES[t] for t, n in tensors.values() if t not in _FLOAT_TYPES),
            largest_numel=max((n for _, n in tensors.values()), default=0),
            native_bytes=native, num_models=len(models), hidden=hidden,
            intermediate=int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden),
            vocab=int(config.get("vocab_size") or 0),
            layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 1),
            kv_width=kv_heads * head_dim,
            max_positions=int(config.get("max_position_embeddings") or config.get("n_positions")
                              or PLANNED_SEQ_CAP),
            task_numels=task_numels,
        )


def _task_numel(model: str | Path, tensors: dict[str, tuple[str, int]], dense: int) -> int:
    """Elements a fine-tune's task vector holds: a dense base's worth, or a LoRA adapter's factors plus the full
    tensors of its modules_to_save (from the adapter's header)."""
    from search.weights.adapters import LoraAdapter, is_adapter

    if not is_adapter(model):
        return dense
    try:
        adapter = LoraAdapter.open(model)
    except UserError:  # refused, naming its field, by the parents check; planned as dense until then
        return dense
    with adapter:
        return adapter.factor_nbytes(1) + sum(tensors[n][1] for n in adapter.replacements if n in tensors)


@dataclass(frozen=True)
class Part:
    """One line of the plan: what, how many bytes in all, where, and how many bytes on each such device."""

    name: str
    nbytes: int
    where: Literal["gpu", "cpu", "cpu pinned"]
    per_device: int
    note: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    """Parts, the needs per device against the capacities, and the verdict (with fixes when it does not fit)."""

    parts: tuple[Part, ...]
    placement: Placement
    dtype: str
    device: Literal["cpu", "cuda"]
    gpus: int
    gpu_need: int               # per GPU
    cpu_need: int
    gpu_memory: int | None      # per GPU; None: unknown (not checked)
    cpu_memory: int | None
    fixes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def gpu_fits(self) -> bool:
        return self.device == "cpu" or self.gpu_memory is None or self.gpu_need <= self.gpu_memory

    @property
    def cpu_fits(self) -> bool:
        return self.cpu_memory is None or self.cpu_need <= self.cpu_memory

    @property
    def fits(self) -> bool:
        return self.gpu_fits and self.cpu_fits

    def verdict(self) -> str:
        where = "CPU" if self.device == "cpu" else f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        need = [f"{fmt_bytes(self.cpu_need)} host of {fmt_bytes(self.cpu_memory)}"]
        if self.device == "cuda":
            need.insert(0, f"{fmt_bytes(self.gpu_need)} per GPU of {fmt_bytes(self.gpu_memory)}")
        state = "fits" if self.fits else "does NOT fit"
        return f"{self.dtype}, placement {self.placement} on {where}: {state} ({'; '.join(need)})"


def plan_memory(shape: ParentsShape, *, dtype: str, placement: str, device: Literal["cpu", "cuda"], gpus: int = 1,
                gpu_memory: int | None, cpu_memory: int | None, batch: int = DEFAULT_BATCH,
                seq: int | None = None, statistics: tuple[str, ...] = (), explain: bool = True) -> MemoryPlan:
    """The plan for one worker (pure). ``placement`` auto picks resident when it fits the GPU, else stream.
    ``statistics``: the kinds the data-aware methods read (``Space.statistics_kinds()``).

    ``explain`` adds, when nothing fits, the changes that would (bf16, stream, fewer models, more GPUs).
    """
    if device == "cpu" and placement == "stream":
        raise UserError("placement: stream copies parents from host memory to a GPU, and this run has no GPU",
                        field="placement", fix="remove placement (CPU runs keep the parents in memory) or run "
                                               "on a machine with CUDA")
    if device == "cpu" or placement in ("resident", "stream"):
        plan = _plan(shape, dtype, "stream" if placement == "stream" else "resident", device, gpus,
                     gpu_memory, cpu_memory, batch, seq, statistics)
    else:
        plan = _plan(shape, dtype, "resident", device, gpus, gpu_memory, cpu_memory, batch, seq, statistics)
        if not plan.fits:
            plan = _plan(shape, dtype, "stream", device, gpus, gpu_memory, cpu_memory, batch, seq, statistics)
    if plan.fits or not explain:
        return plan
    return replace(plan, fixes=tuple(_fixes(shape, plan, placement, batch, seq, statistics)))


def statistics_numel(shape: ParentsShape, kind: str) -> int:
    """Elements of one kind of statistics for all fine-tunes: ``fisher`` one per parameter, ``gram`` an
    ``in x in`` matrix per linear layer (a llama-like block: q, k, v, o, gate, up read the hidden state, down the
    intermediate one; plus the output head).

    >>> shape = ParentsShape(float_numel=1000, other_bytes=0, largest_numel=100, native_bytes=4, num_models=2,
    ...                      hidden=8, intermediate=16, vocab=10, layers=2, kv_width=8, max_positions=64)
    >>> statistics_numel(shape, "fisher"), statistics_numel(shape, "gram")
    (2000, 2688)
    """
    if kind == "fisher":
        return shape.num_models * shape.float_numel
    if kind == "gram":
        per_parent = shape.layers * (6 * shape.hidden**2 + shape.intermediate**2) + shape.hidden**2
        return shape.num_models * per_parent
    raise ValueError(f"no memory estimate for statistics of kind {kind!r}")


def _plan(shape: ParentsShape, dtype: str, placement: Placement, device: Literal["cpu", "cuda"], gpus: int,
          gpu_memory: int | None, cpu_memory: int | None, batch: int, seq: int | None,
          statistics: tuple[str, ...] = ()) -> MemoryPlan:
    size = _DTYPE_BYTES[dtype]
    k = shape.num_models
    model = shape.float_numel * size + shape.other_bytes
    deltas = shape.task_numel() * size
    adapters = sum(1 for n in shape.task_numels if n != shape.float_numel)
    scratch = (2 * k + 8) * 4 * shape.largest_numel
    acts = activation_bytes(shape, size, batch, seq)
    on_gpu = device == "cuda"
    n = max(1, gpus) if on_gpu else 1
    gpu: Literal["gpu", "cpu", "cpu pinned"] = "gpu" if on_gpu else "cpu"
    parents_where: Literal["gpu", "cpu", "cpu pinned"] = "cpu pinned" if placement == "stream" else gpu
    parts = [
        Part("base", model, parents_where, _split(model, n, parents_where), "storage dtype"),
        Part(f"task vectors ({k})", deltas, parents_where, _split(deltas, n, parents_where),
             f"{k - adapters} dense" + (f", {adapters} LoRA (factors)" if adapters else "")),
        Part("working model", model, gpu, _split(model, n, gpu), "built on meta, filled from the base"),
        Part("merge scratch", scratch, gpu, scratch, f"float32 upcast of the largest tensor, (2k+8) x 4 B x "
                                                     f"{shape.largest_numel:,}"),
    ]
    for kind in statistics:
        nbytes = statistics_numel(shape, kind) * 4
        parts.append(Part(f"statistics ({kind})", nbytes, parents_where, _split(nbytes, n, parents_where),
                          f"float32, {k} fine-tune{'s' if k != 1 else ''}, computed once per run"))
    if placement == "stream":
        buffers = 2 * (k + 1) * shape.largest_numel * size
        parts.append(Part("stream buffers", buffers, "gpu", buffers, "2 tensors of base + deltas in flight"))
    parts.append(Part("activations", acts, gpu, acts, f"estimate: batch {batch} x {_seq(shape, seq)} tokens"))
    if on_gpu:
        parts.append(Part("CUDA reserve", CUDA_RESERVE * n, "gpu", CUDA_RESERVE, "context + allocator slack"))
    parts.append(Part("process", PROCESS_BYTES, "cpu", PROCESS_BYTES, "python, torch, transformers, lm-eval"))
    gpu_need = sum(p.per_device for p in parts if p.where == "gpu") if on_gpu else 0
    cpu_need = sum(p.nbytes for p in parts if p.where != "gpu")
    return MemoryPlan(parts=tuple(parts), placement=placement, dtype=dtype, device=device, gpus=n,
                      gpu_need=gpu_need, cpu_need=cpu_need, gpu_memory=gpu_memory if on_gpu else None,
                      cpu_memory=cpu_memory)


def _split(nbytes: int, gpus: int, where: str) -> int:
    """Bytes per device of a part split by layer over ``gpus`` GPUs (host parts are not split)."""
    return math.ceil(nbytes / gpus) if where == "gpu" else nbytes


def _seq(shape: ParentsShape, seq: int | None) -> int:
    return seq if seq is not None else min(shape.max_positions, PLANNED_SEQ_CAP)


def activation_bytes(shape: ParentsShape, dtype_bytes: int, batch: int, seq: int | None = None) -> int:
    """An estimate of the peak activations of one forward pass of ``batch`` sequences (no gradients).

    Per token: the logits and their log-softmax in float32 (``2 x vocab x 4`` bytes, what lm-eval's
    loglikelihood holds), one layer's hidden states and MLP intermediates (``(4 x hidden + 3 x intermediate)``
    in the storage dtype; layers run one at a time), and the KV cache of every layer for generation
    (``2 x layers x kv_width``). Sequences are taken as the model's context, capped at 2048 tokens.
    """
    tokens = batch * _seq(shape, seq)
    per_token = (2 * shape.vocab * 4 + (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
                 + 2 * shape.layers * shape.kv_width * dtype_bytes)
    return tokens * per_token


def _fixes(shape: ParentsShape, plan: MemoryPlan, placement: str, batch: int, seq: int | None,
           statistics: tuple[str, ...] = ()) -> list[str]:
    """Changes to the space that would make the plan fit, each with what it would need."""
    def attempt(**change: Any) -> MemoryPlan:
        args: dict[str, Any] = dict(dtype=plan.dtype, placement=placement, device=plan.device, gpus=plan.gpus,
                                    gpu_memory=plan.gpu_memory, cpu_memory=plan.cpu_memory, batch=batch, seq=seq,
                                    statistics=statistics)
        args.update(change)
        s = args.pop("shape", shape)
        return plan_memory(s, explain=False, **args)

    fixes = []
    if plan.dtype != "bfloat16":
        tried = attempt(dtype="bfloat16")
        fixes.append(f"dtype: bfloat16 ({tried.verdict()})")
    if plan.device == "cuda" and plan.placement != "stream":
        tried = attempt(placement="stream")
        fixes.append(f"placement: stream ({tried.verdict()})")
        if not tried.fits and plan.dtype != "bfloat16":
            both = attempt(placement="stream", dtype="bfloat16")
            fixes.append(f"dtype: bfloat16 with placement: stream ({both.verdict()})")
    for k in range(shape.num_models - 1, 0, -1):
        tried = attempt(shape=replace(shape, num_models=k, task_numels=shape.task_numels[:k]))
        if tried.fits:
            fixes.append(f"merge {k} fine-tunes instead of {shape.num_models} ({tried.verdict()})")
            break
    if plan.device == "cuda":
        for n in range(plan.gpus + 1, 17):
            tried = attempt(gpus=n)
            if tried.fits:
                fixes.append(f"resources.gpus_per_worker: {n} ({tried.verdict()})")
                break
    if plan.device == "cpu":
        fixes.append("run on a GPU machine with placement: stream")
    return fixes


# --- a space's plan, and how it is shown ------------------------------------------------------------------------
def plan_for_space(loaded: Any, *, gpu_memory: int | None = None, cpu_memory: int | None = None,
                   for_run: bool = False) -> MemoryPlan:
    """The plan of a loaded space (:class:`search.config.space.LoadedSpace`) on this machine.

    Capacities not given are detected here (the smallest visible GPU, physical memory); a run on a remote Ray
    cluster checks only what is given. ``for_run`` also refuses ``gpus_per_worker`` above the visible GPUs.
    """
    from search.weights.dtypes import storage_dtype_name

    space = loaded.space
    remote = space.backend == "ray" and space.ray_address is not None
    visible, smallest = (0, None) if remote else gpu_memory_visible()
    wanted = space.resources.gpus_per_worker
    gpus = int(wanted) if wanted > 1 else 1
    if space.device == "cpu":
        device: Literal["cpu", "cuda"] = "cpu"
    elif space.device.startswith("cuda"):
        device = "cuda"
    else:  # auto: CUDA when this machine (or, remote, the workers' resources) has it, or when a size is given
        device = "cuda" if (visible or gpu_memory or (remote and wanted > 0)) else "cpu"
    if for_run and not remote and wanted > visible:
        raise UserError(f"resources.gpus_per_worker is {wanted:g} but {visible} GPU(s) are visible",
                        file=loaded.file, field="resources.gpus_per_worker",
                        fix=f"set gpus_per_worker to at most {visible}" if visible else
                        "remove gpus_per_worker (this machine has no CUDA device) or run where GPUs are visible")
    batch, seq = _evaluator_batch(space.objectives)
    host_workers = (space.resources.workers or 1) if space.backend == "ray" and not remote else 1
    try:
        plan = plan_memory(ParentsShape.from_folders(loaded.base_model, list(loaded.models.values())),
                           dtype=storage_dtype_name(space.dtype, loaded.base_model), placement=space.placement,
                           device=device, gpus=gpus, gpu_memory=gpu_memory or (None if remote else smallest),
                           cpu_memory=cpu_memory or (None if remote else host_memory_for(host_workers)),
                           batch=batch, seq=seq, statistics=space.statistics_kinds())
    except UserError as exc:
        if exc.file is None:  # name the space file; the message keeps its field and fix once
            message = str(exc).split(". Fix: ")[0].removeprefix(f"field '{exc.field}': ")
            raise UserError(message, file=loaded.file, field=exc.field, fix=exc.fix) from None
        raise
    return plan


def host_memory_for(workers: int) -> int | None:
    """Host memory one of ``workers`` workers sharing this machine may use."""
    total = host_memory()
    return None if total is None else total // max(1, workers)


def _evaluator_batch(objectives: Any) -> tuple[int, int | None]:
    """The largest evaluator batch and context length the objectives name (defaults when they name none)."""
    batches, lengths = [], []
    for obj in objectives:
        spec = obj.evaluator
        value = spec.get("batch_size", DEFAULT_BATCH)
        batches.append(AUTO_BATCH if value == "auto" else int(value) if isinstance(value, int) else DEFAULT_BATCH)
        if isinstance(spec.get("max_length"), int):
            lengths.append(int(spec["max_length"]))
    return max(batches, default=DEFAULT_BATCH), (max(lengths) if lengths else None)


def render_plan(plan: MemoryPlan) -> Any:
    """The plan as a rich table (part, bytes, where, per device) with the verdict as its caption."""
    from rich.table import Table

    title = f"memory plan per worker: {plan.dtype} storage, placement {plan.placement}"
    table = Table(title=title, title_justify="left", caption=plan.verdict(), caption_justify="left")
    table.add_column("part")
    table.add_column("bytes", justify="right")
    table.add_column("where")
    table.add_column("per device", justify="right")
    table.add_column("note", style="dim")
    for part in plan.parts:
        where = part.where if part.where == "cpu" or plan.gpus == 1 else \
            (f"{plan.gpus} GPUs (by layer)" if part.per_device < part.nbytes else f"each of {plan.gpus} GPUs")
        table.add_row(part.name, fmt_bytes(part.nbytes), where, fmt_bytes(part.per_device), part.note)
    if plan.device == "cuda":
        table.add_row("[bold]GPU need[/]", "", "gpu", f"[bold]{fmt_bytes(plan.gpu_need)}[/]",
                      f"of {fmt_bytes(plan.gpu_memory)}")
    table.add_row("[bold]host need[/]", "", "cpu", f"[bold]{fmt_bytes(plan.cpu_need)}[/]",
                  f"of {fmt_bytes(plan.cpu_memory)}")
    return table


def refusal(plan: MemoryPlan, file: Any = None) -> UserError:
    """The error a run that cannot fit stops with: the numbers and the fixes."""
    fixes = "; or ".join(plan.fixes) if plan.fixes else "use a machine with more memory"
    return UserError(f"the search does not fit: {plan.verdict()}", file=file, field="dtype/placement/models",
                     fix=fixes)


# --- reading the parents' headers ---------------------------------------------------------------------------
def header_tensors(folder: str | Path) -> dict[str, tuple[str, int]]:
    """Tensor name -> (safetensors dtype, element count), from the headers of a model folder (no data read)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        return _pickle_estimate(folder)
    out: dict[str, tuple[str, int]] = {}
    for name in files:
        out.update(read_safetensors_header(folder / name))
    return out


def _pickle_estimate(folder: Path) -> dict[str, tuple[str, int]]:
    """A pickled checkpoint (``allow_pickle``) has no header to read without unpickling: its files' bytes at the
    dtype its config names stand in, as the embedding (vocab x hidden) and one lump per decoder layer (so the
    largest "tensor" is a whole layer: a conservative scratch)."""
    from search.weights.dtypes import config_dtype_name

    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"'{folder}' has no weights to plan from (no *.safetensors, no pytorch_model*.bin)",
                        field="base_model", fix="point to a folder saved with save_pretrained()")
    code = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[config_dtype_name(folder)]
    total = sum(f.stat().st_size for f in files) // _SAFE_BYTES[code]
    config = _text_config(folder)
    embedding = int(config.get("vocab_size") or 0) * int(config.get("hidden_size") or config.get("n_embd") or 0)
    layers = max(1, int(config.get("num_hidden_layers") or config.get("n_layer") or 1))
    embedding = min(embedding, total)
    rest = total - embedding
    lumps = {f"(layer {i})": (code, rest // layers + (1 if i < rest % layers else 0)) for i in range(layers)}
    return {"(embedding)": (code, embedding), **lumps}


def read_safetensors_header(file: str | Path) -> dict[str, tuple[str, int]]:
    """The header of one safetensors file: 8 bytes of little-endian length, then that much JSON."""
    with open(file, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise UserError(f"'{file}' is not a safetensors file (shorter than its header)",
                            fix="re-save the model with save_pretrained()")
        (length,) = struct.unpack("<Q", raw)
        if length > 100 * 1024**2:
            raise UserError(f"'{file}' claims a {length}-byte header", fix="re-save the model with save_pretrained()")
        try:
            header = json.loads(handle.read(length))
        except json.JSONDecodeError as exc:
            raise UserError(f"'{file}' has an unreadable safetensors header ({exc})",
                            fix="re-save the model with save_pretrained()") from None
    return {name: (info["dtype"], math.prod(info["shape"])) for name, info in header.items()
            if name != "__metadata__"}


def _text_config(folder: str | Path) -> dict[str, Any]:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read '{Path(folder) / 'config.json'}' ({exc})", field="base_model",
                        fix="point base_model to a Hugging Face model folder") from None
    return {**config, **(config.get("text_config") or {})}


# --- sizes and capacities -----------------------------------------------------------------------------------
def parse_size(text: str, *, option: str) -> int:
    """``80GB``, ``80GiB``, ``512MB``, ``1.5T`` -> bytes (powers of 1024, as GPU memory is quoted).

    >>> parse_size("80GB", option="--gpu-memory") == 80 * GIB
    True
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not match:
        raise UserError(f"'{text}' is not a size", field=option, fix="write e.g. 80GB, 24GiB or 512MB")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " "))


def fmt_bytes(n: int | None) -> str:
    """Bytes in binary units, one decimal.

    >>> fmt_bytes(3 * GIB // 2)
    '1.5 GiB'
    """
    if n is None:
        return "unknown"
    for unit, scale in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def host_memory() -> int | None:
    """This machine's physical memory (cgroup limit when lower), or None when unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    try:
        limit = int(Path("/sys/fs/cgroup/memory.max").read_text().strip())
        total = min(total, limit)
    except (OSError, ValueError):
        pass
    return total


def gpu_memory_visible() -> tuple[int, int | None]:
    """(visible CUDA devices, memory of the smallest), without initialising CUDA when torch has none."""
    import torch

    if not torch.cuda.is_available():
        return 0, None
    count = torch.cuda.device_count()
    return count, min(torch.cuda.get_device_properties(i).total_memory for i in range(count))
