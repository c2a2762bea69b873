"""How fast `Parents` merges a candidate in memory, against this machine's memory bandwidth and against mergekit.

    .venv/bin/python bench/merge_speed.py                 # ~0.5B-parameter Llama shape, 3 fine-tunes, fp32
    .venv/bin/python bench/merge_speed.py --layers 4      # a quick, smaller run

It generates a Llama-shaped base and 3 fine-tunes as safetensors folders (random weights; merge speed does not
depend on their values), then prints, measured in this one run:

- per method (linear, task_arithmetic, ties, dare_ties): seconds per in-memory candidate merge, and the ratio to
  the bandwidth limit: bytes the merge must move ((k + 2) x model: read base and k task vectors, write the model)
  divided by a measured copy bandwidth (read + write) of this machine;
- the same candidate merged by mergekit from disk (what mergekit-evolve does per candidate), and our speed-up;
- peak resident memory of this process against (parents + 2) x model size.

    .venv/bin/python bench/merge_speed.py --lora          # 4 rank-16 LoRA adapters of the same shape

prints, for 4 rank-16 adapters on every attention/MLP projection: the parents' task-vector bytes held as factors
against the same task vectors held dense, and per-candidate seconds of a task_arithmetic (and linear) merge from
the factors against the same merge from dense deltas. The dense task vectors (4 x model, 8 GB in fp32 at the
default shape) are materialised one tensor at a time and both merges of that tensor timed back to back, summed
over tensors, so the comparison fits a small machine; the dense bytes are those a resident dense ``Parents``
would hold (k x model). From factors a merge costs 2 x rank flops per element (a matmul), from dense deltas it
moves (k + 2) x 4 bytes per element: which wins depends on the machine's flops-to-bandwidth ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import common  # noqa: E402, F401  (the checkout on sys.path, offline hubs)

from search.merging.spec import MergeSpec  # noqa: E402
from search.weights.parents import Parents  # noqa: E402

CANDIDATES = {
    "linear": dict(parameters={"normalize": True}, model_parameters=({"weight": 0.5}, {"weight": 0.3},
                                                                    {"weight": 0.2})),
    "task_arithmetic": dict(parameters={"lambda": 1.0}, model_parameters=({"weight": 0.5}, {"weight": 0.3},
                                                                         {"weight": 0.7})),
    "ties": dict(parameters={}, model_parameters=({"weight": 1.0, "density": 0.3},) * 3),
    "dare_ties": dict(parameters={}, model_parameters=({"weight": 1.0, "density": 0.3},) * 3, seed=0),
}


def llama_config(layers: int, hidden: int, intermediate: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
        "num_key_value_heads": hidden // 64, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "float32",
    }


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (h, h)
        shapes[f"{p}mlp.gate_proj.weight"] = (i, h)
        shapes[f"{p}mlp.up_proj.weight"] = (i, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, i)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def write_models(root: Path, cfg: dict, n_models: int) -> tuple[Path, list[Path]]:
    from safetensors.torch import save_file

    shapes = tensor_shapes(cfg)
    g = torch.Generator().manual_seed(0)
    base_state = {n: torch.randn(s, generator=g) * 0.02 for n, s in shapes.items()}
    paths = []
    for k in range(n_models + 1):
        folder = root / ("base" if k == 0 else f"ft{k}")
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(cfg))
        if k == 0:
            state = base_state
        else:
            state = {n: t + torch.randn(t.shape, generator=g) * 0.002 for n, t in base_state.items()}
        save_file(state, str(folder / "model.safetensors"))
        del state
        paths.append(folder)
    return paths[0], paths[1:]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_CANDIDATES = {
    "task_arithmetic": dict(parameters={"lambda": 1.0}, model_parameters=tuple({"weight": w}
                                                                               for w in (0.5, 0.3, 0.7, 0.4))),
    "linear": dict(parameters={"normalize": True}, model_parameters=tuple({"weight": w}
                                                                          for w in (0.4, 0.3, 0.2, 0.1))),
}


def write_adapters(root: Path, cfg: dict, n: int, rank: int) -> list[Path]:
    """``n`` PEFT LoRA adapter folders (random non-zero factors) on every attention/MLP projection."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    targets = {name.removesuffix(".weight"): shape for name, shape in tensor_shapes(cfg).items()
               if any(f".{t}." in name for t in LORA_TARGETS)}
    paths = []
    for k in range(n):
        folder = root / f"lora{k}"
        state = {}
        for module, (out_features, in_features) in targets.items():
            state[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, in_features, generator=g) * 0.01
            state[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_features, rank, generator=g) * 0.01
        LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS)).save_pretrained(str(folder))
        save_file(state, str(folder / "adapter_model.safetensors"))
        paths.append(folder)
    return paths


