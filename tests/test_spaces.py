"""Space files: docs, schema and examples agree with the code, and bad spaces say how to fix them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml

from search.config.schema import methods_table, readme_methods_table, space_schema
from search.config.space import (
    Budget,
    Granularity,
    Objective,
    Pruner,
    PrunerName,
    Resources,
    Sampler,
    SamplerName,
    Space,
    load_space,
)
from search.errors import UserError
from search.methods import METHODS
from search.study.baselines import hand_set_baselines
from search.study.pruning import make_pruner
from search.study.samplers import make_sampler
from search.study.space_to_optuna import build_plan

SPACES = Path(__file__).resolve().parent.parent / "spaces"
README = (SPACES / "README.md").read_text()
EXAMPLES = sorted((SPACES / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SPACES / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# -------------------------------------------------------------------------------------------- generated files
def test_shipped_schema_is_the_generated_one() -> None:
    shipped = json.loads((SPACES / "schema.json").read_text())
    assert shipped == space_schema(), "regenerate: python -m search.config.schema spaces/schema.json"


def test_readme_methods_table_is_the_generated_one() -> None:
    assert readme_methods_table(README) == methods_table(), \
        "regenerate: python -m search.config.schema --readme spaces/README.md"


def test_methods_table_says_what_an_omitted_parameter_does() -> None:
    # "searched in [a, b]" must be what build_plan searches when the space leaves the parameter out.
    rows = {}
    method = ""
    for line in methods_table().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        if len(cells) == 7 and cells[1].startswith("`"):
            method = cells[0].strip("`") or method
            rows[(method, cells[1].strip("`"))] = cells[4]
    assert len(rows) == sum(len(m.params) for m in METHODS.values())
    for name, m in METHODS.items():
        models = {"code": "models/code"} if m.max_models == 1 else _minimal()["models"]  # slerp: one model
        if m.check_count is not None:  # lawa: the window searched is capped at the number of checkpoints
            models = {f"c{i}": "models/code" for i in range(10)}
        calibration = {"calibration": {"jsonl": "calib.jsonl"}} if m.statistics else {}  # fisher, regmean
        space = Space.model_validate({**_minimal(), "models": models, "methods": {name: {}}, **calibration})
        searched = {p.param: (p.low, p.high) for p in build_plan(space, num_layers=2).searched[name]}
        for p in m.params:
            said = rows[(name, p.name)]
            if p.name in searched:
                low, high = searched[p.name]
                assert said == f"searched in [{low:g}, {high:g}]", (name, p.name)
            else:
                assert said.startswith("fixed at"), (name, p.name)


# -------------------------------------------------------------------------------------------- README coverage
@pytest.mark.parametrize("model", [Space, Granularity, Objective, Sampler, Pruner, Budget, Resources])
def test_readme_documents_every_field(model: type) -> None:
    # `name`, `name: ...` or `parent.name` (as in `resources.workers`)
    missing = [f for f in model.model_fields if not re.search(rf"`(\w+\.)?{f}[`:]", README)]
    assert not missing, f"spaces/README.md does not document {model.__name__}: {missing}"


def test_readme_documents_every_sampler_pruner_and_baseline() -> None:
    for name in (*get_args(SamplerName), *get_args(PrunerName)):
        assert f"`{name}`" in README, name
    for b in hand_set_baselines(("x", "y"), seed=0):
        shown = "only_<name>" if b.name.startswith("only_") else b.name
        assert f"`{shown}`" in README, b.name


def test_readme_shows_optuna_names_the_code_makes() -> None:
    space = Space.model_validate({**_minimal(), "methods": {"ties": {}},
                                  "granularity": {"layer_groups": 3}})
    names = {p.name for p in build_plan(space, num_layers=6).searched["ties"]}
    assert "ties.density.layer_group_2.model_code" not in names  # density has a default: fixed, not searched
    assert "ties.weight.layer_group_2.model_code" in names
    assert "`ties.density.layer_group_2.model_code`" in README
    assert "optuna-dashboard RUN_DIR/study.journal" in README


# ---------------------------------------------------------------------------------------------- examples
def test_the_four_examples_ship() -> None:
    assert {p.name for p in EXAMPLES} >= {"two_model_slerp.yaml", "three_way_ties_dare.yaml",
                                           "multi_objective_safety.yaml", "cmaes_per_layer.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path, validator: jsonschema.Draft202012Validator) -> None:
    data = yaml.safe_load(path.read_text())
    Space.model_validate(data)
    errors = [e.message for e in validator.iter_errors(data)]
    assert not errors, errors


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_builds_its_study_parts(path: Path, tmp_path: Path) -> None:
    # With its model folders present the example loads, and Optuna accepts its sampler and pruner arguments.
    data = yaml.safe_load(path.read_text())
    for folder in [*([data["base_model"]] if "base_model" in data else []), *data["models"].values()]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy(path, tmp_path / path.name)
    loaded = load_space(tmp_path / path.name)
    assert loaded.output == (tmp_path / data["output"]).resolve()  # outputs may climb out: ../../results
    make_sampler(loaded.space)
    make_pruner(loaded.space.pruner.name, loaded.space.pruner.margin, loaded.space.pruner.args)


def test_examples_say_what_optuna_sees() -> None:
    # The parameter counts written in the examples' comments.
    def plan(name: str, layers: int) -> Any:
        data = yaml.safe_load((SPACES / "examples" / name).read_text())
        return build_plan(Space.model_validate(data), layers)

    three = plan("three_way_ties_dare.yaml", 24)
    assert (len(three.searched["ties"]), len(three.searched["dare_ties"])) == (28, 24)
    cma = plan("cmaes_per_layer.yaml", 28)
    assert cma.relaxed and 1 + sum(len(v) for v in cma.searched.values()) == 169
    slerp = plan("two_model_slerp.yaml", 32)
    assert [p.name for p in slerp.searched["slerp"]][-1] == "slerp.t.layer_group_31"
    safety = plan("multi_objective_safety.yaml", 16)
    names = {p.name for p in safety.searched["task_arithmetic"]}
    assert "task_arithmetic.weight.attention.layer_group_1.model_safe" in names
    assert not safety.relaxed and len(safety.methods) == 1


# -------------------------------------------------------------------------------------------- the JSON schema
@pytest.mark.parametrize("change, why", [
    ({"methods": {"tiez": {"weight": [0, 1]}}}, "unknown method"),
    ({"methods": {"ties": {"densty": 0.5}}}, "unknown parameter"),
    ({"methods": {"ties": {"density": 1.5}}}, "value above the method's bound"),
    ({"methods": {"ties": {"weight": [0.0, 1.0, 2.0]}}}, "a range of three numbers"),
    ({"methods": {"ties": {"normalize": 1}}}, "a number for a flag"),
    ({"budjet": {"trials": 3}}, "unknown field"),
    ({"granularity": "per_layr"}, "unknown granularity"),
    ({"objectives": [{"name": "x", "evaluator": {"type": "lm_evl", "task": "t"}, "metric": "acc"}]},
     "unknown evaluator type"),
    ({"objectives": [{"name": "x", "evaluator": {"type": "lm_eval", "tsk": "t"}, "metric": "acc"}]},
     "unknown evaluator field"),
])
def test_schema_refuses(change: dict[str, Any], why: str, validator: jsonschema.Draft202012Validator) -> None:
    assert list(validator.iter_errors({**_minimal(), **change})), why


def test_schema_accepts_granularity_shorthands(validator: jsonschema.Draft202012Validator) -> None:
    for value in ("global", "per_layer", "module_kinds", {"layer_groups": 4, "module_kinds": True}):
        assert not list(validator.iter_errors({**_minimal(), "granularity": value})), value
        Space.model_validate({**_minimal(), "granularity": value})


# ---------------------------------------------------------------------------------------------- bad spaces
GOOD = """\
base_model: models/base
models: {code: models/code, chat: models/chat}
methods:
  ties: {weight: [0.0, 1.0], density: [0.2, 1.0]}
