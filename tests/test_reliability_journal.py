"""A run survives what a crash leaves behind, through the real CLI and real Optuna journals:

- SIGKILL at seeded random points of a running driver (between and during journal writes; a kill during a write
  is also made certain by tearing the last record at a random byte), then resume: no finished trial lost or
  changed, no proposal repeated, the budget reached;
- a torn last record (a trial's final write) at a sample of its byte offsets: status still reads the run, resume
  cuts the torn bytes off (keeping the original as a backup) and goes on;
- damage in the middle (what older versions left after appending to a torn record): refused with the repair
  command, which recovers around it.

Each test prints how many cases it tried.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
from reliability_world import (
    assert_no_proposal_repeated,
    cli,
    counted_trials,
    finished,
    make_world,
    spawn,
    trials_of,
    write_space,
)

from search.config.space import load_space
from search.study.loop import run_study
from search.study.storage import JOURNAL, check_journal, journal_backend

SEED = 20261128


@pytest.fixture()
def world(tmp_path: Path, family: tuple[Path, list[Path]]) -> Path:
    return make_world(tmp_path, family)


def report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[reliability] {text}")


def last_record(journal: Path) -> tuple[int, int]:
    """(byte offset where the journal's last record starts, its length including the newline)."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    return start, len(data) - start


def last_tell(journal: Path) -> tuple[int, int]:
    """(offset, length) of the last record that finishes a trial (Optuna's SET_TRIAL_STATE_VALUES, op 6): a kill
    inside that write leaves the trial running and nothing after it."""
    data = journal.read_bytes()
    start = data.rfind(b'\n{"op_code":6,') + 1
    return start, data.index(b"\n", start) + 1 - start


def tear(journal: Path, keep: int) -> bytes:
    """Cut the journal to ``keep`` bytes, as a kill or a full disk during a write leaves it; returns the rest."""
    data = journal.read_bytes()
    journal.write_bytes(data[:keep])
    return data[keep:]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(SEED)
    budget, rounds = 10, 4
    space = write_space(world, budget={"trials": budget})
    run_dir = world / "run"
    seen: dict[int, tuple] = {}
    kills = tears = 0
    for _ in range(rounds):
        proc = spawn(["start", str(space), "--quiet", "--no-select"], world, SCORE_SLEEP="0.02")
        before = len([n for n, f in finished(run_dir).items() if not f[3].interrupted])
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:  # each round makes some progress first
            if len([n for n, f in finished(run_dir).items() if not f[3].interrupted]) > before:
                break
            time.sleep(0.1)
        assert time.monotonic() < deadline, "the driver made no progress"
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
            break
        time.sleep(rng.uniform(0.0, 0.5))  # lands between writes or inside a burst of them
        if proc.poll() is not None:  # it reached the budget meanwhile
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        if rng.random() < 0.4:  # a kill inside write(): the last record is cut at a random byte
            start, length = last_record(world / "run" / JOURNAL)
            tear(run_dir / JOURNAL, start + rng.randrange(1, length))
            tears += 1
        now = finished(run_dir)
        for number, facts in seen.items():
            assert now.get(number) == facts, f"finished trial {number} was lost or changed after a kill"
        seen = now
    code, out = cli(["resume", str(run_dir), "--quiet", "--no-select"], capsys)
    assert code == 0, out
    after = finished(run_dir)
    for number, facts in seen.items():
        assert after.get(number) == facts, f"finished trial {number} was lost or changed"
    trials = trials_of(run_dir)
    assert len(counted_trials(run_dir)) == budget, "the resumed run reaches its budget"
    assert not [t for t in trials if not t.state.is_finished()], "a trial was left running or waiting"
    assert_no_proposal_repeated(trials)
    assert check_journal(run_dir / JOURNAL).healthy
    code, out = cli(["status", str(run_dir)], capsys)
    assert code == 0 and "finished" in out and f"{budget}/{budget}" in out, out
    report(capsys, f"SIGKILL then resume: {kills} kills ({tears} inside a write, torn at a random byte), "
                   f"{len(trials)} trials, {len(seen)} finished before the last resume, 0 lost or changed")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory, family: tuple[Path, list[Path]]) -> Path:
    """A finished 4-trial run (made once), copied by each test that tears it."""
    root = make_world(tmp_path_factory.mktemp("torn"), family)
    run_study(load_space(write_space(root, budget={"trials": 4})), progress=False)
    return root


