"""The pure parts of ``bench/search_quality.py``: its options per world, the share of the room a search captured,
the oracle's score and the printed table. No model is loaded here (the bench's tests import this module).

>>> round(room_share(searched=0.70, baseline=0.39, oracle=0.77), 3)   # the search took 82 % of the room
0.816
>>> room_share(searched=0.40, baseline=0.50, oracle=0.50) is None   # no room: the share is undefined
True
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("tpe", "cmaes", "random", "gp", "qmc")


@dataclass(frozen=True)
class World:
    """A world's defaults: its space and how far the bench cuts it down (the cuts are stated in every table)."""

    space: Path
    samplers: str
    trials: int
    checkpoints: str
    search_docs: int | None      # documents a task kept in the search role (None: the space's own)
    methods: str | None          # the merge methods kept in the space (None: all of the space's)
    study_baselines: bool        # the studies score the hand-set baselines first (their warm start)
    baselines: str | None        # the hand-set baselines the best is picked among on select (None: all)


WORLDS: dict[str, World] = {
    # the quickstart's demo space as it is: cheap enough for the full budget
    "toy": World(ROOT / "spaces" / "demo.yaml", "tpe,cmaes,random", 100, "25,50,100", None, None, True, None),
    # SmolLM2-135M and seven LoRA skills on a 2-core CPU: a TIES/DARE-TIES merge of it takes ~55 s and scoring
    # 40 documents a task ~55 s (idle machine), so the default keeps task arithmetic, 10 search documents a task,
    # 16 trials, 2 finalists, and picks the best baseline among the uniform merges (select and test keep the
    # task's 40 documents a task); the studies start from the hand-set merges, as `search start`'s do (the
    # default since 2026-11-29; `--no-study-baselines` starts them cold); see the README's "How good is it".
    "smollm2": World(ROOT / "spaces" / "examples" / "smollm2_lora.yaml", "tpe", 16, "8,16", 10,
                     "task_arithmetic", True, "task_arithmetic_0.3,task_arithmetic_0.5,task_arithmetic_0.7,"
                     "task_arithmetic_1.0,uniform_soup"),
}


@dataclass(frozen=True)
class Options:
    world: str
    space: Path
    samplers: tuple[str, ...]
    seeds: tuple[int, ...]
    trials: int
    checkpoints: tuple[int, ...]
    finalists: int
    search_docs: int | None
    methods: tuple[str, ...] | None
    study_baselines: bool
    baselines: tuple[str, ...] | None
    threads: int
    out: Path
    replot: bool = False
    weight_range: tuple[float, float] | None = None
    tag: str = ""

    @property
    def stem(self) -> Path:
        """Where the table, JSON and plot go: ``out/search_quality_<world>[_<tag>]``."""
        return self.out / (f"search_quality_{self.world}" + (f"_{self.tag}" if self.tag else ""))


