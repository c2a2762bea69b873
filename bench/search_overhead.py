"""Where a trial's time goes, what early stopping saves, and how much faster than the on-disk path we are.

    .venv/bin/python bench/search_overhead.py            # on spaces/demo.yaml, ~5 min on 2 CPU cores

Printed, each measured in this one run:

1. the fraction of trial wall time NOT spent in the model's own forward passes (measured with forward hooks on the
   working model, over a real run of the trial loop: ask, merge, score, tell, journal writes);
2. the evaluation compute saved by early stopping: total evaluation seconds and documents scored of a run with
   each pruner (median, successive halving, Wilcoxon) against the same run (same seed, same budget) without a
   pruner, and the TEST score of each run's best trial (the saving only counts if that stays equal);
3. the per-trial speed-up over the on-disk path a mergekit-evolve user takes today: mergekit merges the candidate
   to a folder, lm-eval loads it by path and scores it (fresh process state each time, as mergekit-evolve does).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from common import ROOT, library_log  # noqa: E402  (the checkout on sys.path, offline hubs)

from space_copy import space_copy  # noqa: E402

from search.backends.inprocess import InProcessBackend  # noqa: E402
from search.config.space import load_space  # noqa: E402
from search.merging.spec import MergeSpec  # noqa: E402
from search.study.candidate import read_record  # noqa: E402
from search.study.loop import run_study  # noqa: E402
from search.study.trial import WorkerConfig  # noqa: E402


class ForwardTimer:
    """Seconds spent inside ``model.forward`` (public module hooks; nothing is patched)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._t0 = 0.0
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, *_: object) -> None:
        self._t0 = time.perf_counter()

    def _post(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1


def run(space_path: Path, out: Path, *, trials: int, pruner: dict | None) -> tuple[object, float, ForwardTimer]:
    updates: dict = {"budget": {"trials": trials}, "baselines": False}
    if pruner is not None:
        updates["pruner"] = pruner
    file = space_copy(space_path, out, **updates)
    loaded = load_space(file, output=out)
    backend = InProcessBackend(WorkerConfig.from_space(loaded))
    backend.start()
    assert backend.worker is not None
    timer = ForwardTimer(backend.worker.model)
    t0 = time.perf_counter()
    summary = run_study(loaded, backend=backend, progress=False)
    wall = time.perf_counter() - t0
    return (loaded, summary, backend), wall, timer


def study_of(run_dir: Path):
    import optuna

    from search.study.storage import STUDY_NAME, open_storage

    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))


def documents_scored(run_dir: Path) -> float:
    """Search-split fractions scored, summed over trials (growing slices score only their new documents, so a
    trial stopped after slice i scored ``slices[i]`` of the split): the model compute, which dominates for a
    large model where lm-eval's fixed per-call cost vanishes."""
    from search.study.storage import load_run_space

    slices = load_run_space(run_dir).pruner.slices
    trials = study_of(run_dir).get_trials(deepcopy=False)
    scored = [read_record(t.user_attrs).slices_scored for t in trials]
    return sum(slices[n - 1] for n in scored if n)


def eval_seconds(run_dir: Path) -> tuple[float, float]:
    trials = study_of(run_dir).get_trials(deepcopy=False)
    records = [read_record(t.user_attrs) for t in trials]
    return sum(r.eval_seconds for r in records), sum(r.merge_seconds for r in records)


def best_tested(run_dir: Path, backend: InProcessBackend) -> tuple[float, float]:
    """(search value, test weighted score) of the run's best complete trial."""
    from search.config.space import Space
    from search.study.loop import scalarize
    from search.study.storage import load_run_space

    space: Space = load_run_space(run_dir)
    best = study_of(run_dir).best_trial
    spec = read_record(best.user_attrs).spec
    backend.start()  # run_study closed it; this reloads the worker
    assert backend.worker is not None
    backend.worker.merge(spec)
    return best.value, scalarize(space, backend.worker.score("test"))


MERGE_AND_SCORE = """
import sys, time, json, yaml
t0 = time.perf_counter()
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
import lm_eval
from lm_eval.tasks import TaskManager
recipe, out, tasks, include, limit = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4], int(sys.argv[5])
run_merge(MergeConfiguration.model_validate(yaml.safe_load(open(recipe))), out,
          options=MergeOptions(quiet=True, write_model_card=False, copy_tokenizer=True))
t1 = time.perf_counter()
res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={out},dtype=float32", tasks=tasks,
                              task_manager=TaskManager(include_path=include), device="cpu", batch_size=64,
                              limit=limit)
t2 = time.perf_counter()
print(json.dumps({"merge": t1 - t0, "eval": t2 - t1}))
"""


