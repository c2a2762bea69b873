"""Build the demo world end to end: pretrain the base, fine-tune one model a skill, save HF folders.

    python -m search.demo.build --out search/demo/models --seed 0    # the bundled world (~7 min, 1 core)
    python -m search.demo.build --out /tmp/w --base-from search/demo/models/demo-base   # fine-tunes only

Every folder gets model.safetensors (fp32), config.json, generation_config.json and the same tokenizer files,
byte for byte. The result is reproducible bit for bit for a given seed, torch build and thread count.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from search.demo import BASE_MODEL, FINETUNES
from search.demo.tokenizer import build_tokenizer, save_tokenizer
from search.demo.train import FinetuneConfig, PretrainConfig, finetune, generation_config, pretrain


def save_model(model: LlamaForCausalLM, folder: Path, tokenizer_files: list[Path]) -> None:
    """Write one HF folder: weights, configs and a byte-for-byte copy of the shared tokenizer files."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for f in tokenizer_files:
        shutil.copyfile(f, folder / f.name)


def build_world(out: Path, *, seed: int = 0, threads: int = 1,
                pretrain_cfg: PretrainConfig = PretrainConfig(),
                finetune_cfg: FinetuneConfig = FinetuneConfig(), base_from: Path | None = None,
                log_every: int = 200) -> dict[str, float]:
    """Build (or rebuild) every demo model under ``out``; returns seconds spent per stage."""
    torch.set_num_threads(threads)
    tok = build_tokenizer()
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok_files = save_tokenizer(Path(tmp))
        t0 = time.perf_counter()
        if base_from is not None:
            base = AutoModelForCausalLM.from_pretrained(str(base_from))
            base.eval()
        else:
            base = pretrain(tok, pretrain_cfg, seed=seed, log_every=log_every)
        times["pretrain"] = time.perf_counter() - t0
        if base_from is None or base_from.resolve() != (out / BASE_MODEL).resolve():
            save_model(base, out / BASE_MODEL, tok_files)
        for skill, name in FINETUNES.items():
            t0 = time.perf_counter()
            ft = finetune(base, tok, skill, finetune_cfg, seed=seed, log_every=0)
            ft.generation_config = generation_config(tok)
            save_model(ft, out / name, tok_files)
            times[f"finetune:{skill}"] = time.perf_counter() - t0
            print(f"fine-tuned {name} in {times[f'finetune:{skill}']:.1f}s", flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m search.demo.build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder to write the model folders into")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    ap.add_argument("--base-from", type=Path, default=None, help="reuse this base folder, skip pretraining")
    ap.add_argument("--pretrain-steps", type=int, default=PretrainConfig().steps)
    ap.add_argument("--finetune-steps", type=int, default=FinetuneConfig().steps)
    ap.add_argument("--finetune-lr", type=float, default=FinetuneConfig().lr)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    times = build_world(
        args.out, seed=args.seed, threads=args.threads, base_from=args.base_from,
        pretrain_cfg=replace(PretrainConfig(), steps=args.pretrain_steps),
        finetune_cfg=replace(FinetuneConfig(), steps=args.finetune_steps, lr=args.finetune_lr),
    )
    print({k: round(v, 1) for k, v in times.items()}, f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
