"""Why do the SmolLM2 world's adapters break when summed? Figures of their task vectors, layer by layer.

    python -m search.worlds.smollm2.interference [--adapters DIR] [--json results/smollm2/interference.json]

A LoRA adapter's task vector in one linear layer is ``ΔW = (alpha / r) · B · A``. For the adapters under
``--adapters`` (default: the committed ones) this prints

- each task vector's Frobenius norm, alone and relative to the base's weights (``‖ΔW‖ / ‖W‖`` over all layers);
- the cosine between every two task vectors (all layers flattened): a shared component (say "answer briefly",
  learnt by every adapter) would show as large positive cosines, and a sum of seven would grow it 7×;
- how the sum grows: ``‖Σ ΔW‖ / √(Σ ‖ΔW‖²)`` is 1 for orthogonal task vectors and √7 ≈ 2.65 for seven equal ones;
  and, per layer, the spectral norm of the sum against the largest single one (``‖Σ ΔW‖₂ / max ‖ΔW‖₂``): a sum
  of task vectors that read the same input directions (the same ``A``) grows in spectral norm even when their
  outputs are orthogonal, while task vectors with independent row spaces do not;
- the cosine between the adapters' ``A`` matrices (the input directions): adapters initialised from one seed
  start from the same ``A`` and, after tens of steps at this learning rate, keep most of it.

Pure tensor math on the safetensors files: no model is built, a few seconds on one core.

>>> figures = task_vector_figures(load_adapters(["add", "json"]))    # doctest: +SKIP
>>> round(figures["cosine"]["add"]["json"], 2)                        # doctest: +SKIP
0.02
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.worlds.smollm2 import adapter_dir, base_folder
from search.worlds.smollm2.skills import SKILLS

_KEY = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")
Adapter = dict[str, Any]  # module name ("layers.3.mlp.up_proj") -> {"A": tensor, "B": tensor}, plus "scale"


def load_adapters(skills: Sequence[str], folder: Path | None = None) -> dict[str, Adapter]:
    """The LoRA factors of each skill's adapter (float32), keyed by module, and its ``alpha / r``."""
    from safetensors.torch import load_file

    out: dict[str, Adapter] = {}
    for skill in skills:
        path = (folder / skill) if folder is not None else adapter_dir(skill)
        config = json.loads((path / "adapter_config.json").read_text())
        factors: Adapter = {}
        for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
            m = _KEY.search(key)
            if m is None:
                raise ValueError(f"{path}: unexpected tensor {key}")
            layer, block, proj, which = m.groups()
            factors.setdefault(f"layers.{layer}.{block}.{proj}", {})[which] = tensor.float()
        out[skill] = {"modules": factors, "scale": config["lora_alpha"] / config["r"]}
    return out


def _delta(adapter: Adapter, module: str) -> Any:
    f = adapter["modules"][module]
    return adapter["scale"] * (f["B"] @ f["A"])


def _cos(x: Any, y: Any) -> float:
    return float((x.flatten() @ y.flatten()) / (x.norm() * y.norm()).clamp_min(1e-12))


