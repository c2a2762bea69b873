"""How good a merge each sampler finds: the TEST score, with its 95 % interval, of the trial picked on select
at each checkpoint (trial count), against the best hand-set baseline picked the same way, over several seeds;
and the share of the room above that baseline the search took, up to the oracle (each skill by its own fine-tune).

    .venv/bin/python bench/search_quality.py                      # toy: spaces/demo.yaml, tpe, cmaes, random, 3 seeds
    .venv/bin/python bench/search_quality.py --trials 50 --samplers tpe,random --seeds 0
    .venv/bin/python bench/search_quality.py --world smollm2      # SmolLM2-135M, seven LoRA skills (cut down: below)

For each sampler and seed, one study on the same space; at every checkpoint the ``--finalists`` best trials so far
by search value are re-scored on the select role, the best there is picked, and only then scored on the test role
(as ``search select`` does: the figure that chose is never the one reported). The hand-set baselines (uniform
task arithmetic at 0.3-1.0, TIES, DARE-TIES, the uniform soup, each fine-tune alone; seed 0) are scored on select
once, the best there is scored on test; the oracle is each objective's own fine-tune alone, on test. Prints one
row per sampler, seed and checkpoint (test score, 95 % bootstrap interval, paired difference to the best baseline
with its interval, share of the room) and writes ``search_quality_<world>.md`` / ``.json`` / ``.png`` to ``--out``
(results/bench/), rewritten after every row so that a long run shows what it has.

``--world smollm2`` (``spaces/examples/smollm2_lora.yaml``; its base is linked first, as
``python -m search.worlds.smollm2.models --base-only`` does) is cut down by default to fit a 2-core CPU: task
arithmetic only (a TIES merge of this model takes ~55 s there), 10 search documents a task (select and test keep
the task's 40), TPE, 16 trials, checkpoints 8 and 16, 2 finalists, and the best baseline is picked among the
uniform merges (task arithmetic 0.3-1.0, the soup). The studies start from the hand-set merges as `search start`'s
do (the sampler sees them as finished trials). Every cut is an option: ``--methods``, ``--search-docs 0``,
``--samplers tpe,cmaes``, ``--trials 100``, ``--baselines all``, ``--no-study-baselines`` (cold studies);
``--weight-range 0,0.4 --tag narrow`` runs a variant beside it.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from common import ROOT, library_log  # noqa: E402  (the checkout on sys.path, the hubs offline)

from bench.quality_table import (  # noqa: E402
    Options,
    Row,
    mean_by_checkpoint,
    oracle_groups,
    parse_options,
    render_table,
    room_share,
)


def smaller_search_role(include_path: Path, dest: Path, docs: int) -> Path:
    """A copy of a folder of tasks whose every ``search.jsonl`` keeps its first ``docs`` lines (the other roles'
    files untouched): a cheaper search role with the same select and test documents."""
    if not any(include_path.rglob("search.jsonl")):
        raise SystemExit(f"--search-docs: no search.jsonl under {include_path} (only tasks with one file a role)")
    if not dest.exists():
        shutil.copytree(include_path, dest, ignore=shutil.ignore_patterns("__pycache__"))
        for file in dest.rglob("search.jsonl"):
            lines = file.read_text().splitlines(keepends=True)
            file.write_text("".join(lines[:docs]))
    return dest


def bench_space(opts: Options, work: Path) -> dict[str, Any]:
    """The space fields the bench replaces: fewer methods, a smaller search role, baselines or not."""
    import yaml

    data = yaml.safe_load(opts.space.read_text())
    updates: dict[str, Any] = {"baselines": opts.study_baselines}
    if opts.methods is not None:
        unknown = [m for m in opts.methods if m not in data["methods"]]
        if unknown:
            raise SystemExit(f"--methods: {unknown} not in the space's methods {sorted(data['methods'])}")
        updates["methods"] = {m: data["methods"][m] for m in opts.methods}
    if opts.weight_range is not None:
        methods = updates.get("methods", data["methods"])
        updates["methods"] = {m: {**(args or {}), "weight": list(opts.weight_range)} for m, args in methods.items()}
    if opts.search_docs is not None:
        objectives = []
        for obj in data["objectives"]:
            ev = dict(obj["evaluator"])
            src = (opts.space.parent / ev["include_path"]).resolve()
            ev["include_path"] = str(smaller_search_role(src, work / f"tasks-{opts.search_docs}", opts.search_docs))
            objectives.append({**obj, "evaluator": ev})
        updates["objectives"] = objectives
    return updates


class ScoreCache:
    """Select values and test scores already measured, in a JSON file beside the table, so that a rerun (or a
    run that crashed) scores only what is new. Keyed by the merge, the role and a digest of what decides a score:
    the space's model files, its task files (their names, sizes and modification times) and its evaluator specs
    (role fractions and split maps decide which documents are select and test). It digests the space as given,
    so a variant that cuts the search documents in a copy shares the cache."""

    def __init__(self, path: Path, space: Path) -> None:
        import hashlib

        import yaml

        data = yaml.safe_load(space.read_text())
        roots = [space.parent / data["base_model"], *(space.parent / m for m in data["models"].values()),
                 *(space.parent / o["evaluator"][k] for o in data["objectives"] for k in ("include_path", "data")
                   if k in o["evaluator"])]
        digest = hashlib.sha256()
        for root in roots:
            root = root.resolve()
            for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
                if f.is_file() and "__pycache__" not in f.parts:
                    st = f.stat()
                    digest.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
        digest.update(json.dumps([o["evaluator"] for o in data["objectives"]], sort_keys=True).encode())
        self.context = digest.hexdigest()[:16]
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def _key(self, spec: str, role: str) -> str:
        return f"{self.context}|{role}|{spec}"

    def has(self, spec: str, role: str) -> bool:
        return self._key(spec, role) in self.data

    def get(self, spec: str, role: str) -> Any:
        return self.data[self._key(spec, role)]

    def put(self, spec: str, role: str, value: Any) -> None:
        self.data[self._key(spec, role)] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


def main(argv: list[str] | None = None) -> None:
    opts = parse_options(argv, __doc__)
    if opts.replot:  # e.g. after a run stopped early: the table and JSON are written after every row
        saved = json.loads(opts.stem.with_suffix(".json").read_text())
        rows = [Row(**{**r, "test": tuple(r["test"]), "diff": tuple(r["diff"])}) for r in saved["rows"]]
        done = sorted({r.trials for r in rows})
        plot(opts.stem, mean_by_checkpoint(rows, done), done,
             saved["baseline_test"][0], saved["oracle_test"][0] if saved["oracle_test"] else None, opts.world)
        return

    import optuna
    from optuna.trial import TrialState
    from space_copy import space_copy

    from search.backends.inprocess import InProcessBackend
    from search.config.space import load_space
    from search.merging.spec import MergeSpec
    from search.selection.stats import Interval, mean_interval, paired_interval
    from search.study.baselines import hand_set_baselines
    from search.study.candidate import read_record
    from search.study.loop import run_study, scalarize
    from search.study.storage import STUDY_NAME, open_storage
    from search.study.trial import CandidateFailure, WorkerConfig, quiet_progress_bars

    if opts.world == "smollm2" and not (ROOT / "results" / "smollm2" / "models" / "base").exists():
        from search.worlds.smollm2.models import link_models

        link_models(ROOT / "results" / "smollm2" / "models", ())  # the base alone (dequantized once, cached)
    work = Path(tempfile.mkdtemp(prefix="search-quality-"))
    updates = bench_space(opts, work)
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.stem
    print(f"world {opts.world}: {opts.space.relative_to(ROOT) if opts.space.is_relative_to(ROOT) else opts.space}; "
          f"samplers {','.join(opts.samplers)}; seeds {','.join(map(str, opts.seeds))}; {opts.trials} trials "
          f"(checkpoints {','.join(map(str, opts.checkpoints))}); {opts.finalists} finalists; methods "
          f"{','.join(opts.methods) if opts.methods else 'as the space'}; search documents a task "
          f"{opts.search_docs or 'as the space'}; weight range {opts.weight_range or 'as the space'}; "
          f"baselines in the studies: {opts.study_baselines}", flush=True)

    backend: InProcessBackend | None = None
    # one cache a world: select and test scores do not depend on the searched ranges or the search documents
    cache = ScoreCache(opts.out / f"search_quality_{opts.world}.cache.json", opts.space)

    def scored(spec_json: str, role: str) -> Any:
        """select: the weighted value; test: (scores, per-document values). Every merge is scored once a role."""
        assert backend is not None and backend.worker is not None
        if not cache.has(spec_json, role):
            worker = backend.worker
            try:
                worker.merge(MergeSpec.model_validate_json(spec_json))
                cache.put(spec_json, role, worker.score_documents("test") if role == "test"
                          else scalarize(space, worker.score(role)))
            except CandidateFailure as exc:  # a baseline that breaks the model (NaN) is out of the running
                print(f"  failed: {exc}", flush=True)
                cache.put(spec_json, role, None)
        return cache.get(spec_json, role)

    def own_test(spec_json: str, objective: str) -> list[float] | None:
        """One objective's per-document test values of a merge (the oracle needs only each fine-tune's own)."""
        assert backend is not None and backend.worker is not None
        role = f"test:{objective}"
        if not cache.has(spec_json, role):
            from evaluators.registry import build_evaluator

            worker = backend.worker
            obj = next(o for o in worker.config.objectives if o.name == objective)
            evaluator = build_evaluator(obj.evaluator, device=worker.device.type)
            worker.merge(MergeSpec.model_validate_json(spec_json))
            with quiet_progress_bars():
                _, docs = evaluator.score_documents(worker.model, worker.tokenizer, "test")
            cache.put(spec_json, role, docs.get(obj.metric))
        return cache.get(spec_json, role)

    def picked(specs: list[str]) -> str:
        ok = [s for s in specs if scored(s, "select") is not None]
        return max(ok, key=lambda s: scored(s, "select"))

    rows: list[Row] = []
    base_name = ""
    base_iv = oracle_iv = None
    base_docs: dict[str, list[float]] = {}
    for sampler in opts.samplers:
        for seed in opts.seeds:
            out = work / f"{sampler}-{seed}"
            file = space_copy(opts.space, out, sampler={"name": sampler}, budget={"trials": opts.trials},
                              optimize="weighted", seed=seed, **updates)
            loaded = load_space(file, output=out)
            space = loaded.space
            weights = space.signed_weights()
            if backend is None:
                config = WorkerConfig.from_space(loaded)
                backend = InProcessBackend(replace(config, extra={**config.extra, "torch_threads": opts.threads}))
                backend.start()
                # the hand-set baselines, once for every seed: picked on select, the best scored on test
                every = {b.name: b.spec.model_dump_json() for b in hand_set_baselines(tuple(space.models), seed=0)}
                unknown = sorted(set(opts.baselines or ()) - set(every))
                if unknown:
                    raise SystemExit(f"--baselines: no hand-set baseline {unknown}; there are {sorted(every)}")
                baselines = {n: s for n, s in every.items() if opts.baselines is None or n in opts.baselines}
                for name, spec in baselines.items():
                    value = scored(spec, "select")
                    print(f"baseline {name:22s} select {value if value is None else round(value, 4)}", flush=True)
                base_spec = picked(list(baselines.values()))
                base_name = next(n for n, s in baselines.items() if s == base_spec)
                _, base_docs = scored(base_spec, "test")
                base_iv = mean_interval([(w, base_docs[k]) for k, w in weights.items()], seed=0)
                own = {k: docs for k in weights if f"only_{k}" in every  # each objective by its own fine-tune
                       for docs in [own_test(every[f"only_{k}"], k)] if docs is not None}
                try:
                    oracle_iv = mean_interval(oracle_groups(weights, own), seed=0)
                except ValueError as exc:
                    print(f"no oracle: {exc}", flush=True)
                print(f"best hand-set baseline on select: {base_name}; test {base_iv.estimate:.4f} "
                      f"[{base_iv.low:.4f}, {base_iv.high:.4f}]"
                      + (f"; oracle test {oracle_iv.estimate:.4f} [{oracle_iv.low:.4f}, {oracle_iv.high:.4f}]"
                         if oracle_iv else ""), flush=True)
                print("picked on: select; reported on: test", flush=True)
                print(f"{'sampler':8s} {'seed':>4s} {'trials':>6s}  {'test [95% CI]':>26s}  "
                      f"{'minus best baseline [95% CI]':>34s}  room", flush=True)
            assert base_iv is not None
            run_study(loaded, backend=backend, progress=False)
            study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(out))
            sampled = sorted((t for t in study.get_trials(deepcopy=False)
                              if read_record(t.user_attrs).baseline is None and t.state.is_finished()
                              and not read_record(t.user_attrs).interrupted), key=lambda t: t.number)
            for n in opts.checkpoints:
                complete = sorted((t for t in sampled[:n] if t.state == TrialState.COMPLETE),
                                  key=lambda t: -t.value)[:opts.finalists]
                if not complete:
                    print(f"{sampler:8s} {seed:4d} {n:6d}  no complete trial", flush=True)
                    continue
                specs = {read_record(t.user_attrs).spec.model_dump_json(): t.number for t in complete
                         if read_record(t.user_attrs).spec is not None}
                spec = picked(list(specs))
                _, docs = scored(spec, "test")
                iv: Interval = mean_interval([(w, docs[k]) for k, w in weights.items()], seed=seed)
                diff = paired_interval([(w, docs[k], base_docs[k]) for k, w in weights.items()], seed=seed)
                room = (room_share(searched=iv.estimate, baseline=base_iv.estimate, oracle=oracle_iv.estimate)
                        if oracle_iv else None)
                rows.append(Row(sampler, seed, n, (iv.estimate, iv.low, iv.high),
                                (diff.estimate, diff.low, diff.high), room, f"#{specs[spec]}"))
                print(f"{sampler:8s} {seed:4d} {n:6d}  {iv.estimate:.4f} [{iv.low:.4f}, {iv.high:.4f}]  "
                      f"{diff.estimate:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}]  "
                      + ("—" if room is None else f"{100 * room:.0f} %"), flush=True)
                write(stem, opts, rows, base_name, base_iv, oracle_iv)
    if backend is not None:
        backend.close()
    shutil.rmtree(work, ignore_errors=True)
    assert base_iv is not None
    plot(stem, mean_by_checkpoint(rows, opts.checkpoints), list(opts.checkpoints), base_iv.estimate,
         oracle_iv.estimate if oracle_iv else None, opts.world)


def write(stem: Path, opts: Options, rows: list[Row], base_name: str, base_iv: Any, oracle_iv: Any) -> None:
    """The table so far (Markdown) and its figures (JSON)."""
    triple = (lambda iv: None if iv is None else (iv.estimate, iv.low, iv.high))
    table = render_table(rows, baseline=base_name, baseline_test=triple(base_iv), oracle_test=triple(oracle_iv))
    stem.with_suffix(".md").write_text(table + "\n")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    stem.with_suffix(".json").write_text(json.dumps({
        "options": options, "baseline": base_name, "baseline_test": triple(base_iv),
        "oracle_test": triple(oracle_iv), "rows": [asdict(r) for r in rows]}, indent=1) + "\n")


def plot(stem: Path, means: dict[str, list[float]], checkpoints: list[int], baseline: float,
         oracle: float | None, world: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler, values in means.items():
        ax.plot(checkpoints, values, marker="o", label=sampler)
    ax.axhline(baseline, color="grey", linestyle="--", label="best hand-set baseline (picked on select)")
    if oracle is not None:
        ax.axhline(oracle, color="black", linestyle=":", label="oracle (each skill by its own fine-tune)")
    ax.set_xlabel("trials")
    ax.set_ylabel("test score of the pick (mean over seeds)")
    ax.set_title(f"search quality, {world} world")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)
    print(f"table: {stem.with_suffix('.md')}; plot: {stem.with_suffix('.png')}")


if __name__ == "__main__":
    with library_log("search_quality"):
        main()