def lora_case(args: argparse.Namespace, cfg: dict, work: Path) -> None:
    from search.weights.deltas import TensorDeltas, merge_tensor
    from search.weights.sizes import task_vector_bytes

    subprocess.run([sys.executable, __file__, "--generate-into", str(work), "--fine-tunes", "0",
                    "--layers", str(args.layers), "--hidden", str(args.hidden),
                    "--intermediate", str(args.intermediate), "--vocab", str(args.vocab)], check=True)
    adapters = write_adapters(work, cfg, 4, args.rank)
    parents = Parents.load(work / "base", adapters, dtype=torch.float32, device="cpu")
    state = parents.build_model().state_dict()
    model_bytes = parents.model_nbytes()
    lora_bytes = sum(d.nbytes for d in parents.deltas.values())
    dense_bytes = parents.num_models * model_bytes
    planned = sum(task_vector_bytes(a, itemsize=4) for a in adapters)
    print(f"4 rank-{args.rank} adapters on {', '.join(LORA_TARGETS)}")
    print(f"  task vectors held: {lora_bytes / 1e6:9.1f} MB as factors (plan from headers: {planned / 1e6:.1f} MB) "
          f"vs {dense_bytes / 1e6:9.1f} MB dense: {dense_bytes / lora_bytes:6.1f}x smaller")
    for method, cand in LORA_CANDIDATES.items():
        spec = MergeSpec(method=method, **cand)
        seconds = {"factors": 0.0, "dense": 0.0}
        with torch.no_grad():
            # tensor by tensor, both ways back to back (best of --repeats each), so load spikes on a shared
            # machine hit both alike; the dense task vectors of one tensor are resident at a time
            for name in parents.names:
                params = spec.tensor_params(name, parents.layout)
                dense = TensorDeltas.from_dense(parents.stacked_deltas(name))
                ways = {"factors": parents.deltas[name], "dense": dense}
                for way, deltas in ways.items():
                    merge_tensor(spec.merge_method, parents.base[name], deltas, params, out=state[name])  # warm-up
                    best = float("inf")
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        merge_tensor(spec.merge_method, parents.base[name], deltas, params, out=state[name])
                        best = min(best, time.perf_counter() - t0)
                    seconds[way] += best
                del ways, dense
        print(f"  {method:16s} per candidate: {seconds['factors']:7.3f} s from factors vs {seconds['dense']:7.3f} s "
              f"from dense deltas: {seconds['dense'] / seconds['factors']:5.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak resident memory {peak / 1e9:.2f} GB (base + working model = {2 * model_bytes / 1e9:.2f} GB)")


def copy_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes per second moved (read + write) by a large tensor copy: this machine's practical limit."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def time_in_memory(parents: Parents, model: torch.nn.Module, spec: MergeSpec, repeats: int) -> float:
    t0 = time.perf_counter()
    parents.merge_into(model, spec)  # warm-up; a slow method is timed once
    best = time.perf_counter() - t0
    if best > 5:
        return best
    for _ in range(repeats):
        t0 = time.perf_counter()
        parents.merge_into(model, spec)
        best = min(best, time.perf_counter() - t0)
    return best


MERGEKIT_SCRIPT = """
import sys, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
recipe = yaml.safe_load(open(sys.argv[1]))
t0 = time.perf_counter()
run_merge(MergeConfiguration.model_validate(recipe), sys.argv[2],
          options=MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=False, lazy_unpickle=True))
print(time.perf_counter() - t0)
"""


