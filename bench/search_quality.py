"""How good a merge each sampler finds: the TEST score, with its 95 % interval, of the trial picked on select
after 25/50/100 trials, against the best hand-set baseline picked the same way, over several seeds.

    .venv/bin/python bench/search_quality.py                      # spaces/demo.yaml, tpe, cmaes, random, 3 seeds
    .venv/bin/python bench/search_quality.py --trials 50 --samplers tpe,random --seeds 0

For each sampler and seed, one study on the same space (same baselines); at every checkpoint the ``--finalists``
best trials so far by search value are re-scored on the select role, the best there is picked, and only then
scored on the test role (as ``search select`` does: the figure that chose is never the one reported). The
baselines are picked on select the same way. Prints one row per sampler, seed and checkpoint (test score,
95 % bootstrap interval, paired difference to the best baseline with its interval) and writes a plot to
results/bench/search_quality.png.
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
    from search.selection.stats import mean_interval, paired_interval
    from search.study.baselines import recorded_baselines
    from search.study.candidate import read_record
    from search.study.loop import run_study, scalarize
    from search.study.storage import STUDY_NAME, open_storage
    from search.study.trial import WorkerConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "spaces" / "demo.yaml")
    ap.add_argument("--samplers", default="tpe,cmaes,random")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--checkpoints", default="25,50,100")
    ap.add_argument("--finalists", type=int, default=3, help="best trials by search value re-scored on select")
    args = ap.parse_args()
    checkpoints = [int(c) for c in args.checkpoints.split(",") if int(c) <= args.trials]
    work = Path(tempfile.mkdtemp(prefix="search-quality-"))

    backend: InProcessBackend | None = None
    rows: dict[str, list[list[float]]] = {}
    baseline_test: tuple[float, str] | None = None
    print(f"{'sampler':8s} {'seed':>4s} {'trials':>6s}  {'test [95% CI]':>26s}  {'minus best baseline [95% CI]':>34s}")
    for sampler in args.samplers.split(","):
        for seed in (int(x) for x in args.seeds.split(",")):
            out = work / f"{sampler}-{seed}"
            file = space_copy(args.space, out, sampler={"name": sampler}, budget={"trials": args.trials},
                              optimize="weighted", seed=seed)
            loaded = load_space(file, output=out)
            if backend is None:
                backend = InProcessBackend(WorkerConfig.from_space(loaded))
            run_study(loaded, backend=backend, progress=True)
            worker = backend.worker
            assert worker is not None
            study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out))
            space = loaded.space
            weights = space.signed_weights()
            cache: dict[tuple[str, str], object] = {}

            def scored(spec_json: str, role: str) -> object:
                if (spec_json, role) not in cache:
                    worker.merge(MergeSpec.model_validate_json(spec_json))
                    cache[(spec_json, role)] = (worker.score_documents("test") if role == "test"
                                                else scalarize(space, worker.score(role)))
                return cache[(spec_json, role)]

            def picked(specs: list[str]) -> str:
                return max(specs, key=lambda sp: scored(sp, "select"))  # type: ignore[arg-type,return-value]

            baselines = [b.spec.model_dump_json() for b in recorded_baselines(study)
                         if b.state == "COMPLETE" and b.spec is not None]
            base = picked(baselines)
            _, base_docs = scored(base, "test")  # type: ignore[misc]
            base_iv = mean_interval([(w, base_docs[n]) for n, w in weights.items()], seed=seed)
            baseline_test = (base_iv.estimate, "best baseline on select")
            sampled = [t for t in study.get_trials(deepcopy=False) if read_record(t.user_attrs).baseline is None
                       and t.state.is_finished() and not read_record(t.user_attrs).interrupted]
            sampled.sort(key=lambda t: t.number)
            values = []
            for n in checkpoints:
                complete = sorted((t for t in sampled[:n] if t.state == TrialState.COMPLETE),
                                  key=lambda t: -t.value)[:args.finalists]
                specs = [read_record(t.user_attrs).spec for t in complete]
                spec = picked([s.model_dump_json() for s in specs if s is not None])
                _, docs = scored(spec, "test")  # type: ignore[misc]
                iv = mean_interval([(w, docs[k]) for k, w in weights.items()], seed=seed)
                diff = paired_interval([(w, docs[k], base_docs[k]) for k, w in weights.items()], seed=seed)
                values.append(iv.estimate)
                print(f"{sampler:8s} {seed:4d} {n:6d}  {iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}]  "
                      f"{diff.estimate:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]  "
                      f"(baseline {base_iv.estimate:.4f} [{base_iv.low:.4f}, {base_iv.high:.4f}])")
            rows.setdefault(sampler, []).append(values)
    if backend is not None:
        backend.close()
    assert baseline_test is not None
    means = {s: [sum(v[i] for v in runs) / len(runs) for i in range(len(checkpoints))] for s, runs in rows.items()}
    plot(means, checkpoints, baseline_test)


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
    ax.set_ylabel("test score of the pick on select (weighted, mean over seeds)")
    ax.set_title("search quality on the demo space")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "search_quality.png", dpi=120)
    print(f"plot: {out / 'search_quality.png'}")


if __name__ == "__main__":
    main()
