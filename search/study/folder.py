"""The run folder as one object: where each file lives, the space it ran, its study, the candidates' records, the
selection file, and atomic writes of every file it owns.

```
RUN_DIR/
  space.yaml        the space file as given                       } written at the first start
  resolved.json     the validated space, absolute paths           } (search.study.storage, which also
  study.journal     Optuna's append-only journal of every trial   }  keeps the journal whole and the
  .lock             the live driver's lock                        }  driver's lock)
  selection.json    the selection (search.selection.record)       folder.selection_file
  report.html, report.md, report_files/                           folder.report_html, ...
  export/           exported models                               folder.export_dir
  run.log           the libraries' messages                       folder.log_file
  statistics/       the data-aware methods' per-parent statistics, computed once per run
                    (search.statistics.store: <kind>-<key>.safetensors)  folder.statistics_dir
```

Every stage reads the run through this object instead of building paths or parsing trial attributes itself:
``search status`` and ``search trials`` (:mod:`search.study.progress`), selection, the report and export. The
candidates' facts come as typed records (:mod:`search.study.candidate`), from run folders of any version.
Whatever it writes goes through :meth:`RunFolder.write_text` / :meth:`RunFolder.write_bytes`: a temporary file
beside the target, then ``os.replace``, so a reader (or a crash) never sees half a file.

>>> folder = RunFolder("results/demo")                       # doctest: +SKIP
>>> folder.space.budget.trials, len(folder.records())         # doctest: +SKIP
(40, 51)
>>> folder.write_text("notes.txt", "picked #14 for the safety team")  # doctest: +SKIP
PosixPath('results/demo/notes.txt')
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

from search.config.space import LoadedSpace, Space
from search.errors import UserError
from search.study import storage
from search.study.baselines import BaselineRecord, recorded_baselines
from search.statistics.store import STATISTICS_DIR
from search.study.candidate import CandidateRecord, read_record

SELECTION = "selection.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
REPORT_FILES = "report_files"
EXPORT_DIR = "export"
RUN_LOG = "run.log"


class RunFolder:
    """One run folder (made by ``search start``). Cheap to make: nothing is read until asked for."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def resolved_file(self) -> Path:
        return self.path / storage.RESOLVED

    @property
    def selection_file(self) -> Path:
        return self.path / SELECTION

    @property
    def report_html(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def report_md(self) -> Path:
        return self.path / REPORT_MD

    @property
    def report_files(self) -> Path:
        return self.path / REPORT_FILES

    @property
    def export_dir(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def log_file(self) -> Path:
        return self.path / RUN_LOG

    @property
    def statistics_dir(self) -> Path:
        """Where ``search.statistics.store`` keeps the data-aware statistics (one file per kind and key)."""
        return self.path / STATISTICS_DIR

    @property
    def journal(self) -> Path | None:
        """The journal file the study lives in (None when the space names an RDB storage)."""
        return storage.journal_path(self.path, self.space)

    # -- what the run is -----------------------------------------------------------------------------------------
    @cached_property
    def resolved(self) -> dict[str, Any]:
        """``resolved.json`` (a run folder from before the three roles reads as two-role)."""
        return storage.read_resolved(self.path)

    @cached_property
    def space(self) -> Space:
        return Space.model_validate(self.resolved["space"])

    def loaded(self) -> LoadedSpace:
        """The space as it was resolved at start (absolute parent paths)."""
        space = self.space
        base = space.base_model if space.base_model is not None else next(iter(space.models.values()))
        return LoadedSpace(space=space, file=Path(self.resolved["space_file"]), base_model=Path(base),
                           models={n: Path(p) for n, p in space.models.items()}, output=self.path)

    # -- the study and its candidates ----------------------------------------------------------------------------
    def study(self) -> Any:
        """The run's Optuna study, read as it is (a run in progress in another process keeps running)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        journal = self.journal
        if journal is not None and not journal.exists():
            raise UserError(f"'{self.path}' has no study journal yet", field="RUN_DIR",
                            fix="start the run first (`search start SPACE.yaml`)")
        try:
            return optuna.load_study(study_name=storage.STUDY_NAME,
                                     storage=storage.open_storage(self.path, self.space))
        except KeyError:
            raise UserError(f"'{self.path}' holds no study yet", field="RUN_DIR",
                            fix="start the run with `search start SPACE.yaml` first") from None

    def records(self, study: Any = None) -> dict[int, CandidateRecord]:
        """Every trial's record, by trial number (records of any version, see :func:`read_record`)."""
        study = study if study is not None else self.study()
        return {t.number: read_record(t.user_attrs) for t in study.get_trials(deepcopy=False)}

    def baselines(self, study: Any = None) -> list[BaselineRecord]:
        """Every scored hand-set baseline, trial or study attribute."""
        return recorded_baselines(study if study is not None else self.study())

    def driver(self) -> dict[str, Any] | None:
        """The live driver's lock record, or None when no driver runs this folder."""
        return storage.driver_of(self.path)

    # -- files it owns -------------------------------------------------------------------------------------------
    @property
    def has_selection(self) -> bool:
        return self.selection_file.exists()

    def read_json(self, name: str) -> Any:
        path = self.path / name
        if not path.exists():
            raise UserError(f"'{self.path}' has no {name}", field="RUN_DIR",
                            fix=f"run `search select {self.path}` first" if name == SELECTION else
                            f"run the stage that writes {name} first")
        return json.loads(path.read_text())

    def write_text(self, target: str | Path, text: str) -> Path:
        """Write a file of the run folder atomically; ``target`` is a name in the folder or a path in it."""
        return self.write_bytes(target, text.encode("utf-8"))

    def write_bytes(self, target: str | Path, data: bytes) -> Path:
        path = self._inside(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return path

    def _inside(self, target: str | Path) -> Path:
        path = Path(target) if Path(target).is_absolute() else self.path / target
        if self.path.resolve() not in path.resolve().parents:
            raise ValueError(f"{path} is not inside the run folder {self.path}")
        return path
