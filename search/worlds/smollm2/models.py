"""The SmolLM2 world's models as plain HF folders: the base, and each adapter merged into it (dense parents).

    python -m search.worlds.smollm2.models [--out results/smollm2/models] [--base-only]

The example spaces name the committed adapters themselves (low-rank parents) and the base through the link
``results/smollm2/models/base``. The world's table was built on the dense path, written before adapters were
parents: each committed adapter merged into the base once with PEFT (``merge_and_unload``), in float32, under
``CACHE/smollm2-world/<skill>-<hash of the adapter>/`` (CACHE: ``$MERGE_SEARCH_CACHE`` or
``~/.cache/merge-search``; 0.54 GB a skill). ``link_models`` points ``<out>/base`` and ``<out>/<skill>`` at the
cached folders, the paths the example spaces name.

>>> dense_folder("add")                                        # doctest: +SKIP
PosixPath('/root/.cache/merge-search/smollm2-world/add-3f0c...')
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from search.weights.gguf import default_cache_dir
from search.worlds.smollm2 import WORLD_DIR, adapter_dir, base_folder
from search.worlds.smollm2.skills import SKILLS

_DONE = "merge-search-dense.done"
#: Where ``link_models`` puts its links by default: the repository's ignored results folder.
DEFAULT_LINKS = WORLD_DIR.parents[2] / "results" / "smollm2" / "models"


def adapter_hash(skill: str) -> str:
    """A digest of the adapter's files: a retrained adapter gets a new dense folder."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((adapter_dir(skill) / name).read_bytes())
    return digest.hexdigest()[:16]


def dense_folder(skill: str, *, cache_dir: str | Path | None = None) -> Path:
    """The base with the adapter of ``skill`` merged in, as a float32 HF folder (made on the first call)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "smollm2-world" / f"{skill}-{adapter_hash(skill)}"
    if (target / _DONE).exists():
        return target
    base = base_folder()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, adapter_dir(skill)).merge_and_unload()
        # The dequantized base's config.json still names its GGUF quantization (search.weights.gguf keeps it),
        # so transformers marks the loaded model as quantized and refuses to save it: it holds plain floats.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        (tmp / _DONE).write_text(f"{adapter_dir(skill)}\n")
        if target.exists():  # an interrupted earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def link_models(out: Path = DEFAULT_LINKS, skills: tuple[str, ...] = tuple(SKILLS)) -> dict[str, Path]:
    """Symlinks ``out/base`` and ``out/<skill>`` to the cached folders; returns name -> link."""
    out.mkdir(parents=True, exist_ok=True)
    targets = {"base": base_folder(), **{s: dense_folder(s) for s in skills}}
    links = {}
    for name, target in targets.items():
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
        links[name] = link
    return links


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.worlds.smollm2.models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_LINKS)
    ap.add_argument("--base-only", action="store_true",
                    help="link only the dequantized base (all the example spaces need; no dense copies)")
    args = ap.parse_args(argv)
    for name, link in link_models(args.out, () if args.base_only else tuple(SKILLS)).items():
        print(f"{name}: {link} -> {os.readlink(link)}")


if __name__ == "__main__":
    main()
