"""The ``search`` command.

    search merge RECIPE.yaml OUT_DIR      one-shot merge of a mergekit recipe into an HF model folder
    search plan SPACE.yaml                memory per part and device, placement, and whether the search fits
    search start SPACE.yaml               start (or resume) a search; the run folder is the space's `output`
    search resume RUN_DIR                 resume a run from its folder
    search status RUN_DIR                 progress of a run (in progress, finished or killed)
    search trials RUN_DIR [--out F]       the trial table (printed, or written as .csv / .parquet)
    search refine RUN_DIR [--from N]      refine a trial's coefficients by gradient descent (a new trial)
    search select RUN_DIR                 frontier, soups, re-scoring on select, test, report (run by `start` too)
    search export RUN_DIR --pick best     HF model folders + mergekit YAML of chosen models
    search report RUN_DIR                 re-render report.html / report.md
    search repair RUN_DIR                 recover a study journal damaged by older versions (keeps a backup)
    search submit SPACE.yaml --address    submit a run to a Ray cluster as a Ray Job
    search demo                           the demo search end to end on the bundled demo models

Bad input exits with code 2 and a message naming the file, the field and the fix; nothing is written.
While start/resume/select/export run, the libraries' messages (lm-eval, transformers, datasets, Optuna, Ray) go
to RUN_DIR/run.log; `--verbose` shows them on the terminal too.
Ctrl-C stops a run with exit code 130 and says how to resume it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import typer
from rich.console import Console

from search.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search merge methods and per-layer coefficients for fine-tunes of one base model.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Search merge methods and per-layer coefficients for fine-tunes of one base model."""


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text.upper())
    if not match:
        raise UserError(f"'{text}' is not a size", field="--max-shard-size", fix="write e.g. 2GB, 500MB")
    value, unit = float(match.group(1)), match.group(2)
    return int(value * 1024 ** " KMGT".index(unit or " "))