def copy_run(done: Path, to: Path) -> Path:
    shutil.copytree(done, to)
    return to / "run"


def test_torn_last_record_at_sampled_offsets(done_run: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    journal = done_run / "run" / JOURNAL
    start, length = last_tell(journal)
    rng = random.Random(SEED)
    offsets = sorted({1, length - 1, *rng.sample(range(2, length - 1), min(22, length - 3))})
    pristine = finished(done_run / "run")
    for offset in offsets:
        run_dir = copy_run(done_run, tmp_path / f"cut{offset}")
        cut = tear(run_dir / JOURNAL, start + offset)
        torn = (run_dir / JOURNAL).read_bytes()
        code, out = cli(["status", str(run_dir)], capsys)  # read-only: the torn tail is skipped, not repaired
        assert code == 0 and "stopped (driver not running)" in out, out
        assert (run_dir / JOURNAL).read_bytes() == torn
        code, out = cli(["resume", str(run_dir), "--quiet", "--no-select"], capsys)
        assert code == 0, f"offset {offset}: {out}"
        assert "last record was torn" in out and f"cut off its {offset} bytes" in out, out  # (the torn part)
        backups = list(run_dir.glob(JOURNAL + ".torn-*"))
        assert len(backups) == 1 and backups[0].read_bytes() == torn, "the original is kept beside the journal"
        assert check_journal(run_dir / JOURNAL).healthy, f"offset {offset}: the journal is not whole"
        after = finished(run_dir)
        # every trial finished before the tear is unchanged, except the one whose last write was torn: it is
        # failed as interrupted and retried (its outcome was never durable)
        lost = [n for n in pristine if after.get(n) != pristine[n]]
        assert len(lost) <= 1, f"offset {offset}: trials {lost} changed"
        for n in lost:
            assert after[n][3].interrupted, f"offset {offset}: trial {n} changed without being retried"
        assert len(counted_trials(run_dir)) == 4, f"offset {offset}: the budget is not reached"
        assert_no_proposal_repeated(trials_of(run_dir))
        assert len(cut) >= length - offset
    report(capsys, f"torn last record: {len(offsets)} byte offsets of a trial's final {length}-byte record "
                   f"({offsets[0]}..{offsets[-1]}), each resumed to the budget, 0 finished trials lost")


def test_damage_in_the_middle_is_refused_then_repaired(done_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy_run(done_run, tmp_path / "old")
    journal = run_dir / JOURNAL
    start, length = last_record(journal)
    tear(journal, start + length // 2)
    # what older versions did next: append after the torn bytes (Optuna's own writer, no repair first)
    storage = optuna.storages.JournalStorage(journal_backend(journal))
    study = optuna.load_study(study_name="merge-search", storage=storage)
    study.set_user_attr("appended_after_the_tear", 1)  # the next read of this journal fails in Optuna
    health = check_journal(journal)
    assert health.damaged and health.torn_tail is None
    damaged = journal.read_bytes()
    for args in (["status", str(run_dir)], ["trials", str(run_dir)], ["resume", str(run_dir), "--quiet"]):
        code, out = cli(args, capsys)
        assert code == 2, out
        assert "damaged record" in out and f"search repair {run_dir}" in out, out
        assert journal.read_bytes() == damaged, "a refused command changed the journal"
    code, out = cli(["repair", str(run_dir)], capsys)
    assert code == 0 and "1 recovered after torn bytes" in out and "damaged-" in out, out
    assert check_journal(journal).healthy
    assert list(run_dir.glob(JOURNAL + ".damaged-*"))[0].read_bytes() == damaged
    study = optuna.load_study(study_name="merge-search", storage=optuna.storages.JournalStorage(
        journal_backend(journal)))
    assert study.user_attrs["appended_after_the_tear"] == 1
    code, out = cli(["resume", str(run_dir), "--quiet", "--no-select"], capsys)
    assert code == 0, out
    assert len(counted_trials(run_dir)) == 4
    code, out = cli(["repair", str(run_dir)], capsys)
    assert code == 0 and "nothing to repair" in out, out


def test_resume_draws_new_proposals(world: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a sampler re-created with the space's seed on resume would replay its first random proposals
    for budget in (2, 4, 5):
        code, out = cli(["start", str(write_space(world, budget={"trials": budget})), "--quiet", "--no-select"],
                        capsys)
        assert code == 0, out
    trials = trials_of(world / "run")
    assert len(trials) == 5
    assert_no_proposal_repeated(trials)
