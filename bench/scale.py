"""Merge speed and memory at scale, per placement, against limits measured in the same run.

    nice -n 10 .venv/bin/python bench/scale.py                          # CPU: ~1.5B Llama shape, 4 fine-tunes, bf16
    nice -n 10 .venv/bin/python bench/scale.py --size 0.4b              # a loaded machine: fewer layers, small vocab
    .venv/bin/python bench/scale.py --device cuda --size 7b             # GPU: both placements (bench/gpu_check.sh)

A :class:`~search.weights.parents.Parents` is generated in memory (seeded random bf16 base, k task vectors; no
disk), kept as its placement keeps it (resident: on the compute device; stream: pinned host memory), its working
model built on the meta device, and each candidate merged with ``Parents.merge_into`` — what a search worker
does. Printed, measured in this one run:

- per method (linear, task_arithmetic, ties, dare_ties) and placement: seconds per candidate, and the ratio
  ``limit / seconds`` where the limit is the bytes the merge must move divided by this machine's bandwidth for it:
  resident moves (k + 2) x model bytes (read base and k deltas, write the model) at the device's memory-copy
  bandwidth; stream moves (k + 1) x model bytes host -> device at the pinned-copy bandwidth;
- peak memory (RSS growth on CPU, ``torch.cuda.max_memory_allocated`` on GPU) against the memory plan's estimate of
  the parts this bench holds (base, task vectors, working model, merge scratch, stream buffers; not activations,
  the process or the CUDA reserve, which the bench does not have);
- on GPU, TIES time over task_arithmetic time.
Targets (issue 12): resident task_arithmetic >= 0.6 of its limit, stream >= 0.7, peak <= 1.1 x plan, TIES <= 3 x
task_arithmetic on GPU.
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import time
from pathlib import Path

import torch

import common  # noqa: E402, F401  (the checkout on sys.path, offline hubs)

from bench.shapes import llama_config, llama_tensors  # noqa: E402
from search.merging.spec import MergeSpec  # noqa: E402
from search.weights.deltas import TensorDeltas  # noqa: E402
from search.weights.layout import ModelLayout  # noqa: E402
from search.weights.memory_plan import ParentsShape, fmt_bytes, plan_memory  # noqa: E402
from search.weights.parents import Parents  # noqa: E402
from search.weights.placement import TensorPlacement  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def candidates(k: int) -> dict[str, MergeSpec]:
    weights = [0.5, 0.3, 0.7, 0.4, 0.6, 0.2, 0.8, 0.5][:k]
    return {
        "linear": MergeSpec(method="linear", parameters={"normalize": True},
                            model_parameters=tuple({"weight": w} for w in weights)),
        "task_arithmetic": MergeSpec(method="task_arithmetic", parameters={"lambda": 1.0},
                                     model_parameters=tuple({"weight": w} for w in weights)),
        "ties": MergeSpec(method="ties", parameters={},
                          model_parameters=tuple({"weight": 1.0, "density": 0.3} for _ in weights)),
        "dare_ties": MergeSpec(method="dare_ties", parameters={},
                               model_parameters=tuple({"weight": 1.0, "density": 0.3} for _ in weights), seed=0),
    }


def shape_of(config: dict, k: int) -> ParentsShape:
    tensors = llama_tensors(config)
    numels = [math.prod(s) for s in tensors.values()]
    return ParentsShape(float_numel=sum(numels), other_bytes=0, largest_numel=max(numels),
                        native_bytes=2, num_models=k, hidden=config["hidden_size"],
                        intermediate=config["intermediate_size"], vocab=config["vocab_size"],
                        layers=config["num_hidden_layers"],
                        kv_width=config["num_key_value_heads"] * config["head_dim"],
                        max_positions=config["max_position_embeddings"])


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second moved (read + write) by a large on-device copy."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def h2d_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second copied from pinned host memory to the GPU."""
    src = torch.ones(nbytes // 4).pin_memory()
    dst = torch.empty(nbytes // 4, device=device)
    best = math.inf
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss() -> int:
    """Current resident set size of this process, bytes."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_parents(config: dict, k: int, dtype: torch.dtype, placement: TensorPlacement, seed: int = 0) -> Parents:
    """Parents of seeded random tensors (a bf16 base and k task vectors, each generated in float32 one tensor at
    a time on the compute device) kept where the placement keeps them: the object a search holds."""
    from transformers import LlamaConfig

    hf_config = LlamaConfig(**{key: v for key, v in config.items() if key not in ("model_type", "torch_dtype")})
    base: dict[str, torch.Tensor] = {}
    deltas: dict[str, TensorDeltas] = {}
    for i, (name, shape) in enumerate(llama_tensors(config).items()):
        device = placement.compute[name]
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + i)
        b = (0.02 * torch.randn(shape, generator=g, device=device)).to(dtype)
        d = torch.empty((k, *shape), dtype=dtype, device=device)
        for j in range(k):
            d[j] = 0.002 * torch.randn(shape, generator=g, device=device)
        base[name], deltas[name] = placement.store(name, b), placement.store(name, TensorDeltas.from_dense(d))
        del b, d
    first = next(iter(placement.compute.values()))
    return Parents(base_path=Path("generated/base"), model_paths=[Path(f"generated/ft{j}") for j in range(k)],
                   layout=ModelLayout.from_config(hf_config), config=hf_config, base=base, deltas=deltas,
                   dtype=dtype, device=first, placement=placement)


def time_candidate(parents: Parents, model: torch.nn.Module, spec: MergeSpec, device: torch.device,
                   repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        parents.merge_into(model, spec)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        if best > 60:  # a slow method is timed once
            break
    return best


def planned_bytes(plan) -> int:
    held = ("base", "task vectors", "working model", "merge scratch", "stream buffers")
    where = "gpu" if plan.device == "cuda" else "cpu"
    return sum(p.per_device for p in plan.parts if p.name.split(" (")[0] in held and
               (p.where == where or plan.device == "cpu"))


def run_placement(mode: str, config: dict, k: int, dtype_name: str, device: torch.device, methods: list[str],
                  repeats: int, bandwidth: float) -> dict[str, float]:
    dtype = DTYPES[dtype_name]
    names = list(llama_tensors(config))
    placement = TensorPlacement(mode, {n: device for n in names})  # type: ignore[arg-type]
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = rss()
    t0 = time.perf_counter()
    parents = make_parents(config, k, dtype, placement)
    model = parents.build_model()
    model_bytes = parents.model_nbytes()
    print(f"\n[{mode}] parents generated and working model built in {time.perf_counter() - t0:.1f} s "
          f"(model {fmt_bytes(model_bytes)}, {k} task vectors)")
    must_move = (k + 2) * model_bytes if mode == "resident" else (k + 1) * model_bytes
    limit = must_move / bandwidth
    what = "memory-copy" if mode == "resident" else "pinned host->device"
    print(f"  limit: {fmt_bytes(must_move)} at {bandwidth / 1e9:.1f} GB/s ({what}) = {limit:.3f} s/candidate")
    specs = candidates(k)
    seconds: dict[str, float] = {}
    for method in methods:
        s = time_candidate(parents, model, specs[method], device, repeats)
        seconds[method] = s
        print(f"  {method:16s} {s:8.3f} s/candidate   limit ratio {limit / s:5.2f}")
    plan = plan_memory(shape_of(config, k), dtype=dtype_name, placement=mode, device=device.type,  # type: ignore
                       gpu_memory=None, cpu_memory=None, batch=1, seq=1)
    estimate = planned_bytes(plan)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        print(f"  peak GPU memory {fmt_bytes(peak)} vs plan {fmt_bytes(estimate)}: ratio {peak / estimate:.2f}")
        host = rss() - rss_before
        print(f"  host memory held (pinned parents) {fmt_bytes(host)}")
    else:
        peak = peak_rss() - rss_before
        print(f"  peak RSS growth {fmt_bytes(peak)} vs plan {fmt_bytes(estimate)}: ratio {peak / estimate:.2f}")
    del parents, model
    seconds["_limit"] = limit
    gc.collect()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default=None, help="1.5b (CPU default), 0.4b, 7b (GPU default), 70b")
    ap.add_argument("--layers", type=int, default=None, help="override the size's layer count")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--placements", default=None, help="resident,stream (stream needs CUDA)")
    ap.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = ap.parse_args()

    device = torch.device(args.device)
    size = args.size or ("7b" if device.type == "cuda" else "1.5b")
    config = llama_config(size, args.dtype, **({"num_hidden_layers": args.layers} if args.layers else {}))
    placements = (args.placements or ("resident,stream" if device.type == "cuda" else "resident")).split(",")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    n = sum(math.prod(s) for s in llama_tensors(config).values())
    print(f"Llama shape {size} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}, vocab "
          f"{config['vocab_size']}): {n / 1e9:.2f} B parameters, {args.models} fine-tunes, {args.dtype} storage, "
          f"float32 merge arithmetic; device {device}"
          + (f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else
             f" ({torch.cuda.get_device_name(device)})"))
    methods = [m for m in args.methods.split(",") if m]
    results = {}
    for mode in placements:
        bandwidth = copy_bandwidth(device) if mode == "resident" else h2d_bandwidth(device)
        results[mode] = run_placement(mode, config, args.models, args.dtype, device, methods, args.repeats,
                                      bandwidth)
    print("\nsummary (limit / seconds; targets: resident task_arithmetic >= 0.6, stream >= 0.7):")
    for mode, seconds in results.items():
        limit = seconds["_limit"]
        print(f"  {mode:9s} " + "  ".join(f"{m} {limit / s:.2f}" for m, s in seconds.items() if m != "_limit"))
        if "ties" in seconds and "task_arithmetic" in seconds:
            print(f"  {mode:9s} ties / task_arithmetic time: {seconds['ties'] / seconds['task_arithmetic']:.2f}"
                  + (" (target <= 3 on GPU)" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
