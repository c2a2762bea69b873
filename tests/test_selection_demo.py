"""On the demo space: search, select, export the winner, load it with transformers, generate, and find the
report's test score again from the exported folder alone; print the winner against the best baseline."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "spaces" / "demo.yaml"
TRIALS = 12  # enough for a frontier, interpolations and soups; the demo space's own budget is larger

MODELS = ROOT / "search" / "demo" / "models"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DEMO.exists(), reason="the demo space spaces/demo.yaml does not exist yet"),
    pytest.mark.skipif(not (MODELS / "demo-base" / "config.json").exists(),
                       reason="the demo models are not built yet (python -m search.demo.build)"),
]


def test_demo_select_export_generate_and_rescore(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evaluators import build_evaluator
    from search.config.space import Budget, load_space
    from search.export.folder import export_run
    from search.report.render import render_report
    from search.selection.select import select_run
    from search.study.loop import run_study

    torch.set_num_threads(1)
    loaded = load_space(DEMO, output=tmp_path / "run")
    space = loaded.space.model_copy(update={"budget": Budget(trials=TRIALS)})
    loaded = loaded.model_copy(update={"space": space})
    run_study(loaded, progress=False)
    selection = select_run(tmp_path / "run", progress=False)
    render_report(tmp_path / "run", selection=selection)
    win = selection.winner_item
    (folder,) = export_run(tmp_path / "run", "best")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    ids = tokenizer("12+34=", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    for i, o in enumerate(loaded.space.objectives):
        evaluator = build_evaluator(o.evaluator, device="cpu", config_file=loaded.file,
                                    field=f"objectives[{i}]")
        rescored = evaluator.score(model, tokenizer, "test")[o.metric]
        assert rescored == pytest.approx(win.test[o.name], rel=1e-6, abs=1e-9), o.name
    assert (tmp_path / "run" / "report.html").is_file()
    # lm-eval's exact match is a mean over documents: test scores come with intervals and a paired difference
    assert win.test_interval is not None and win.test_interval.low <= win.test_value <= win.test_interval.high
    headline = selection.headline
    assert headline is not None and headline.points
    if headline.winner != headline.baseline:
        assert headline.difference is not None and headline.sentence.startswith(("better", "worse", "not"))
    print(f"\ndemo winner {win.id}: {headline.sentence}")
