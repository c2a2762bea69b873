"""Gradient refinement vs black-box search at an equal number of forward passes, on the demo world.

    .venv/bin/python bench/refine.py                          # spaces/demo.yaml, 3 seeds, 24 TPE trials
    .venv/bin/python bench/refine.py --trials 10 --skills add,rev   # two skills: about half the time

Three arms per seed, each on the demo space (no baselines; the space's pruner and sampler):

- ``tpe``: TPE alone for ``--trials`` trials;
- ``tpe+refine``: TPE for fewer trials, then ``refine`` (the best linear trial, the space's granularity) with
  ``--steps`` steps: as many trials fewer as the refinement's tokens buy (known before it runs: the same
  documents every step; a trial's tokens are the ``tpe`` arm's mean). Known bias, left as run for the README's
  figures: the estimate leaves out the refined candidate's own scoring on the search role (one trial's tokens),
  so the refinement arms spend about one trial more than ``tpe``; the printed tokens are what each arm spent;
- ``ta+refine``: the uniform task-arithmetic merge (every weight 0.5, as the hand-set baseline) as the one trial,
  then refinement with as many steps as the rest of the budget buys.

How passes are counted: a forward hook on the worker's model adds up the tokens of every call (input_ids
entries, padding included: what the model computes; a generation's decode step is one token per document),
from scoring, generation, refinement's checks and its training forwards; each training forward's backward counts
twice its tokens. Loading checks and the final choice (finalists on select, the winner on test) are the same for
every arm and not counted. Each arm's candidate: its ``--finalists`` best trials by search value re-scored on
the select role, the best there picked, then scored on the test role (the figure that chose is never the one
reported). Prints one row per arm and seed (tokens, test score with its 95 % bootstrap interval, paired
difference to ``tpe`` with its interval) and the means over seeds.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

from common import ROOT, library_log  # noqa: E402  (the checkout on sys.path, offline hubs)


class TokenCounter:
    """Tokens through a model's forward (a pre-hook on the model: every call, whatever calls it)."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.tokens = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is not None:
            self.tokens += int(ids.numel())