def time_mergekit(base: Path, fts: list[Path], method: str, work: Path) -> tuple[float, float]:
    """(seconds inside run_merge, wall seconds of the whole command) for one candidate merged to disk."""
    import yaml

    cand = CANDIDATES[method]
    recipe = {"merge_method": method, "base_model": str(base), "dtype": "float32",
              "models": [{"model": str(p), "parameters": mp} for p, mp in zip(fts, cand["model_parameters"])]}
    if cand["parameters"]:
        recipe["parameters"] = cand["parameters"]
    path = work / f"{method}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = work / f"mk-{method}"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MERGEKIT_SCRIPT, str(path), str(out)], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - t0
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return float(proc.stdout.strip().splitlines()[-1]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--methods", default=",".join(CANDIDATES))
    ap.add_argument("--mergekit-methods", default="task_arithmetic,ties",
                    help="methods also merged by mergekit from disk ('' to skip)")
    ap.add_argument("--work", type=Path, default=None, help="where to write the generated models")
    ap.add_argument("--lora", action="store_true", help="the LoRA case: 4 adapters, factors vs dense deltas")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank of the --lora case")
    ap.add_argument("--generate-into", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fine-tunes", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.generate_into is not None:  # child process: keeps generation out of the parent's peak memory
        write_models(args.generate_into, llama_config(args.layers, args.hidden, args.intermediate, args.vocab),
                     args.fine_tunes)
        return

    cfg = llama_config(args.layers, args.hidden, args.intermediate, args.vocab)
    n_params = sum(torch.Size(s).numel() for s in tensor_shapes(cfg).values())
    work = Path(tempfile.mkdtemp(prefix="merge-speed-", dir=args.work))
    if args.lora:
        print(f"model: Llama shape, {args.layers} layers, hidden {args.hidden}: {n_params / 1e9:.3f} B parameters, "
              f"fp32; torch threads {torch.get_num_threads()}")
        try:
            lora_case(args, cfg, work)
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        return
    print(f"model: Llama shape, {args.layers} layers, hidden {args.hidden}: {n_params / 1e9:.3f} B parameters, "
          f"fp32, 3 fine-tunes; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--generate-into", str(work), "--layers", str(args.layers),
                    "--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--vocab", str(args.vocab)],
                   check=True)
    base, fts = work / "base", [work / f"ft{k}" for k in range(1, 4)]
    print(f"generated parents in {time.perf_counter() - t0:.1f} s under {work}")

    bw = copy_bandwidth()
    print(f"copy bandwidth (read + write): {bw / 1e9:.2f} GB/s")
    t0 = time.perf_counter()
    parents = Parents.load(base, fts, dtype=torch.float32, device="cpu")
    print(f"parents loaded once in {time.perf_counter() - t0:.1f} s")
    model = parents.build_model()
    model_bytes = parents.model_nbytes()
    must_move = (parents.num_models + 2) * model_bytes
    limit = must_move / bw

    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        spec = MergeSpec(method=method, **CANDIDATES[method])
        seconds = time_in_memory(parents, model, spec, args.repeats)
        rows.append((method, seconds, limit / seconds))
        print(f"  {method:16s} in memory: {seconds:7.3f} s/candidate   bandwidth-limit ratio "
              f"{limit / seconds:5.2f}  ({must_move / seconds / 1e9:.2f} GB/s effective)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    budget = (parents.num_models + 1 + 2) * model_bytes
    print(f"peak resident memory {peak / 1e9:.2f} GB; (parents + 2) x model = {budget / 1e9:.2f} GB; "
          f"ratio {peak / budget:.2f}")

    del parents, model
    ours = dict((m, s) for m, s, _ in rows)
    for method in [m for m in args.mergekit_methods.split(",") if m]:
        inside, wall = time_mergekit(base, fts, method, work)
        mine = ours.get(method)
        speed = f"speed-up {inside / mine:6.1f}x (wall {wall / mine:6.1f}x)" if mine else ""
        print(f"  {method:16s} mergekit from disk: {inside:7.2f} s in run_merge, {wall:7.2f} s wall   {speed}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
