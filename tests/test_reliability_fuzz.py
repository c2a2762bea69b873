"""Property-based fuzz of what users write: space files (through everything `search start` checks before it loads
a model: reading, validation, the memory plan, parents, evaluators, device, output, run folder, layout and search
plan) and mergekit
recipes (through `search merge`, in-process, to the end). Every case must end in success or a UserError (exit
code 2) with a message: never another exception, never another exit code. Seeded (derandomized); each test prints
how many cases it tried and how they ended.
"""

from __future__ import annotations

import copy
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from reliability_world import make_world, space_dict

from search.cli import main
from search.config.space import load_space
from search.errors import UserError
from search.methods.registry import METHODS
from search.study.loop import validate_run
from search.weights.memory_plan import plan_for_space, refusal

# FUZZ_SCALE=20 fuzzes longer by hand; FUZZ_SEED=N draws other cases than CI's (which are derandomized)
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
SPACE_CASES = 250 * SCALE
RECIPE_CASES = 120 * SCALE

WORDS = ["base_model", "models", "methods", "granularity", "objectives", "optimize", "sampler", "pruner", "budget",
         "baselines", "dtype", "device", "seed", "output", "backend", "resources", "storage", "name", "args",
         "slices", "margin", "trials", "minutes", "max_consecutive_failures", "layer_groups", "per_layer",
         "module_kinds", "evaluator", "metric", "direction", "weight", "type", "function", "data", "task",
         "include_path", "n_startup_trials", "multivariate", "density", "epsilon", "lambda", "t", "normalize",
         "filter", "value", "kind", "merge_method", "parameters", "model", "tokenizer_source", "out_dtype",
         "workers", "gpus_per_worker", "split_map", "heldout_fraction", "batch_size", "max_length"]
STRINGS = ["tpe", "cmaes", "nsgaii", "gp", "qmc", "random", "median", "pareto", "baseline", "none",
           "successive_halving", "weighted", "global", "per_layer", "module_kinds", "cpu", "cuda", "auto", "mps",
           "/proc/x", "", "python", "lm_eval", "perplexity", "score.py:score", "docs.jsonl", "nowhere.py:f",
           "maximize", "minimize", "float16", "bfloat16", "inprocess", "ray", "journal:", "sqlite:///x.db",
           "attention", "mlp", "self_attn", "base", "union", *METHODS]

leaves = (st.none() | st.booleans() | st.integers(-3, 10**6) | st.integers()
          | st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from(STRINGS) | st.text(max_size=8))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=3),
                      max_leaves=8)


def paths_of(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key / item path in nested data."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += paths_of(v, prefix + (i,))
    return out


def near(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same kind as ``value``."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers(min(-2, value), 2 * abs(value) + 10)
    if isinstance(value, float):
        return st.floats(-2.0, 2.0) | st.sampled_from([0.0, 1.0, float("nan"), float("inf")])
    if isinstance(value, str):
        return st.sampled_from(STRINGS) | st.just(value + "x") | st.just(value[:-1])
    if isinstance(value, list):
        return st.lists(st.sampled_from(value), max_size=len(value) + 1) if value else st.just([])
    return st.just(value)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], edits: int = 3) -> dict[str, Any]:
    """``base`` with 1 to ``edits`` random edits: a value replaced (by one of the same kind, or anything), a field
    added (known or random name), removed or renamed."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, edits))):
        paths = paths_of(data)
        if not paths:
            break
        if draw(st.booleans()):  # half the edits at the top level, where most fields live
            paths = [p for p in paths if len(p) == 1] or paths
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["tweak", "tweak", "set", "set", "add", "delete", "rename"]))
        if action == "tweak":  # a value of the same kind: reaches the checks behind the type checks
            parent[key] = draw(near(parent[key]))
        elif action == "set":
            parent[key] = draw(values)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS) | st.text(min_size=1, max_size=8))] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS) | st.text(min_size=1, max_size=8))] = parent.pop(key)
    return data


def dump(data: Any, raw_cut: int | None) -> str:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return text if raw_cut is None else text[:raw_cut] + "{[" + text[raw_cut:]  # now and then: broken YAML


def report(capsys: pytest.CaptureFixture[str], what: str, outcomes: Counter[str]) -> None:
    with capsys.disabled():
        shown = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
        print(f"\n[reliability] {what}: {sum(outcomes.values())} cases ({shown})")


FUZZ = settings(max_examples=SPACE_CASES, deadline=None, derandomize="FUZZ_SEED" not in os.environ, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_fuzzed_space_files_end_in_success_or_a_user_error(tmp_path_factory: pytest.TempPathFactory,
                                                             family: tuple[Path, list[Path]],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = make_world(tmp_path_factory.mktemp("fuzz-space"), family)
    base = space_dict(root, budget={"trials": 2})
    outcomes: Counter[str] = Counter()

    @FUZZ
    @seed(int(os.environ.get("FUZZ_SEED", "0")))
    @given(data=mutated(base), raw_cut=st.none() | st.none() | st.none() | st.integers(0, 400))
    def case(data: dict[str, Any], raw_cut: int | None) -> None:
        path = root / f"space-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(dump(data, raw_cut))
        try:
            loaded = load_space(path)
            memory = plan_for_space(loaded, for_run=True)  # what `search start` prints first
            if not memory.fits:
                raise refusal(memory, path)
            validate_run(loaded)
            outcomes["accepted"] += 1
        except UserError as exc:
            assert str(exc).strip() and exc.fix, f"a refusal without a message or a fix: {exc!r}"
            outcomes["refused with exit 2"] += 1
        finally:
            path.unlink()

    case()
    assert not (root / "run").exists(), "validation wrote a run folder"
    report(capsys, "fuzzed space files", outcomes)
    assert outcomes["accepted"] and outcomes["refused with exit 2"], outcomes


def recipe_base(family: tuple[Path, list[Path]]) -> dict[str, Any]:
    base, fts = family
    return {"merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(fts[0]), "parameters": {"weight": 1.0, "density": [0.3, 0.8]}},
                       {"model": str(fts[1]), "parameters": {"weight": [{"filter": "self_attn", "value": 0.3},
                                                                       {"value": 0.7}], "density": 0.5}}],
            "parameters": {"normalize": True}, "dtype": "float32"}


def test_fuzzed_mergekit_recipes_end_in_success_or_exit_2(tmp_path_factory: pytest.TempPathFactory,
                                                          family: tuple[Path, list[Path]],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path_factory.mktemp("fuzz-recipe")
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=RECIPE_CASES)
    @seed(int(os.environ.get("FUZZ_SEED", "0")))
    @given(data=mutated(recipe_base(family), edits=2), raw_cut=st.none() | st.none() | st.integers(0, 300))
    def case(data: dict[str, Any], raw_cut: int | None) -> None:
        name = uuid.uuid4().hex[:8]
        recipe, out = root / f"{name}.yaml", root / f"out-{name}"
        recipe.write_text(dump(data, raw_cut))
        try:
            main(["merge", str(recipe), str(out)])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        message = " ".join(capsys.readouterr().err.split())
        assert code in (0, 2), f"exit code {code}: {message}"
        if code == 0:
            assert (out / "config.json").exists(), "a merge that succeeded wrote no model"
            outcomes["merged"] += 1
        else:
            assert message and not out.exists(), f"exit 2 without a message, or with output: {message}"
            outcomes["refused with exit 2"] += 1

    case()
    report(capsys, "fuzzed mergekit recipes (search merge)", outcomes)
    assert outcomes["merged"] and outcomes["refused with exit 2"], outcomes