objectives:
  - name: reasoning
    evaluator: {type: lm_eval, task: arc_easy}
    metric: acc
"""


def _write(tmp_path: Path, text: str) -> Path:
    for folder in ("models/base", "models/code", "models/chat"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> UserError:
    path = _write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert "Fix: " in str(info.value)
    return info.value


def test_good_space_loads(tmp_path: Path) -> None:
    loaded = load_space(_write(tmp_path, GOOD))
    assert loaded.models == {"code": tmp_path / "models/code", "chat": tmp_path / "models/chat"}
    assert loaded.space.mode == "weighted" and not loaded.space.relaxed


def test_unknown_field(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD + "budjet: {trials: 3}\n")
    assert err.field == "budjet"
    assert "(line 9)" in str(err) and "check its spelling" in str(err)


def test_unknown_method_with_near_miss(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("ties:", "tiez:"))
    assert err.field is not None and err.field.startswith("methods")
    assert re.search(r"\(line [34]\)", str(err))
    assert "'tiez'" in str(err) and "did you mean 'ties'?" in str(err)


def test_unknown_parameter_lists_known_ones(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("density:", "densty:"))
    assert err.field is not None and err.field.startswith("methods")
    assert "'densty' is not a parameter of 'ties'" in str(err) and "density" in str(err).split("takes:")[1]


def test_reversed_range(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("weight: [0.0, 1.0]", "weight: [1.0, 0.2]"))
    assert err.field is not None and err.field.startswith("methods")
    assert re.search(r"\(line [34]\)", str(err))
    assert "ties.weight: range [1.0, 0.2] is reversed" in str(err)


def test_value_out_of_bounds(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("density: [0.2, 1.0]", "density: [0.2, 1.5]"))
    assert "'density' must be <= 1.0, got 1.5" in str(err)


def test_slices_not_ending_at_one(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD + "pruner:\n  name: median\n  slices: [0.3, 0.9]\n")
    assert err.field == "pruner.slices"
    assert "(line 11)" in str(err) and "end at 1.0" in str(err)


def test_cmaes_with_pareto(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD + "sampler: {name: cmaes}\noptimize: pareto\n")
    assert "(line " in str(err)
    assert "cmaes" in str(err) and "set optimize: weighted" in str(err)


def test_single_objective_pruner_with_pareto(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD + "optimize: pareto\npruner: {name: median}\n")
    assert "use pruner name 'pareto'" in str(err)


def test_malformed_yaml(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("models: {code: models/code, chat: models/chat}",
                                        "models: {code: models/code, chat: models/chat"))
    assert "is not valid YAML (line 3" in str(err) and "fix the YAML syntax" in str(err)


def test_missing_model_folder(tmp_path: Path) -> None:
    err = _error(tmp_path, GOOD.replace("chat: models/chat", "chat: models/chatt"))
    assert err.field == "models.chat"
    assert "'models/chatt' does not exist" in str(err)


def _minimal() -> dict[str, Any]:
    return yaml.safe_load(GOOD)