@app.command()
def merge(
    recipe: Path = typer.Argument(..., help="mergekit-style recipe YAML"),
    out_dir: Path = typer.Argument(..., help="folder to write the merged model to (must be new or empty)"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="also read pytorch_model.bin (pickle) parents"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace OUT_DIR if it is not empty"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="let transformers run model code"),
    max_shard_size: str = typer.Option("2GB", "--max-shard-size", help="largest safetensors shard"),
    device: str = typer.Option("cpu", "--device", help="where to compute (cpu, cuda)"),
) -> None:
    """Merge the models of RECIPE into OUT_DIR (mergekit configs for shared methods run unchanged)."""
    import warnings

    from search.oneshot import merge_recipe
    from search.merging.spec import IgnoredParameterWarning
    from search.study.preflight import check_device

    check_device(device, file=None, field="--device")

    def show(message, category, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if issubclass(category, IgnoredParameterWarning):
            err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():  # restores the hook below on exit
        warnings.simplefilter("always", IgnoredParameterWarning)
        shown = warnings.showwarning
        warnings.showwarning = show  # the stdlib's documented hook for how warnings are printed
        out = merge_recipe(recipe, out_dir, allow_pickle=allow_pickle, overwrite=overwrite,
                           trust_remote_code=trust_remote_code, max_shard_bytes=_size(max_shard_size),
                           device=device, progress=sys.stderr.isatty())
    typer.echo(f"merged model written to {out}")


@app.command()
def plan(
    space_file: Path = typer.Argument(..., help="space YAML (see spaces/README.md)"),
    gpu_memory: str = typer.Option(None, "--gpu-memory", help="memory of each GPU, e.g. 80GB (default: detected)"),
    cpu_memory: str = typer.Option(None, "--cpu-memory", help="host memory, e.g. 128GB (default: detected)"),
) -> None:
    """Print the memory plan of SPACE_FILE (from config.json and safetensors headers; no weights are read) and
    whether it fits; exit 2 when it does not."""
    from search.config.space import load_space
    from search.weights.memory_plan import parse_size, plan_for_space, refusal, render_plan

    loaded = load_space(space_file)
    memory_plan = plan_for_space(loaded, gpu_memory=parse_size(gpu_memory, option="--gpu-memory") if gpu_memory
                                 else None,
                                 cpu_memory=parse_size(cpu_memory, option="--cpu-memory") if cpu_memory else None)
    Console(width=max(120, Console().width)).print(render_plan(memory_plan))
    if not memory_plan.fits:
        raise refusal(memory_plan, space_file)


def _plan_first(loaded: object) -> None:
    """Refuse what cannot run (exit 2) before anything is printed, loaded or written: a `refine:` that does not
    apply to the space, then a run that does not fit memory; else print the memory plan as the run's first lines."""
    from search.weights.memory_plan import plan_for_space, refusal, render_plan

    if loaded.space.refine is not None:  # type: ignore[attr-defined]
        from search.refine.run import check_space

        check_space(loaded)
    memory_plan = plan_for_space(loaded, for_run=True)
    Console(stderr=True, width=max(120, err.width)).print(render_plan(memory_plan))
    if not memory_plan.fits:
        raise refusal(memory_plan, getattr(loaded, "file", None))


@app.command()
def start(
    space_file: Path = typer.Argument(..., help="space YAML (see spaces/README.md)"),
    output: Path = typer.Option(None, "--output", "-o", help="run folder (default: the space's `output`)"),
    address: str = typer.Option(None, "--address", help="run on a Ray cluster: auto, or ray://HOST:PORT"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    no_select: bool = typer.Option(False, "--no-select", help="skip selection and the report at the end"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Run the search of SPACE_FILE to its budget, then select and report; an existing run folder of the same
    space resumes."""
    from search.config.space import load_space

    loaded = load_space(space_file, output=output)
    if address:
        loaded = loaded.with_ray(address)
    _plan_first(loaded)
    _run(loaded, quiet=quiet, select=not no_select, verbose=verbose)


@app.command()
def submit(
    space_file: Path = typer.Argument(..., help="space YAML"),
    address: str = typer.Option(..., "--address", help="the cluster's dashboard, e.g. http://HOST:8265"),
    output: Path = typer.Option(None, "--output", "-o", help="run folder on storage every node reaches"),
) -> None:
    """Submit the run as a Ray Job; prints the job id and how to follow it."""
    from search.backends.submit import submit_run
    from search.config.space import load_space

    job_id, follow = submit_run(load_space(space_file, output=output), address)
    typer.echo(f"submitted job {job_id}\n{follow}")


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="run folder of an earlier `search start`"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    no_select: bool = typer.Option(False, "--no-select", help="skip selection and the report at the end"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Continue a run from its folder: finished trials are kept, interrupted ones retried."""
    from search.config.space import load_space
    from search.study.storage import SPACE_COPY, read_resolved

    resolved = read_resolved(run_dir)
    space_file = Path(resolved["space_file"])
    if not space_file.exists():
        space_file = run_dir / SPACE_COPY
    loaded = load_space(space_file, output=run_dir)
    _plan_first(loaded)
    _run(loaded, quiet=quiet, select=not no_select, verbose=verbose)


def _say_result(selection: object) -> None:
    """The winner and the run's honest figure: its test score against the best hand-set merge."""
    from search.report.render import result_sentence

    win = selection.winner_item  # type: ignore[attr-defined]
    typer.echo(f"winner {win.id} ({win.label})")
    typer.echo(result_sentence(selection))  # type: ignore[arg-type]


def _run(loaded: object, *, quiet: bool, select: bool = True, verbose: bool = False) -> None:
    """The stages of a run on one backend: the search, then selection on the same workers, then the report."""
    from search.console import LibraryLog
    from search.study.folder import RunFolder
    from search.study.loop import RunAborted, open_backend, run_study

    folder = RunFolder(loaded.output)  # type: ignore[attr-defined]
    run_dir = folder.path
    progress = not quiet and sys.stderr.isatty()
    selection = None
    try:
        with LibraryLog(folder.log_file, verbose=verbose):
            loaded, backend = open_backend(loaded)  # type: ignore[arg-type]
            try:
                summary = run_study(loaded, backend=backend, progress=progress, select=select)
                if loaded.space.refine is not None and not summary.already_finished:  # type: ignore[attr-defined]
                    _refine_stage(summary.run_dir, backend, progress)
                if select and not summary.already_finished:
                    from search.selection.select import select_run

                    selection = select_run(summary.run_dir, backend=backend, progress=progress)
            finally:
                backend.close()
            if selection is not None:
                from search.report.render import render_report

                render_report(summary.run_dir, selection=selection)
    except RunAborted as exc:
        err.print(f"[bold red]run stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if folder.resolved_file.exists():
            err.print(f"interrupted; resume with: search resume {run_dir}", highlight=False, soft_wrap=True)
        else:
            err.print("interrupted before the run started: no trial was recorded", highlight=False)
        raise typer.Exit(130) from None
    if summary.already_finished:
        typer.echo(f"run folder {summary.run_dir} already reached its budget ({summary.finished} trials); nothing "
                   f"was run. To search more, raise budget.trials in the space file and start again; "
                   f"`search select {summary.run_dir}` redoes the selection.")
        return
    typer.echo(f"run folder {summary.run_dir}: {summary.finished} trials ({summary.complete} complete, "
               f"{summary.pruned} pruned, {summary.failed} failed) + {summary.baselines} baselines; "
               f"search {summary.seconds:.0f} s"
               + (f", selection {selection.seconds['total']:.0f} s" if selection is not None else ""))
    if selection is not None:
        _say_result(selection)
    if select and folder.report_html.exists():
        typer.echo(f"report: {folder.report_html} (and {folder.report_md.name}); export a model with "
                   f"`search export {summary.run_dir} --pick best`")


def _refine_stage(run_dir: Path, backend: object, progress: bool) -> None:
    """`refine:` in the space: refine after the search, before selection, on the in-process worker if any."""
    from search.refine.run import refine_run

    try:
        result = refine_run(run_dir, worker=getattr(backend, "worker", None), progress=progress)
    except UserError as exc:  # e.g. no trial of a linear method finished: the search stands, selection goes on
        err.print(f"[bold yellow]refine skipped:[/] {exc}", highlight=False, soft_wrap=True)
        return
    _say_refined(result)


def _say_refined(result: object) -> None:
    r = result  # a search.refine.run.RefineResult
    if r.already_done:  # type: ignore[attr-defined]
        typer.echo(f"trial {r.source} was refined already: trial {r.trial}")  # type: ignore[attr-defined]
        return
    scores = ", ".join(f"{k} {v:.4g}" for k, v in r.search.items())  # type: ignore[attr-defined]
    typer.echo(f"refined trial {r.source} -> trial {r.trial} ({len([p for p in r.curve if 'search_loss' in p])} "  # type: ignore[attr-defined]
               f"steps{', stopped early' if r.stopped_early else ''}); search: {scores}")  # type: ignore[attr-defined]


@app.command()
def refine(
    run_dir: Path = typer.Argument(..., help="run folder (finished or stopped)"),
    from_trial: int = typer.Option(None, "--from", help="trial number to refine (default: the space's refine.from, "
                                                       "else the best trial of a method linear in its task vectors)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Refine a trial's weight/lambda coefficients by gradient descent on the search documents and record the
    result as a trial of its own (settings: the space's `refine:`, else the defaults)."""
    from search.console import LibraryLog
    from search.study.folder import RunFolder
    from search.refine.run import prepare_refine, refine_run

    job = prepare_refine(run_dir, from_trial=from_trial)  # refusals first: nothing written, not even run.log
    with LibraryLog(RunFolder(run_dir).log_file, verbose=verbose):
        result = refine_run(run_dir, job=job, progress=not quiet and sys.stderr.isatty())
    _say_refined(result)
    if not result.already_done:
        typer.echo(f"`search select {run_dir}` ranks it with the others")


@app.command()
def demo(
    output: Path = typer.Option(None, "--output", "-o", help="run folder (default: results/demo)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Run the demo search end to end on the bundled demo models (spaces/demo.yaml), offline, on CPU."""
    from search.config.space import load_space

    space_file = Path(__file__).resolve().parents[1] / "spaces" / "demo.yaml"
    if not space_file.exists():
        raise UserError(f"the demo space {space_file} is missing", fix="run from a checkout of merge-search")
    loaded = load_space(space_file, output=output)
    _plan_first(loaded)
    _run(loaded, quiet=quiet, verbose=verbose)


@app.command()
def status(run_dir: Path = typer.Argument(..., help="run folder")) -> None:
    """Trials done and left, best per objective, speed and ETA, recent failures."""
    from rich.console import Console

    from search.study.folder import RunFolder
    from search.study.progress import render_status, status_of

    folder = RunFolder(run_dir)
    facts = status_of(folder.space, folder.study(), driver=folder.driver())
    Console().print(render_status(facts, run_dir))
    if facts.state.startswith("stopped"):
        typer.echo(f"resume with: search resume {run_dir}")


@app.command()
def trials(
    run_dir: Path = typer.Argument(..., help="run folder"),
    out: Path = typer.Option(None, "--out", help="write the table to .csv or .parquet instead of printing it"),
) -> None:
    """The trial table of a run (through pandas)."""
    from search.study.folder import RunFolder
    from search.study.progress import trials_frame

    folder = RunFolder(run_dir)
    study = folder.study()
    frame = trials_frame(folder.space, study, folder.baselines(study))
    if out is None:
        shown = frame.drop(columns=[c for c in frame.columns if c.startswith("params_") or c.startswith("datetime_")])
        typer.echo(shown.to_string(index=False))
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        raise UserError(f"cannot write '{out}'", field="--out", fix="end the file name in .csv or .parquet")


# --- selection, export and report commands (search/selection, search/report) -------------------------------
def _alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise UserError(f"'{text}' is not a list of numbers", field="--alphas",
                        fix="write comma-separated values in (0, 1), e.g. 0.25,0.5,0.75") from None


@app.command()
def select(
    run_dir: Path = typer.Argument(..., help="run folder (finished or interrupted)"),
    top_k: int = typer.Option(None, "--top-k", min=1,
                              help="frontier size in weighted mode (default: an eighth of the complete "
                              "candidates, 2 to 4)"),
    max_front: int = typer.Option(6, "--max-front", min=2, help="pareto mode: most front points kept (the best "
                                   "on each objective, then by hypervolume)"),
    alphas: str = typer.Option(None, "--alphas", help="interpolation alphas, in (0, 1) (default: 0.5 below 60 "
                               "complete candidates, else 0.25,0.5,0.75)"),
    soup_size: int = typer.Option(None, "--soup-size", min=1,
                                  help="best candidates the soups draw from (default: a sixth of the "
                                  "complete candidates, 2 to 6)"),
    baselines: int = typer.Option(None, "--baselines", min=1,
                                  help="hand-set baselines re-scored on select, the best on search (default 3)"),
    test_front: int = typer.Option(5, "--test-front", min=0,
                                   help="pareto mode: most points of the select-role Pareto front also scored on test"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Frontier, interpolations and soups scored on select; the winner picked there and a fixed set scored on
    test: selection.json, report.html, report.md."""
    from search.selection.record import Options
    from search.selection.select import select_run

    from search.console import LibraryLog
    from search.study.folder import RunFolder

    options = Options(top_k=top_k, max_front=max_front, alphas=None if alphas is None else _alphas(alphas),
                      soup_size=soup_size, baselines=baselines, test_front=test_front)
    from search.report.render import render_report

    with LibraryLog(RunFolder(run_dir).log_file, verbose=verbose):
        selection = select_run(run_dir, progress=not quiet and sys.stderr.isatty(), options=options)
        render_report(run_dir, selection=selection)
    _say_result(selection)
    typer.echo(f"report: {run_dir / 'report.html'} and {run_dir / 'report.md'}; "
               f"export: search export {run_dir} --pick best")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="run folder with a selection.json (`search select`)"),
    pick: str = typer.Option("best", "--pick", help="best, soup, pareto, a trial number, or an item id"),
    out: Path = typer.Option(None, "--out", help="folder to write into (default RUN_DIR/export)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing export folders"),
    device: str = typer.Option("cpu", "--device", help="where to compute the weights (cpu, cuda)"),
    as_: str = typer.Option("folder", "--as", help="folder (a full HF model) or adapter (a PEFT LoRA, for a "
                                                   "linear merge of LoRA adapters)"),
    verbose: bool = typer.Option(False, "--verbose", help="also show the libraries' messages (always in run.log)"),
) -> None:
    """Write picked models as Hugging Face folders, each with a model card and a mergekit YAML beside it."""
    from search.console import LibraryLog
    from search.study.folder import RunFolder
    from search.export.folder import export_run

    if as_ not in ("folder", "adapter"):
        raise UserError(f"--as {as_} is not a format", field="--as", fix="write --as folder or --as adapter")
    with LibraryLog(RunFolder(run_dir).log_file, verbose=verbose):
        folders = export_run(run_dir, pick, out=out, overwrite=overwrite, device=device, as_adapter=as_ == "adapter")
    for folder in folders:
        if as_ == "adapter":
            typer.echo(f"{folder}  (PEFT LoRA adapter of {folder.name})")
        else:
            typer.echo(f"{folder}  (mergekit recipe: {folder.parent / (folder.name + '.mergekit.yaml')})")


@app.command()
def report(run_dir: Path = typer.Argument(..., help="run folder with a selection.json")) -> None:
    """Render report.html and report.md again from selection.json and the study (no scoring)."""
    from search.report.render import render_report

    html_path, md_path = render_report(run_dir)
    typer.echo(f"{html_path}\n{md_path}")


# --- end of selection commands -------------------------------------------------------------------------------


@app.command()
def repair(run_dir: Path = typer.Argument(..., help="run folder whose study journal is damaged")) -> None:
    """Recover a study journal damaged in the middle (as older versions left it after resuming on a torn record):
    every whole record is kept, one glued after torn bytes is recovered, the torn bytes are dropped; the result
    must replay in Optuna; the original is kept beside it."""
    from search.study.storage import journal_path, load_run_space, repair_journal, run_lock

    space = load_run_space(run_dir)
    journal = journal_path(run_dir, space)
    if journal is None or not journal.exists():
        raise UserError(f"'{run_dir}' has no study journal to repair", field="RUN_DIR",
                        fix="give the folder of a run that stores its study in a journal file")
    with run_lock(run_dir):  # no driver may append while the file is rewritten
        done = repair_journal(journal)
    if done.backup is None:
        typer.echo(f"{journal}: all {done.records} records are whole; nothing to repair")
        return
    typer.echo(f"{journal}: kept {done.records} records ({done.recovered} recovered after torn bytes), dropped "
               f"{done.dropped} torn record(s), {done.dropped_bytes} bytes in all; the original is kept as "
               f"{done.backup.name}. Resume with: search resume {run_dir}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into exit code 2."""
    # lm-eval and transformers draw a tqdm bar per call (hundreds per run); our rich progress says it all.
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer.Exit(code) is returned, not raised, without standalone mode
            sys.exit(rc)
    except UserError as exc:
        from rich.markup import escape

        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(UserError.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (typer's vendored click) come through standalone_mode=False: show them as click would.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