def parse_options(argv: Sequence[str] | None = None, description: str | None = None) -> Options:
    """The bench's command line; the world's defaults fill what is not given. Bad values exit with code 2.

    >>> o = parse_options(["--world", "smollm2", "--seeds", "0"])
    >>> o.samplers, o.trials, o.checkpoints, o.finalists, o.search_docs, o.methods
    (('tpe',), 16, (8, 16), 2, 10, ('task_arithmetic',))
    """
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=sorted(WORLDS), default="toy")
    ap.add_argument("--space", type=Path, help="the space file (default: the world's)")
    ap.add_argument("--samplers", help="comma-separated: " + ", ".join(SAMPLERS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--checkpoints", help="trial counts at which the pick is made and scored, e.g. 25,50,100")
    ap.add_argument("--baselines", help="comma-separated hand-set baselines to pick the best among on select "
                    "(task_arithmetic_0.3, ties, uniform_soup, only_<model>, ...; 'all': every one; default: the "
                    "world's)")
    ap.add_argument("--finalists", type=int, help="best trials by search value re-scored on select")
    ap.add_argument("--search-docs", type=int, help="documents a task kept in the search role (tasks with a "
                    "search.jsonl per task, like the SmolLM2 world's; 0: all)")
    ap.add_argument("--methods", help="comma-separated merge methods kept from the space (default: the world's)")
    ap.add_argument("--study-baselines", action=argparse.BooleanOptionalAction, default=None,
                    help="let each study score the hand-set baselines first, as `search start` does")
    ap.add_argument("--weight-range", help="LOW,HIGH: the range of every kept method's weight (default: the "
                    "space's)")
    ap.add_argument("--tag", default="", help="suffix of the output files, for a variant of a world's run")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plot from the world's saved table (search_quality_<world>.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench", help="folder for the table and plot")
    args = ap.parse_args(argv)
    world = WORLDS[args.world]

    def ints(text: str, what: str) -> tuple[int, ...]:
        try:
            values = tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            ap.error(f"--{what} takes comma-separated whole numbers, got {text!r}")
        if not values:
            ap.error(f"--{what} is empty")
        return values

    samplers = tuple(s.strip() for s in (args.samplers or world.samplers).split(",") if s.strip())
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or not samplers:
        ap.error(f"unknown sampler(s) {unknown or samplers}: use {', '.join(SAMPLERS)}")
    trials = world.trials if args.trials is None else args.trials
    if trials < 1:
        ap.error("--trials must be at least 1")
    checkpoints = tuple(sorted(c for c in ints(args.checkpoints or world.checkpoints, "checkpoints") if c <= trials))
    if not checkpoints or checkpoints[0] < 1:
        ap.error(f"no checkpoint between 1 and --trials {trials}")
    finalists = args.finalists or (2 if args.world == "smollm2" else 3)
    if finalists < 1:
        ap.error("--finalists must be at least 1")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    docs = world.search_docs if args.search_docs is None else (args.search_docs or None)
    if docs is not None and docs < 1:
        ap.error("--search-docs must be at least 1 (0: all)")
    methods = args.methods or world.methods
    weight_range = None
    if args.weight_range:
        try:
            low, high = (float(x) for x in args.weight_range.split(","))
        except ValueError:
            ap.error(f"--weight-range takes LOW,HIGH, got {args.weight_range!r}")
        if not 0 <= low < high:
            ap.error(f"--weight-range needs 0 <= LOW < HIGH, got {args.weight_range!r}")
        weight_range = (low, high)
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        ap.error(f"--tag takes letters, digits, - and _, got {args.tag!r}")
    chosen = args.baselines or world.baselines
    pool = None if chosen in (None, "all") else tuple(b.strip() for b in chosen.split(",") if b.strip())
    if pool == ():
        ap.error("--baselines is empty")
    space = args.space or world.space
    if not space.is_file():
        ap.error(f"no space file {space}")
    return Options(world=args.world, space=space, samplers=samplers, seeds=ints(args.seeds, "seeds"),
                   trials=trials, checkpoints=checkpoints, finalists=finalists, search_docs=docs,
                   methods=tuple(m.strip() for m in methods.split(",")) if methods else None,
                   study_baselines=world.study_baselines if args.study_baselines is None else args.study_baselines,
                   baselines=pool, threads=args.threads, out=args.out,
                   replot=args.replot, weight_range=weight_range, tag=args.tag)


def room_share(*, searched: float, baseline: float, oracle: float) -> float | None:
    """(searched − best hand-set) ÷ (oracle − best hand-set): the share of the room above the best hand-set merge
    that the search took (1 = as good as each skill scored by its own fine-tune; negative = below the baseline).
    None when there is no room (the oracle is not above the baseline)."""
    room = oracle - baseline
    return None if room <= 0 else (searched - baseline) / room


def oracle_groups(weights: Mapping[str, float], own: Mapping[str, Sequence[float]]
                  ) -> list[tuple[float, Sequence[float]]]:
    """The oracle as weighted groups of per-document values (for ``mean_interval``): every objective scored by the
    fine-tune of its own name alone (``own[objective]``: that model's values on that objective's documents).

    >>> oracle_groups({"add": 0.5, "rev": 0.5}, {"add": [1.0, 0.0], "rev": [1.0]})
    [(0.5, [1.0, 0.0]), (0.5, [1.0])]
    """
    missing = [k for k in weights if k not in own]
    if missing:
        raise ValueError(f"no fine-tune named like objective(s) {missing}: the oracle scores each objective with "
                         "the model of its own name")
    return [(w, own[k]) for k, w in weights.items()]


@dataclass(frozen=True)
class Row:
    """One pick: the trial picked on select among the best ``finalists`` by search value, scored on test."""

    sampler: str
    seed: int
    trials: int
    test: tuple[float, float, float]        # estimate, low, high
    diff: tuple[float, float, float]        # minus the best hand-set baseline, paired
    room: float | None
    pick: str = ""

    @property
    def verdict(self) -> str:
        return "better" if self.diff[1] > 0 else ("worse" if self.diff[2] < 0 else "not distinguishable")


def render_table(rows: Sequence[Row], *, baseline: str, baseline_test: tuple[float, float, float],
                 oracle_test: tuple[float, float, float] | None) -> str:
    """The bench's table as Markdown: one row per sampler, seed and checkpoint; what chose and what reports.

    >>> print(render_table([Row("tpe", 0, 24, (0.5, 0.45, 0.55), (0.1, 0.05, 0.15), 0.5, "#7")],
    ...                    baseline="task_arithmetic_0.3", baseline_test=(0.4, 0.35, 0.45),
    ...                    oracle_test=(0.6, 0.55, 0.65)).splitlines()[-1])
    | tpe | 0 | 24 | #7 | 0.500 (0.450–0.550) | +10.0 (+5.0 to +15.0) | better | 50 % |
    """
    def ci(v: tuple[float, float, float]) -> str:
        return f"{v[0]:.3f} ({v[1]:.3f}–{v[2]:.3f})"

    lines = [f"Picked on: select (the trial best on select among the best by search value; the hand-set baseline "
             f"best on select). Reported on: test. Best hand-set baseline: {baseline}, test {ci(baseline_test)}"
             + (f"; oracle (each skill by its own fine-tune alone), test {ci(oracle_test)}." if oracle_test
                else "."),
             "",
             "| sampler | seed | trials | pick | test (95 % CI) | minus best hand-set, points (95 % CI) | verdict "
             "| share of the room |",
             "| --- | ---: | ---: | --- | --- | --- | --- | ---: |"]
    for r in rows:
        d = r.diff
        room = "—" if r.room is None else f"{100 * r.room:.0f} %"
        lines.append(f"| {r.sampler} | {r.seed} | {r.trials} | {r.pick} | {ci(r.test)} | {100 * d[0]:+.1f} "
                     f"({100 * d[1]:+.1f} to {100 * d[2]:+.1f}) | {r.verdict} | {room} |")
    return "\n".join(lines)


def mean_by_checkpoint(rows: Sequence[Row], checkpoints: Sequence[int]) -> dict[str, list[float]]:
    """Sampler -> the mean over seeds of the test estimate at each checkpoint (for the plot).

    >>> mean_by_checkpoint([Row("tpe", 0, 10, (0.4, 0, 1), (0, 0, 0), None),
    ...                     Row("tpe", 1, 10, (0.6, 0, 1), (0, 0, 0), None)], [10])
    {'tpe': [0.5]}
    """
    out: dict[str, list[float]] = {}
    for sampler in dict.fromkeys(r.sampler for r in rows):
        out[sampler] = []
        for n in checkpoints:
            values = [r.test[0] for r in rows if r.sampler == sampler and r.trials == n]
            out[sampler].append(sum(values) / len(values) if values else float("nan"))
    return out