def task_vector_figures(adapters: Mapping[str, Adapter], base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Norms, cosines and growth of the sum of the task vectors (see the module's docstring).

    ``base``: the base weights by module name (``layers.3.mlp.up_proj``), for relative norms; optional."""
    import torch

    skills = list(adapters)
    modules = sorted(adapters[skills[0]]["modules"], key=lambda m: (int(m.split(".")[1]), m))
    k = len(skills)
    gram = torch.zeros(k, k, dtype=torch.float64)
    base_sq = 0.0
    per_layer: dict[int, dict[str, float]] = {}
    a_cos = torch.zeros(k, k, dtype=torch.float64)
    for module in modules:
        deltas = [_delta(adapters[s], module) for s in skills]
        flat = torch.stack([d.flatten() for d in deltas]).double()
        g = flat @ flat.T
        gram += g
        layer = int(module.split(".")[1])
        row = per_layer.setdefault(layer, {"sq": 0.0, "sum_sq": 0.0, "base_sq": 0.0, "spectral_ratio": 0.0, "n": 0})
        row["sq"] += float(g.diag().sum())
        row["sum_sq"] += float(g.sum())
        if base is not None:
            w = base[module].double()
            row["base_sq"] += float((w * w).sum())
            base_sq += float((w * w).sum())
        top = max(float(torch.linalg.matrix_norm(d, ord=2)) for d in deltas)
        row["spectral_ratio"] += float(torch.linalg.matrix_norm(sum(deltas), ord=2)) / top
        row["n"] += 1
        a = torch.stack([adapters[s]["modules"][module]["A"].flatten() for s in skills]).double()
        a = a / a.norm(dim=1, keepdim=True)
        a_cos += a @ a.T
    norms = gram.diag().sqrt()
    cosine = gram / norms[:, None] / norms[None, :]
    a_cos /= len(modules)
    layers = []
    for layer, row in sorted(per_layer.items()):
        entry = {"layer": layer, "norm_sq_sum": row["sq"],
                 "growth": math.sqrt(max(row["sum_sq"], 0.0) / row["sq"]),
                 "spectral_ratio": row["spectral_ratio"] / row["n"]}
        if base is not None:
            entry["relative"] = math.sqrt(row["sq"] / k / row["base_sq"])
        layers.append(entry)
    off = [float(cosine[i, j]) for i in range(k) for j in range(k) if i < j]
    figures: dict[str, Any] = {
        "skills": skills,
        "norm": {s: float(norms[i]) for i, s in enumerate(skills)},
        "cosine": {s: {t: float(cosine[i, j]) for j, t in enumerate(skills)} for i, s in enumerate(skills)},
        "mean_cosine": sum(off) / len(off) if off else math.nan,
        "a_cosine_mean": float(sum(a_cos[i, j] for i in range(k) for j in range(k) if i < j) / max(len(off), 1)),
        "growth": math.sqrt(float(gram.sum()) / float(gram.diag().sum())),
        "growth_if_orthogonal": 1.0,
        "growth_if_equal": math.sqrt(k),
        "spectral_ratio_mean": sum(r["spectral_ratio"] for r in layers) / len(layers),
        "layers": layers,
    }
    if base is not None:
        figures["relative_norm"] = {s: float(norms[i]) / math.sqrt(base_sq) for i, s in enumerate(skills)}
    return figures


def base_weights(modules: Sequence[str]) -> dict[str, Any]:
    """The base's weight matrices of the adapted modules (from the dequantized safetensors folder)."""
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for path in sorted(base_folder().glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for module in modules:
                name = f"model.{module}.weight"
                if name in f.keys():
                    out[module] = f.get_tensor(name).float()
    return out


def render(figures: Mapping[str, Any]) -> str:
    """The figures as Markdown."""
    skills = figures["skills"]
    lines = ["| adapter | ‖ΔW‖ | ‖ΔW‖ / ‖W‖ |", "| --- | ---: | ---: |"]
    for s in skills:
        rel = figures.get("relative_norm", {}).get(s, math.nan)
        lines.append(f"| {s} | {figures['norm'][s]:.2f} | {rel:.4f} |")
    lines += ["", "Cosine between task vectors (all layers):", "",
              "| | " + " | ".join(skills) + " |", "| --- |" + " ---: |" * len(skills)]
    for s in skills:
        lines.append(f"| {s} | " + " | ".join(f"{figures['cosine'][s][t]:.2f}" for t in skills) + " |")
    lines += ["", f"Mean cosine between two task vectors {figures['mean_cosine']:.3f}; between their A matrices "
                  f"{figures['a_cosine_mean']:.3f}. ‖Σ ΔW‖ / √Σ‖ΔW‖² = {figures['growth']:.2f} (1 orthogonal, "
                  f"{figures['growth_if_equal']:.2f} equal); spectral norm of the sum / largest single, mean over "
                  f"modules {figures['spectral_ratio_mean']:.2f}.", "",
              "| layer | growth of the sum | spectral ratio | ‖ΔW‖ / ‖W‖ (mean adapter) |", "| ---: | ---: | ---: | ---: |"]
    for row in figures["layers"]:
        lines.append(f"| {row['layer']} | {row['growth']:.2f} | {row['spectral_ratio']:.2f} | "
                     f"{row.get('relative', math.nan):.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.worlds.smollm2.interference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=Path, default=None, help="a folder of <skill>/ adapters (default: committed)")
    ap.add_argument("--skills", default=",".join(SKILLS))
    ap.add_argument("--json", type=Path, default=Path("results/smollm2/interference.json"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    adapters = load_adapters(args.skills.split(","), args.adapters)
    first = next(iter(adapters.values()))
    figures = task_vector_figures(adapters, base_weights(list(first["modules"])))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=1) + "\n")
    print(render(figures))


if __name__ == "__main__":
    main()
