"""The morning report: its files, plots that are not blank, the numbers of `search trials`, Chromium's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from search.cli import main
from search.report.render import PLOTS
from search.selection.record import read_selection

ROOT = Path(__file__).resolve().parents[1]
TRIAL_BLUE = (31, 119, 180)  # the trials' colour in the plots (matplotlib's C0)


pytestmark = pytest.mark.usefixtures("single_thread")



def colour_pixels(image: Image.Image, rgb: tuple[int, int, int], tol: int = 12) -> int:
    pixels = image.convert("RGB").getdata()
    return sum(1 for p in pixels if all(abs(a - b) <= tol for a, b in zip(p, rgb)))


def drawn(path: Path) -> bool:
    """A plot with content: many colours, and far from all white."""
    image = Image.open(path).convert("RGB")
    small = image.resize((image.width // 4, image.height // 4))
    colours = small.getcolors(maxcolors=1 << 16) or []
    not_white = sum(n for n, c in colours if sum(c) < 720)
    return len(colours) > 30 and not_white > 0.03 * small.width * small.height


def md_row(md: str, item_id: str, header: list[str]) -> dict[str, str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {item_id} |"))
    return dict(zip(header, [c.strip() for c in line.strip("|").split(" | ")]))


def test_report_files_plots_and_winner(run: Path) -> None:
    md = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    selection = read_selection(run)
    for name, title in PLOTS:
        assert drawn(run / "report_files" / f"{name}.png"), f"{name}.png looks blank"
        assert f"![{title}](report_files/{name}.png)" in md
        assert f"id='plot-{name}'" in page
    assert page.count("src='data:image/png;base64,") == len(PLOTS)
    headline = md.split("## Selected models")[0]
    assert f"`{selection.winner}`" in headline and selection.item(selection.best_baseline).label in headline
    assert f"optuna-dashboard {run / 'study.journal'}" in md
    facts = md.split("## Run facts")[1]
    assert "| trials done | 10/10 |" in facts and "| baselines scored | 9 |" in facts


def test_report_shows_the_select_front_on_test(run: Path) -> None:
    md = (run / "report.md").read_text()
    selection = read_selection(run)
    section = md.split("## The Pareto front on test")[1].split("\n## ")[0]
    header = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("| id |"))
              .strip("|").split(" | ")]
    for item_id in selection.test_front:  # every point, with its test score (perplexity: no interval)
        row = md_row(section, item_id, header)
        for o in selection.objectives:
            assert float(row[f"{o.name} test [95% CI]"]) == pytest.approx(selection.item(item_id).test[o.name],
                                                                           abs=1e-4)
        assert row["undominated on test"] in ("yes", "no")
    assert "The Pareto front on test" in (run / "report.html").read_text()
    # the front plot has a third panel: the front on test
    image = Image.open(run / "report_files" / "front.png")
    assert image.width > 2.5 * image.height


def test_report_shows_the_numbers_of_search_trials(run: Path, tmp_path: Path) -> None:
    main(["trials", str(run), "--out", str(tmp_path / "trials.csv")])
    cli = pd.read_csv(tmp_path / "trials.csv")
    pd.testing.assert_frame_equal(cli, pd.read_csv(run / "report_files" / "trials.csv"))
    md = (run / "report.md").read_text()
    table = md.split("## Selected models and baselines")[1]
    header = [c.strip() for c in next(line for line in table.splitlines() if line.startswith("| id |"))
              .strip("|").split(" | ")]
    selection = read_selection(run)
    checked = 0
    for item in selection.items:
        if item.kind not in ("trial", "baseline"):
            continue
        kind, _, name = item.refs[0].partition(":")
        row = cli[cli["number"] == int(name)] if kind == "trial" else cli[cli["baseline"] == name]
        cells = md_row(table, item.id, header)
        for o in selection.objectives:
            assert cells[f"{o.name} search"] == f"{row[f'search.{o.name}'].item():.4f}", (item.id, o.name)
            assert cells[f"{o.name} select"] == f"{item.select[o.name]:.4f}"
        checked += 1
    assert checked >= 5  # the frontier's trials and the baselines re-scored on select (3 by default)


def test_report_renders_again_from_the_run_folder(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("report*", "export"))
    main(["report", str(copy)])
    assert (copy / "report.md").read_text() == (run / "report.md").read_text().replace(str(run), str(copy))
    assert all(drawn(copy / "report_files" / f"{name}.png") for name, _ in PLOTS)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_in_headless_chromium_shows_the_plots(run: Path, tmp_path: Path) -> None:
    shot = tmp_path / "screenshot.png"
    subprocess.run([str(ROOT / "scripts" / "screenshot_report.sh"), str(run), str(shot)], check=True,
                   timeout=120, capture_output=True)
    image = Image.open(shot)
    assert image.size == (1280, 7000)
    assert drawn(shot)
    # the plots' own colours are on the page (a page of text and tables has none of them)
    assert colour_pixels(image.resize((640, 3500)), TRIAL_BLUE) > 200


def test_study_opens_in_optuna_dashboard(run: Path) -> None:
    dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed")
    from wsgiref.util import setup_testing_defaults

    app = dashboard.wsgi(str(run / "study.journal"))
    environ: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (status, environ["wsgi.errors"].getvalue()[-2000:])
    assert b"merge-search" in body
