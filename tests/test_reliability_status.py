"""Status tells the truth, through the real CLI and real processes: the lock records the live driver and a
refused second driver leaves it untouched; after a kill -9 the run is "stopped (driver not running)" and its
counts agree with its rows; Ctrl-C says how to resume (exit 130); a finished run is not run again."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from reliability_world import cli, counted_trials, finished, make_world, spawn, trials_of, write_space

from search.study.storage import JOURNAL, LOCK, check_journal, driver_of


@pytest.fixture()
def world(tmp_path: Path, family: tuple[Path, list[Path]]) -> Path:
    return make_world(tmp_path, family)


def wait_for(condition, proc, what: str, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before {what}: " \
                                    f"{proc.stderr.read().decode() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def done(run_dir: Path) -> int:
    return len([f for f in finished(run_dir).values() if not f[3].interrupted])


#: Far more trials than the driver can finish while the test polls, however loaded the machine: the kill -9 and
#: the Ctrl-C must land on a running study (with 40, a slow poll once let the resumed run finish and exit 0).
BUDGET = 1000


@pytest.mark.slow
def test_lock_status_kill_and_ctrl_c(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(world, budget={"trials": BUDGET})
    run_dir = world / "run"
    proc = spawn(["start", str(space), "--quiet", "--no-select"], world, SCORE_SLEEP="0.2")
    wait_for(lambda: done(run_dir) >= 1, proc, "a finished trial")
    record = json.loads((run_dir / LOCK).read_text())
    assert record["pid"] == proc.pid and record["host"] and record["started"]
    assert driver_of(run_dir) == record

    code, out = cli(["status", str(run_dir)], capsys)
    assert code == 0 and f"running (pid {proc.pid}" in out, out

    # a second driver is refused at once, and the running one's lock record is left as it was
    lock_bytes = (run_dir / LOCK).read_bytes()
    resolved = (run_dir / "resolved.json").read_bytes()
    code, out = cli(["start", str(space), "--quiet", "--no-select"], capsys)
    assert code == 2 and f"pid {proc.pid}" in out and "is running the study" in out, out
    assert (run_dir / LOCK).read_bytes() == lock_bytes and (run_dir / "resolved.json").read_bytes() == resolved
    assert driver_of(run_dir) == record

    # kill -9 while a trial runs: the run is stopped, not running; the cut-off trial is not a failure
    wait_for(lambda: any(not t.state.is_finished() for t in trials_of(run_dir)), proc, "a running trial")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert driver_of(run_dir) is None
    code, out = cli(["status", str(run_dir)], capsys)
    assert code == 0 and "stopped (driver not running)" in out and "running (pid" not in out, out
    assert "ETA" not in out and f"search resume {run_dir}" in out, out
    trials = trials_of(run_dir)
    cut = sum(t.state.name == "RUNNING" for t in trials)
    assert cut >= 1 and f"{cut} cut off (retried on resume)" in out, out
    n_counted = len(counted_trials(run_dir))
    failed = [t for t in counted_trials(run_dir) if t.state.name == "FAIL"]
    assert f"trials {n_counted}/{BUDGET}" in out and f"failed {len(failed)}" in out, out
    assert out.count("failed #") == len(failed[-5:]), "the failure rows and the failed count disagree"

    # Ctrl-C: the driver marks its trial interrupted, says how to resume, exits 130
    proc = spawn(["resume", str(run_dir), "--quiet", "--no-select"], world, SCORE_SLEEP="0.2")
    before = done(run_dir)
    wait_for(lambda: done(run_dir) > before, proc, "progress after resume")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)  # a generous deadline: a loaded 2-core machine is slow to stop
    text = " ".join(err.decode().split())
    assert proc.returncode == 130, text
    assert f"interrupted; resume with: search resume {run_dir}" in text, text
    assert "Traceback" not in text, text
    trials = trials_of(run_dir)
    assert not [t for t in trials if t.state.name == "RUNNING"], "Ctrl-C left a trial marked running"
    code, out = cli(["status", str(run_dir)], capsys)
    assert code == 0 and "stopped (driver not running)" in out and "interrupted #" in out, out


def test_finished_run_is_not_run_again(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(world, budget={"trials": 2})
    code, out = cli(["start", str(space), "--quiet", "--no-select"], capsys)
    assert code == 0, out
    run_dir = world / "run"
    journal = (run_dir / JOURNAL).read_bytes()
    code, out = cli(["start", str(space), "--quiet", "--no-select"], capsys)
    assert code == 0 and "already reached its budget (2 trials); nothing was run" in out, out
    assert (run_dir / JOURNAL).read_bytes() == journal, "a finished run appended to its journal"
    code, out = cli(["status", str(run_dir)], capsys)
    assert code == 0 and "finished" in out and "2/2 (0 left)" in out, out
    # a torn last record is cut off even when the run turns out finished (nothing appended after it either)
    (run_dir / JOURNAL).write_bytes(journal[:-5])
    code, out = cli(["start", str(space), "--quiet", "--no-select"], capsys)
    assert code == 0 and "last record was torn" in out, out
    assert check_journal(run_dir / JOURNAL).healthy and len(counted_trials(run_dir)) == 2
    # a larger budget resumes it
    code, out = cli(["start", str(write_space(world, budget={"trials": 3})), "--quiet", "--no-select"], capsys)
    assert code == 0 and "3 trials" in out, out
