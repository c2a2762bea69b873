"""How good a merge each sampler finds: held-out score of the best trial after 25/50/100 trials.

    .venv/bin/python bench/search_quality.py                      # spaces/demo.yaml, tpe, cmaes, random
    .venv/bin/python bench/search_quality.py --trials 50 --samplers tpe,random

For each sampler, one study on the same space (same seed, same baselines); after every checkpoint the trial with
the best search-split value so far is re-scored on the held-out split. The best hand-set baseline (scored on
held-out too) is the line to beat. Prints a table and writes a plot to results/bench/search_quality.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    import optuna
    from optuna.trial import TrialState
    from space_copy import space_copy

    from search.backends.inprocess import InProcessBackend
    from search.config.space import load_space
    from search.merging.spec import MergeSpec
    from search.study.baselines import recorded_baselines
    from search.study.loop import run_study, scalarize
    from search.study.storage import STUDY_NAME, open_storage
    from search.study.trial import WorkerConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "spaces" / "demo.yaml")
    ap.add_argument("--samplers", default="tpe,cmaes,random")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--checkpoints", default="25,50,100")
    args = ap.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",") if int(c) <= args.trials]
    work = Path(tempfile.mkdtemp(prefix="search-quality-"))

    backend: InProcessBackend | None = None
    rows: dict[str, list[float]] = {}
    best_baseline = None
    for sampler in args.samplers.split(","):
        out = work / sampler
        file = space_copy(args.space, out, sampler={"name": sampler}, budget={"trials": args.trials},
                          optimize="weighted")
        loaded = load_space(file, output=out)
        if backend is None:
            backend = InProcessBackend(WorkerConfig.from_space(loaded))
        run_study(loaded, backend=backend, progress=True)
        backend.start()  # run_study closes it; the worker is rebuilt only when gone
        worker = backend.worker
        assert worker is not None
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out))
        space = loaded.space

        def heldout(spec_json: str) -> float:
            worker.merge(MergeSpec.model_validate_json(spec_json))
            return scalarize(space, worker.score("heldout"))

        if best_baseline is None:
            scored = [(heldout(b.spec), b.name) for b in recorded_baselines(study) if b.state == "COMPLETE"]
            best_baseline = max(scored)
            print(f"best baseline on held-out: {best_baseline[1]} {best_baseline[0]:.4f}")
        sampled = [t for t in study.get_trials(deepcopy=False) if "baseline" not in t.user_attrs
                   and t.state.is_finished() and not t.user_attrs.get("interrupted")]
        sampled.sort(key=lambda t: t.number)
        rows[sampler] = []
        for n in checkpoints:
            complete = [t for t in sampled[:n] if t.state == TrialState.COMPLETE]
            best = max(complete, key=lambda t: t.value)
            rows[sampler].append(heldout(best.user_attrs["spec"]))
    assert best_baseline is not None
    header = "sampler   " + "".join(f"{f'after {n}':>12s}" for n in checkpoints)
    print(header)
    for sampler, values in rows.items():
        print(f"{sampler:10s}" + "".join(f"{v:12.4f}" for v in values)
              + f"   (best baseline {best_baseline[0]:.4f}; last - baseline {values[-1] - best_baseline[0]:+.4f})")
    plot(rows, checkpoints, best_baseline)


def plot(rows: dict[str, list[float]], checkpoints: list[int], best_baseline: tuple[float, str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, values in rows.items():
        ax.plot(checkpoints, values, marker="o", label=sampler)
    ax.axhline(best_baseline[0], color="grey", linestyle="--", label=f"best baseline ({best_baseline[1]})")
    ax.set_xlabel("trials")
    ax.set_ylabel("held-out score of the best trial (weighted)")
    ax.set_title("search quality on the demo space")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "search_quality.png", dpi=120)
    print(f"plot: {out / 'search_quality.png'}")


if __name__ == "__main__":
    main()
