"""A quiet console: library messages and warnings go to RUN_DIR/run.log; --verbose shows them too."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from search.console import LibraryLog
from search.study.folder import RunFolder


def _speak() -> None:
    logging.getLogger("lm_eval.evaluator").warning("Custom kwargs can be passed (lm-eval)")
    logging.getLogger("transformers.modeling_utils").warning("a transformers warning")
    logging.getLogger("optuna").warning("an optuna warning")
    logging.getLogger("some.other.library").info("an info line of a library we do not know")
    warnings.warn("an ExperimentalWarning-like warning", UserWarning, stacklevel=1)


def test_messages_wait_for_the_run_folder_then_go_to_run_log(tmp_path: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    log_file = RunFolder(run_dir).log_file
    root_before = list(logging.getLogger().handlers)
    with LibraryLog(log_file) as log:
        _speak()  # before the run folder exists: kept in memory, nothing written
        assert not run_dir.exists()
        run_dir.mkdir()
        logging.getLogger("datasets").warning("after the folder appeared")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    text = log_file.read_text()
    for line in ("Custom kwargs", "a transformers warning", "an optuna warning", "an info line",
                 "ExperimentalWarning-like", "after the folder appeared"):
        assert line in text
    assert log.path == run_dir / "run.log" == log_file
    # everything is put back: the libraries' own handlers and the root's
    assert logging.getLogger().handlers == root_before
    logging.getLogger("lm_eval").warning("outside the context")
    assert "outside the context" not in log_file.read_text()


def test_verbose_shows_them_on_the_terminal_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tmp_path.joinpath("run").mkdir()
    log_file = RunFolder(tmp_path / "run").log_file
    with LibraryLog(log_file, verbose=True):
        logging.getLogger("lm_eval.evaluator").warning("shown and logged")
    assert "shown and logged" in capfd.readouterr().err
    assert "shown and logged" in log_file.read_text()


def test_a_crash_before_the_run_folder_keeps_its_context(tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RuntimeError), LibraryLog(RunFolder(tmp_path / "never").log_file):
        logging.getLogger("lm_eval").warning("what happened before the crash")
        raise RuntimeError("boom")
    assert "what happened before the crash" in capfd.readouterr().err
    assert not (tmp_path / "never").exists()
