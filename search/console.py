"""A quiet console: library messages go to the run's log file, the terminal shows our progress and results.

lm-eval, transformers, datasets, Optuna, Ray and PyTorch speak through Python's ``logging`` (some with their own
stream handler and no propagation) and through ``warnings``. While :class:`LibraryLog` is active, those loggers
write to one handler that appends to the log file the caller names, ``RunFolder(run_dir).log_file``
(``RUN_DIR/run.log``; ``logging.captureWarnings`` routes warnings there too); ``verbose`` keeps their own handlers as well, so the messages also reach the terminal. Nothing is
patched: handlers are swapped on the libraries' loggers and put back on exit.

The log file's folder (the run folder) may not exist yet when the first message comes (it is written only once
the input is known to be good): records wait in memory and are written when it appears. If the run never gets a
folder and an exception ends it, the waiting records go to stderr, so that a crash keeps its context.

>>> with LibraryLog(RunFolder("results/demo").log_file) as log:   # doctest: +SKIP
...     run_study(loaded)
>>> log.path                                                       # doctest: +SKIP
PosixPath('results/demo/run.log')
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import TracebackType

# Loggers of the libraries we drive; "" is the root logger (where lm-eval's and most others' records propagate).
LIBRARIES = ("", "lm-eval", "lm_eval", "transformers", "datasets", "huggingface_hub", "optuna", "ray", "torch",
             "accelerate", "peft", "evaluate", "absl", "filelock", "urllib3", "matplotlib", "PIL", "py.warnings")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RunFolderHandler(logging.Handler):
    """Appends records to ``path`` once its folder exists; until then, keeps them in memory."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = Path(path)
        self.waiting: list[logging.LogRecord] = []
        self._file: logging.FileHandler | None = None
        self.setFormatter(logging.Formatter(_FORMAT))

    @property
    def folder(self) -> Path:
        return self.path.parent

    def _opened(self) -> logging.FileHandler | None:
        if self._file is None and self.folder.is_dir():
            self._file = logging.FileHandler(self.path, mode="a", encoding="utf-8", delay=False)
            self._file.setFormatter(self.formatter)
            for record in self.waiting:
                self._file.emit(record)
            self.waiting.clear()
        return self._file

    def emit(self, record: logging.LogRecord) -> None:
        target = self._opened()
        if target is None:
            self.waiting.append(record)
        else:
            target.emit(record)

    def close(self) -> None:
        self._opened()
        if self._file is not None:
            self._file.close()
        super().close()


class LibraryLog:
    """Route the libraries' log records and warnings to the file ``path`` while active (see module doc)."""

    def __init__(self, path: Path, *, verbose: bool = False) -> None:
        self.handler = _RunFolderHandler(path)
        self.verbose = verbose
        self._saved: list[tuple[logging.Logger, list[logging.Handler], bool, int]] = []
        self._captured = False

    @property
    def path(self) -> Path:
        return self.handler.path

    def __enter__(self) -> LibraryLog:
        _configure_library_loggers()
        for name in LIBRARIES:
            logger = logging.getLogger(name)
            self._saved.append((logger, list(logger.handlers), logger.propagate, logger.level))
            if self.verbose:
                # as the libraries set them up, plus the file: records that propagate reach it at the root
                if not name or not logger.propagate:
                    logger.addHandler(self.handler)
            else:
                # the file instead of their terminal handlers; a library's records stop at its own logger
                logger.handlers = [*(h for h in logger.handlers if not _is_console(h)), self.handler]
                if name:
                    logger.propagate = False
            if name == "" and logger.level > logging.INFO:
                logger.setLevel(logging.INFO)  # the root's WARNING default would drop lm-eval's info lines
        root = logging.getLogger("")
        if self.verbose and not any(_on_terminal(h) for h in root.handlers):
            root.addHandler(_stderr_handler())
        self._captured = not _warnings_captured()
        if self._captured:
            logging.captureWarnings(True)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._captured:
            logging.captureWarnings(False)
        for logger, handlers, propagate, level in reversed(self._saved):
            logger.handlers = handlers
            logger.propagate = propagate
            logger.setLevel(level)
        self._saved.clear()
        if exc is not None and not self.handler.folder.is_dir() and not self.verbose:
            for record in self.handler.waiting:  # a crash before the run folder: keep its context visible
                print(self.handler.format(record), file=sys.stderr)
            self.handler.waiting.clear()
        self.handler.close()


def _configure_library_loggers() -> None:
    """Let the libraries that add their own stream handler on first use add it now, so that it is swapped out
    with the others (transformers and datasets do so lazily, Optuna at import)."""
    for module, attr in (("transformers.utils.logging", "get_logger"), ("datasets.utils.logging", "get_logger"),
                         ("optuna.logging", "get_logger")):
        try:
            mod = __import__(module, fromlist=[attr])
        except ImportError:
            continue
        getattr(mod, attr)("merge-search")


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to a stream (the terminal, or a stream standing in for it), not to a file."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _on_terminal(handler: logging.Handler) -> bool:
    return _is_console(handler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout)


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def _warnings_captured() -> bool:
    return bool(getattr(logging, "_warnings_showwarning", None))