def main() -> None:
    import optuna
    import torch
    from space_copy import space_copy

    from search.backends.inprocess import InProcessBackend
    from search.config.refine import Refine
    from search.config.space import load_space
    from search.weights.layout import load_layout
    from search.study.candidate import read_record
    from search.refine.run import refine_run
    from search.selection.stats import mean_interval, paired_interval
    from search.study.loop import directions, run_study, scalarize
    from search.study.space_to_optuna import build_plan, params_for_uniform
    from search.study.storage import STUDY_NAME, open_storage
    from search.study.trial import WorkerConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=ROOT / "spaces" / "demo.yaml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=24, help="TPE trials of the tpe arm (sets the budget)")
    ap.add_argument("--steps", type=int, default=40, help="refinement steps of the tpe+refine arm")
    ap.add_argument("--documents", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--startup", type=int, default=None, help="TPE's n_startup_trials (default: the space's)")
    ap.add_argument("--skills", default=None, help="a subset of the demo's skills (e.g. add,rev): a faster bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    backend: InProcessBackend | None = None
    counter: TokenCounter | None = None
    results: dict[str, list[tuple[float, float, float, float, float, float, float]]] = {}
    t_start = time.perf_counter()

    def start(name: str, seed: int, **updates):  # type: ignore[no-untyped-def]
        nonlocal backend, counter
        out = work / f"{name}-{seed}"
        if args.startup is not None:
            updates["sampler"] = {"name": "tpe", "args": {"n_startup_trials": args.startup, "multivariate": True,
                                                          "group": True}}
        file = space_copy(args.space, out, optimize="weighted", seed=seed, baselines=False, **updates)
        if args.skills:  # the copy (absolute paths) with only these skills' fine-tunes and objectives
            import yaml

            data = yaml.safe_load(file.read_text())
            keep = set(args.skills.split(","))
            data["models"] = {k: v for k, v in data["models"].items() if k in keep}
            data["objectives"] = [o for o in data["objectives"] if o["name"] in keep]
            file.write_text(yaml.safe_dump(data))
        loaded = load_space(file, output=out)
        if backend is None:
            backend = InProcessBackend(WorkerConfig.from_space(loaded, device="cpu"))
            backend.start()
            counter = TokenCounter(backend.worker.model)
        return loaded, out

    def refine(out: Path, settings: Refine, from_trial: int | None = None) -> int:
        result = refine_run(out, settings=settings, from_trial=from_trial, worker=backend.worker, progress=False)
        return 2 * result.passes["train_forward_tokens"]  # the backwards (their forwards went through the hook)

    def measured(fn):  # type: ignore[no-untyped-def]
        assert counter is not None
        before = counter.tokens
        extra = fn()
        return counter.tokens - before + (extra or 0)

    def step_tokens(loaded, settings: Refine) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        """Tokens of one training step (forward + backward = 3 forwards) and of one check, from the very
        batches refinement builds."""
        from search.refine.documents import role_examples
        from search.refine.loss import encode

        weights = {o.name: o.weight for o in loaded.space.objectives}
        tok = backend.worker.tokenizer
        train = encode(tok, role_examples(loaded, "search", settings.documents), weights)
        check = encode(tok, role_examples(loaded, "select", settings.documents), weights)
        size = settings.batch_size
        return (3 * sum(int(b.input_ids.numel()) for b in train.split(size)),
                sum(int(b.input_ids.numel()) for b in check.split(size)))

    def pick(out: Path, space) -> tuple[str, tuple[dict[str, float], dict[str, list[float]]]]:  # type: ignore[no-untyped-def]
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out))
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        finalists = sorted(complete, key=lambda t: -t.value)[:args.finalists]
        worker = backend.worker
        best, best_select = (finalists[0], 0.0) if len(finalists) == 1 else (None, -math.inf)
        for t in finalists if len(finalists) > 1 else ():  # one finalist: nothing to choose on select
            worker.merge(read_record(t.user_attrs).spec)
            value = scalarize(space, worker.score("select"))
            if value > best_select:
                best, best_select = t, value
        assert best is not None
        worker.merge(read_record(best.user_attrs).spec)
        label = f"#{best.number}" + (" (refined)" if read_record(best.user_attrs).refined_from is not None else "")
        return label, worker.score_documents("test")

    print(f"{'arm':11s} {'seed':>4s} {'tokens':>9s}  {'test [95% CI]':>24s}  {'minus tpe [95% CI]':>26s}  picked")
    per_trial: float | None = None
    for seed in (int(x) for x in args.seeds.split(",")):
        # tpe alone: sets the budget
        loaded, out = start("tpe", seed, budget={"trials": args.trials})
        space = loaded.space
        budget = measured(lambda: run_study(loaded, backend=backend, progress=False) and None)
        per_trial = budget / args.trials
        arms: dict[str, tuple[int, str, tuple]] = {"tpe": (budget, *pick(out, space))}  # type: ignore[dict-item]

        # tpe for fewer trials, then refine: the trials dropped pay for the refinement, whose tokens are known
        # before it runs (the same documents every step: 3 x a step's forward tokens, plus the checks)
        settings = Refine(steps=args.steps, documents=args.documents, lr=args.lr)
        per_step, per_check = step_tokens(loaded, settings)

        def refine_tokens(steps: int) -> float:
            return steps * per_step + (steps // settings.check_every + 1) * per_check

        fewer = max(1, args.trials - round(refine_tokens(args.steps) / per_trial))
        loaded_b, out_b = start("tpe_refine", seed, budget={"trials": fewer})
        cost_search = measured(lambda: run_study(loaded_b, backend=backend, progress=False) and None)
        cost_refine = measured(lambda: refine(out_b, settings))
        arms["tpe+refine"] = (cost_search + cost_refine, *pick(out_b, space))  # type: ignore[assignment]

        # the uniform task-arithmetic merge as the only trial, then refinement with the rest of the budget
        loaded_c, out_c = start("ta_refine", seed, budget={"trials": 1})
        plan = build_plan(loaded_c.space, load_layout(loaded_c.base_model).num_layers)
        uniform = params_for_uniform(plan, "task_arithmetic", {"weight": 0.5})
        assert uniform is not None, "the space's task_arithmetic range must hold 0.5"
        out_c.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(study_name=STUDY_NAME, storage=open_storage(out_c, loaded_c.space),
                                    directions=directions(loaded_c.space))
        study.enqueue_trial(uniform)
        cost_ta = measured(lambda: run_study(loaded_c, backend=backend, progress=False) and None)
        steps_c = 1
        while refine_tokens(steps_c + 1) <= budget - cost_ta:
            steps_c += 1
        cost_c = measured(lambda: refine(out_c, settings.model_copy(update={"steps": steps_c}), from_trial=0))
        arms["ta+refine"] = (cost_ta + cost_c, *pick(out_c, space))  # type: ignore[assignment]

        weights = space.signed_weights()
        tpe_docs = arms["tpe"][2][1]
        for arm, (tokens, label, (_, docs)) in arms.items():
            iv = mean_interval([(w, docs[k]) for k, w in weights.items()], seed=seed)
            diff = paired_interval([(w, docs[k], tpe_docs[k]) for k, w in weights.items()], seed=seed)
            results.setdefault(arm, []).append((tokens, iv.estimate, iv.low, iv.high, diff.estimate, diff.low,
                                                diff.high))
            print(f"{arm:11s} {seed:4d} {tokens:9d}  {iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}]  "
                  f"{diff.estimate:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]  {label}", flush=True)
        if arms["ta+refine"][0]:
            print(f"     (seed {seed}: tpe+refine ran {fewer} trials + {args.steps} steps; ta+refine 1 trial + "
                  f"{steps_c} steps at most; one trial ~{per_trial:.0f} tokens, one step ~{per_step:.0f})",
                  flush=True)
    if backend is not None:
        backend.close()
    print("\nmeans over seeds")
    for arm, rows in results.items():
        n = len(rows)
        mean = [sum(r[i] for r in rows) / n for i in range(7)]
        print(f"{arm:11s} tokens {mean[0]:9.0f}  test {mean[1]:.4f}  minus tpe {mean[4]:+.4f} "
              f"(per-seed intervals above)")
    print(f"\n{time.perf_counter() - t_start:.0f} s in all; runs in {work}")


if __name__ == "__main__":
    with library_log("refine"):
        main()
