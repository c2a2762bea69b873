"""bench/search_quality.py's pure parts: its options per world, the room share, the oracle, the table, and the
cheaper search role it builds for the SmolLM2 world. The bench itself runs for an hour; these run in a second."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

import bench.quality_table as qt
from bench.quality_table import Row, oracle_groups, parse_options, render_table, room_share
from bench.search_quality import bench_space, smaller_search_role

ROOT = Path(__file__).resolve().parents[1]


def test_doctests() -> None:
    assert doctest.testmod(qt).failed == 0


def test_room_share() -> None:
    assert room_share(searched=0.5, baseline=0.4, oracle=0.6) == pytest.approx(0.5)
    assert room_share(searched=0.6, baseline=0.4, oracle=0.6) == pytest.approx(1.0)
    assert room_share(searched=0.3, baseline=0.4, oracle=0.6) == pytest.approx(-0.5)  # below the baseline
    assert room_share(searched=0.7, baseline=0.4, oracle=0.4) is None                 # no room to share
    assert room_share(searched=0.7, baseline=0.5, oracle=0.4) is None


def test_oracle_groups_needs_a_model_per_objective() -> None:
    assert oracle_groups({"a": 0.25, "b": 0.75}, {"b": [0.0], "a": [1.0, 1.0]}) == [(0.25, [1.0, 1.0]),
                                                                                      (0.75, [0.0])]
    with pytest.raises(ValueError, match="'c'"):
        oracle_groups({"a": 0.5, "c": 0.5}, {"a": [1.0]})


def test_table_rows_and_verdicts() -> None:
    rows = [Row("tpe", 0, 12, (0.5, 0.4, 0.6), (0.12, 0.05, 0.2), 0.8, "#3"),
            Row("tpe", 1, 12, (0.4, 0.3, 0.5), (0.01, -0.02, 0.04), None, "#9"),
            Row("cmaes", 0, 12, (0.3, 0.2, 0.4), (-0.1, -0.15, -0.05), -1.0, "#1")]
    text = render_table(rows, baseline="task_arithmetic_0.3", baseline_test=(0.38, 0.3, 0.45), oracle_test=None)
    assert "Picked on: select" in text and "Reported on: test" in text and "task_arithmetic_0.3" in text
    body = text.splitlines()[-3:]
    assert body[0] == "| tpe | 0 | 12 | #3 | 0.500 (0.400–0.600) | +12.0 (+5.0 to +20.0) | better | 80 % |"
    assert body[1].endswith("| not distinguishable | — |")
    assert body[2].endswith("| worse | -100 % |")
    means = qt.mean_by_checkpoint(rows, [12, 24])
    assert means["tpe"][0] == pytest.approx(0.45) and means["tpe"][1] != means["tpe"][1]  # NaN: no row at 24


def test_world_defaults_and_overrides() -> None:
    toy = parse_options([])
    assert toy.world == "toy" and toy.space == ROOT / "spaces" / "demo.yaml"
    assert toy.samplers == ("tpe", "cmaes", "random") and toy.checkpoints == (25, 50, 100)
    assert toy.search_docs is None and toy.methods is None and toy.study_baselines and toy.baselines is None
    assert toy.finalists == 3
    real = parse_options(["--world", "smollm2", "--samplers", "tpe,cmaes", "--trials", "30", "--search-docs", "0",
                          "--checkpoints", "10,50,20", "--no-study-baselines"])
    assert real.space.name == "smollm2_lora.yaml" and real.samplers == ("tpe", "cmaes")
    assert real.checkpoints == (10, 20)  # sorted; those past --trials dropped
    assert real.search_docs is None and real.methods == ("task_arithmetic",) and not real.study_baselines
    assert real.baselines is not None and "task_arithmetic_0.3" in real.baselines and "ties" not in real.baselines
    assert parse_options(["--world", "smollm2", "--baselines", "all"]).baselines is None
    assert parse_options(["--baselines", "ties, uniform_soup"]).baselines == ("ties", "uniform_soup")


@pytest.mark.parametrize("argv", [["--world", "moon"], ["--samplers", "tpe,anneal"], ["--seeds", "a"],
                                  ["--trials", "0"], ["--trials", "10", "--checkpoints", "20"],
                                  ["--finalists", "-1"], ["--search-docs", "-1"], ["--baselines", ","], ["--weight-range", "0.5"],
                                  ["--weight-range", "0.4,0.1"], ["--tag", "a/b"], ["--space", "nowhere.yaml"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_smaller_search_role_keeps_select_and_test(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks" / "t1"
    tasks.mkdir(parents=True)
    for role in ("search", "select", "test"):
        (tasks / f"{role}.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(40)))
    copy = smaller_search_role(tmp_path / "tasks", tmp_path / "copy", 10)
    assert len((copy / "t1" / "search.jsonl").read_text().splitlines()) == 10
    assert (copy / "t1" / "select.jsonl").read_text() == (tasks / "select.jsonl").read_text()
    assert len((tasks / "search.jsonl").read_text().splitlines()) == 40  # the original is untouched
    with pytest.raises(SystemExit):
        smaller_search_role(tmp_path / "copy" / "nothing", tmp_path / "x", 10)


def test_bench_space_for_the_smollm2_world(tmp_path: Path) -> None:
    opts = parse_options(["--world", "smollm2"])
    updates = bench_space(opts, tmp_path)
    assert updates["baselines"] is True and list(updates["methods"]) == ["task_arithmetic"]  # as `search start`
    paths = {o["evaluator"]["include_path"] for o in updates["objectives"]}
    assert paths == {str(tmp_path / "tasks-10")}
    search = (tmp_path / "tasks-10" / "smollm2_add" / "search.jsonl").read_text().splitlines()
    assert len(search) == 10
    narrow = bench_space(parse_options(["--world", "smollm2", "--weight-range", "0,0.4", "--tag", "narrow"]),
                         tmp_path)
    assert narrow["methods"] == {"task_arithmetic": {"weight": [0.0, 0.4]}}
    assert parse_options(["--world", "smollm2", "--tag", "narrow"]).stem.name == "search_quality_smollm2_narrow"
    with pytest.raises(SystemExit, match="ties_x"):
        bench_space(parse_options(["--world", "smollm2", "--methods", "ties_x"]), tmp_path / "b")


def test_replot_redraws_from_the_saved_table(tmp_path: Path) -> None:
    from bench.search_quality import main

    rows = [Row("tpe", s, n, (0.3 + 0.01 * n, 0.2, 0.5), (0.05, 0.01, 0.1), 0.4, "#1") for s in (0, 1) for n in (8, 16)]
    (tmp_path / "search_quality_smollm2.json").write_text(json.dumps({
        "baseline_test": [0.3, 0.25, 0.35], "oracle_test": [0.6, 0.55, 0.65],
        "rows": [{**r.__dict__} for r in rows]}))
    main(["--world", "smollm2", "--replot", "--out", str(tmp_path)])
    assert (tmp_path / "search_quality_smollm2.png").stat().st_size > 1000


def test_score_cache_knows_when_select_documents_change(tmp_path: Path) -> None:
    """The demo's validation split (search.jsonl) holds its select role too: a changed file or changed role
    fractions must not reuse select scores measured on other documents."""
    import yaml

    from bench.search_quality import ScoreCache

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "search.jsonl").write_text('{"q": 1}\n')
    for name in ("base", "ft"):
        (tmp_path / name).mkdir()
    space = {"base_model": "base", "models": {"ft": "ft"},
             "objectives": [{"name": "t", "evaluator": {"type": "lm_eval", "task": "t", "include_path": "tasks"}}]}
    file = tmp_path / "space.yaml"
    file.write_text(yaml.safe_dump(space))
    cache = ScoreCache(tmp_path / "c.json", file)
    cache.put("spec", "select", 0.5)
    assert ScoreCache(tmp_path / "c.json", file).get("spec", "select") == 0.5  # a rerun reuses it
    (tasks / "search.jsonl").write_text('{"q": 1}\n{"q": 2}\n')
    assert not ScoreCache(tmp_path / "c.json", file).has("spec", "select")
    space["objectives"][0]["evaluator"]["fractions"] = {"search": 0.4, "select": 0.6}
    file.write_text(yaml.safe_dump(space))
    assert not ScoreCache(tmp_path / "c.json", file).has("spec", "select")
