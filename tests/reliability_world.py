"""A small real world for the reliability tests: the tiny model family, a Python evaluator that scores the live
model, a space file, and helpers to run the real CLI in-process or as a process and to read the study back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from search.cli import main
from search.study.candidate import read_record
from search.study.progress import counted
from search.study.storage import JOURNAL, STUDY_NAME, open_storage

REPO = Path(__file__).resolve().parents[1]

SCORE = '''
import os, time, torch
def score(model, tokenizer, docs):
    time.sleep(float(os.environ.get("SCORE_SLEEP", "0")))
    with torch.no_grad():
        return {"score": float(model.lm_head.weight.abs().mean())}
'''


def make_world(root: Path, family: tuple[Path, list[Path]]) -> Path:
    base, fts = family
    (root / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(8)))
    (root / "score.py").write_text(SCORE)
    (root / "paths.json").write_text(json.dumps({"base": str(base), "fts": [str(p) for p in fts]}))
    return root


def space_dict(root: Path, **changes: Any) -> dict[str, Any]:
    paths = json.loads((root / "paths.json").read_text())
    space: dict[str, Any] = {
        "base_model": paths["base"],
        "models": {"a": paths["fts"][0], "b": paths["fts"][1]},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.5]}, "ties": {"weight": [0.0, 1.5], "density": [0.2, 1.0]}},
        "granularity": {"layer_groups": 2},
        "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "score.py:score",
                                                    "data": "docs.jsonl"}, "metric": "score"}],
        "sampler": {"name": "tpe", "args": {"n_startup_trials": 3}},
        "pruner": {"name": "none", "slices": [0.5, 1.0]},
        "baselines": False,
        "budget": {"trials": 6},
        "output": "run",
    }
    space.update(changes)
    return space


def write_space(root: Path, name: str = "space.yaml", **changes: Any) -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(space_dict(root, **changes), sort_keys=False))
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run the `search` command in-process: (exit code, stdout + stderr, table lines dropped, whitespace
    collapsed)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    text = (captured.out + captured.err).translate({ord(c): " " for c in "│┃┌┐└┘─━┬┴┼├┤"})  # rich's table lines
    return code, " ".join(text.split())


#: Runs the `search` command with SIGINT raising KeyboardInterrupt, as in a terminal. A suite started as a
#: background job without job control (``./.ci/run &``, ``nohup … &``) runs with SIGINT ignored, every child
#: inherits that, and Python keeps an inherited SIG_IGN: a Ctrl-C test would then wait on a driver that never sees it.
_AS_IN_A_TERMINAL = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                     "from search.cli import main; main(sys.argv[1:])")


def spawn(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    """The `search` command as its own process (this checkout's code first on the path), Ctrl-C as in a terminal."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    return subprocess.Popen([sys.executable, "-c", _AS_IN_A_TERMINAL, *args], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def trials_of(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir))
    return study.get_trials(deepcopy=False)


def finished(run_dir: Path) -> dict[int, tuple[Any, ...]]:
    """Every finished trial: number -> (state, values, params, its candidate record)."""
    if not (run_dir / JOURNAL).exists():
        return {}
    try:
        trials = trials_of(run_dir)
    except KeyError:  # the study is not created yet
        return {}
    return {t.number: (t.state, t.values, t.params, read_record(t.user_attrs)) for t in trials if t.state.is_finished()}


def counted_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials_of(run_dir) if counted(t)]


def assert_no_proposal_repeated(trials: list[optuna.trial.FrozenTrial]) -> None:
    """Sampled proposals are all different; a retry repeats (at least) its interrupted trial's parameters."""
    by_number = {t.number: t for t in trials}
    seen: set[str] = set()
    for t in trials:
        if read_record(t.user_attrs).retry_of is not None:
            original = by_number[read_record(t.user_attrs).retry_of]
            assert read_record(original.user_attrs).interrupted, \
                f"trial {t.number} retries a trial that was not cut off"
            assert t.params.items() >= original.params.items(), f"retry {t.number} changed its parameters"
            continue
        if not t.params:
            continue
        key = json.dumps(t.params, sort_keys=True)
        assert key not in seen, f"trial {t.number} repeats an earlier proposal"
        seen.add(key)
    retries = [read_record(t.user_attrs).retry_of for t in trials if read_record(t.user_attrs).retry_of is not None]
    assert len(retries) == len(set(retries)), "a trial was retried more than once"
