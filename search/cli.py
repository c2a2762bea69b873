"""The ``search`` command.

    search merge RECIPE.yaml OUT_DIR      one-shot merge of a mergekit recipe into an HF model folder
    search start SPACE.yaml               start (or resume) a search; the run folder is the space's `output`
    search resume RUN_DIR                 resume a run from its folder
    search status RUN_DIR                 progress of a run (in progress, finished or killed)
    search trials RUN_DIR [--out F]       the trial table (printed, or written as .csv / .parquet)

Bad input exits with code 2 and a message naming the file, the field and the fix; nothing is written.
"""

from __future__ import annotations

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
    from search.merging.oneshot import merge_recipe

    out = merge_recipe(recipe, out_dir, allow_pickle=allow_pickle, overwrite=overwrite,
                       trust_remote_code=trust_remote_code, max_shard_bytes=_size(max_shard_size), device=device,
                       progress=sys.stderr.isatty())
    typer.echo(f"merged model written to {out}")


@app.command()
def start(
    space_file: Path = typer.Argument(..., help="space YAML (see spaces/README.md)"),
    output: Path = typer.Option(None, "--output", "-o", help="run folder (default: the space's `output`)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Run the search of SPACE_FILE to its budget; an existing run folder of the same space resumes."""
    from search.config.space import load_space

    _run(load_space(space_file, output=output), quiet=quiet)


@app.command()
def resume(
    run_dir: Path = typer.Argument(..., help="run folder of an earlier `search start`"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Continue a run from its folder: finished trials are kept, interrupted ones retried."""
    from search.config.space import load_space
    from search.study.storage import SPACE_COPY, read_resolved

    resolved = read_resolved(run_dir)
    space_file = Path(resolved["space_file"])
    if not space_file.exists():
        space_file = run_dir / SPACE_COPY
    _run(load_space(space_file, output=run_dir), quiet=quiet)


def _run(loaded: object, *, quiet: bool) -> None:
    from search.study.loop import RunAborted, run_study

    try:
        summary = run_study(loaded, progress=not quiet and sys.stderr.isatty())  # type: ignore[arg-type]
    except RunAborted as exc:
        err.print(f"[bold red]run stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    typer.echo(f"run folder {summary.run_dir}: {summary.finished} trials ({summary.complete} complete, "
               f"{summary.pruned} pruned, {summary.failed} failed) + {summary.baselines} baselines "
               f"in {summary.seconds:.0f} s")


@app.command()
def status(run_dir: Path = typer.Argument(..., help="run folder")) -> None:
    """Trials done and left, best per objective, speed and ETA, recent failures."""
    from rich.console import Console

    from search.study.progress import render_status, status_of
    from search.study.storage import load_run_space

    space = load_run_space(run_dir)
    study = _load_study(run_dir, space)
    Console().print(render_status(status_of(space, study.get_trials(deepcopy=False)), run_dir))


@app.command()
def trials(
    run_dir: Path = typer.Argument(..., help="run folder"),
    out: Path = typer.Option(None, "--out", help="write the table to .csv or .parquet instead of printing it"),
) -> None:
    """The trial table of a run (through pandas)."""
    from search.study.progress import trials_frame
    from search.study.storage import load_run_space

    space = load_run_space(run_dir)
    frame = trials_frame(space, _load_study(run_dir, space).get_trials(deepcopy=False))
    if out is None:
        typer.echo(frame.drop(columns=[c for c in frame.columns if c.startswith("param.")]).to_string(index=False))
    elif out.suffix == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        raise UserError(f"cannot write '{out}'", field="--out", fix="end the file name in .csv or .parquet")


def _load_study(run_dir: Path, space: object) -> object:
    import optuna

    from search.study.storage import STUDY_NAME, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, space))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into exit code 2."""
    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc != 0:  # typer.Exit(code) is returned, not raised, without standalone mode
            sys.exit(rc)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(UserError.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (typer's vendored click) come through standalone_mode=False: show them as click would.
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