def on_disk_seconds(loaded, spec: MergeSpec, work: Path) -> tuple[float, float]:
    """Wall seconds of one candidate merged by mergekit to a folder and scored by lm-eval from that path."""
    import json
    import subprocess

    space = loaded.space
    recipe = {"merge_method": spec.method, "base_model": str(loaded.base_model), "dtype": "float32",
              "models": [{"model": str(loaded.models[name]), "parameters": params}
                         for name, params in zip(space.models, spec.model_parameters)]}
    if spec.parameters:
        recipe["parameters"] = spec.parameters
    path = work / "candidate.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tasks = [o.evaluator["task"] for o in space.objectives]
    include = str(Path(loaded.file).parent / space.objectives[0].evaluator["include_path"])
    # as many documents a task as one of our trials scores on the search role (lm-eval by path reads the test
    # split, which may be larger): the same work on both sides
    from evaluators import build_evaluator

    per_task = [build_evaluator(o.evaluator, device="cpu", config_file=loaded.file, field=f"objectives[{i}]")
                .num_docs("search") for i, o in enumerate(space.objectives)]
    limit = round(sum(per_task) / len(per_task))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", MERGE_AND_SCORE, str(path), str(work / "merged"), ",".join(tasks),
                           include, str(limit)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    inner = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work / "merged", ignore_errors=True)
    return wall, inner["merge"] + inner["eval"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "spaces" / "demo.yaml")
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search-overhead-"))

    (loaded, summary, backend), wall, timer = run(args.space, work / "pruned", trials=args.trials,
                                                  pruner={"name": "median", "slices": [0.25, 1.0],
                                                          "args": {"n_startup_trials": 8}})
    not_forward = 1 - timer.seconds / wall
    ev_p, merge_p = eval_seconds(work / "pruned")
    print(f"[1] trial loop: {summary.finished} trials in {wall:.1f} s ({wall / summary.finished:.2f} s/trial); "
          f"forward passes {timer.seconds:.1f} s ({timer.calls} calls); merging {merge_p:.2f} s")
    print(f"    fraction of trial wall time not in the model's forward passes: {not_forward:.1%}  (target < 5%)")
    search_p, held_p = best_tested(work / "pruned", backend)

    (_, summary_n, backend_n), wall_n, _ = run(args.space, work / "unpruned", trials=args.trials,
                                               pruner={"name": "none", "slices": [1.0]})
    ev_n, _ = eval_seconds(work / "unpruned")
    search_n, held_n = best_tested(work / "unpruned", backend_n)
    docs_n = documents_scored(work / "unpruned")
    print(f"[2] evaluation seconds without pruning: {ev_n:.1f}; best trial search {search_n:.4f} / test "
          f"{held_n:.4f}")
    print(f"    median, slices 25/100 %: {ev_p:.1f} s, saved {1 - ev_p / ev_n:.1%}; pruned {summary.pruned}/"
          f"{summary.finished}; best trial search {search_p:.4f} / test {held_p:.4f}")
    for label, pruner in (("median, slices 10/30/100 %", {"name": "median", "slices": [0.1, 0.3, 1.0],
                                                          "args": {"n_startup_trials": 5}}),
                          ("successive halving, 10/30/100 %", {"name": "successive_halving",
                                                               "slices": [0.1, 0.3, 1.0],
                                                               "args": {"min_resource": 1, "reduction_factor": 2}}),
                          ("wilcoxon, 10/30/100 %", {"name": "wilcoxon", "slices": [0.1, 0.3, 1.0],
                                                     "args": {"p_threshold": 0.1}})):
        folder = work / label.split(",")[0].replace(" ", "_")
        (_, summ, back), _, _ = run(args.space, folder, trials=args.trials, pruner=pruner)
        ev, _ = eval_seconds(folder)
        docs = documents_scored(folder)
        s_best, h_best = best_tested(folder, back)
        print(f"    {label}: {ev:.1f} s, saved {1 - ev / ev_n:.1%} of eval seconds and {1 - docs / docs_n:.1%} of "
              f"documents scored (target >= 40%); pruned {summ.pruned}/{summ.finished}; best trial search "
              f"{s_best:.4f} / test {h_best:.4f}")

    best = study_of(work / "pruned").best_trial
    record = read_record(best.user_attrs)
    spec = record.spec
    ours = record.merge_seconds + record.eval_seconds
    disk_wall, disk_inner = on_disk_seconds(loaded, spec, work)
    print(f"[3] one candidate, in memory (merge + score): {ours:.2f} s; on disk (mergekit to folder, lm-eval by "
          f"path): {disk_wall:.1f} s wall ({disk_inner:.1f} s after imports)")
    print(f"    speed-up per trial: {disk_wall / ours:.1f}x wall, {disk_inner / ours:.1f}x excluding process start "
          f"(target >= 30x)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with library_log("search_overhead"):
        main()
