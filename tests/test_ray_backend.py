"""The Ray backend against a real local Ray cluster (loopback only), and the embedded default."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from optuna.trial import TrialState

from search.cli import main
from search.study.storage import STUDY_NAME, open_storage

VENV_BIN = str(Path(sys.executable).parent)
RAY = str(Path(VENV_BIN) / "ray")
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

SLOW = '''
import time, torch
def score(model, tokenizer, docs):
    time.sleep(0.3)
    with torch.no_grad():
        return {"score": float(model.lm_head.weight.abs().mean())}
'''

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(temp_dir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[dict[str, str]]:
    """A Ray head on loopback with its own temp dir and ports; stopped by killing only its own processes."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's unix sockets live under it
    gcs, dash, client = free_port(), free_port(), free_port()
    env = {**os.environ, **LOOPBACK_ENV, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                    "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                    "--min-worker-port=30000", "--max-worker-port=30999"],
                   env=env, check=True, capture_output=True)
    yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "temp_dir": temp_dir, "env": env}
    procs = cluster_processes(temp_dir)
    for proc in procs:
        proc.kill()
    psutil.wait_procs(procs, timeout=20)
    shutil.rmtree(temp_dir, ignore_errors=True)


def write_space(root: Path, family: tuple[Path, list[Path]], **changes: object) -> Path:
    base, fts = family
    (root / "slow_eval.py").write_text(SLOW)
    (root / "docs.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(10)))
    space = {
        "base_model": str(base), "models": {"a": str(fts[0]), "b": str(fts[1])},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.5]}},
        "objectives": [{"name": "s", "evaluator": {"type": "python", "function": "slow_eval.py:score",
                                                   "data": "docs.jsonl"}, "metric": "score"}],
        "pruner": {"name": "none", "slices": [0.5, 1.0]}, "baselines": False,
        "budget": {"trials": 6}, "resources": {"workers": 2}, "output": "run",
    }
    space.update(changes)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def trials_of(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir)).get_trials(deepcopy=False)


def test_run_through_address(ray_cluster: dict, family: tuple[Path, list[Path]], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in LOOPBACK_ENV.items():
        monkeypatch.setenv(key, value)
    space = write_space(tmp_path, family)
    main(["start", str(space), "--address", ray_cluster["gcs"], "--quiet", "--no-select"])
    trials = trials_of(tmp_path / "run")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 6
    assert cluster_processes(ray_cluster["temp_dir"]), "the cluster keeps running after the driver leaves"


def test_submit_as_ray_job(ray_cluster: dict, family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    space = write_space(tmp_path, family, budget={"trials": 3})
    proc = subprocess.run([sys.executable, "-m", "search.cli", "submit", str(space), "--address",
                           ray_cluster["dashboard"]], env=ray_cluster["env"], capture_output=True, text=True,
                          check=True)
    job_id = next(line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("submitted job"))
    assert "ray job logs" in proc.stdout and "search status" in proc.stdout
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ray_cluster["dashboard"])
    deadline = time.monotonic() + 240
    while client.get_job_status(job_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(1)
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-2000:]
    status = subprocess.run([sys.executable, "-m", "search.cli", "status", str(tmp_path / "run")],
                            capture_output=True, text=True, check=True)
    assert "3/3" in status.stdout


def test_killed_actor_costs_only_its_candidate(ray_cluster: dict, family: tuple[Path, list[Path]],
                                               tmp_path: Path) -> None:
    space = write_space(tmp_path, family, budget={"trials": 10})
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "start", str(space), "--address",
                             ray_cluster["gcs"], "--quiet", "--no-select"], env=ray_cluster["env"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 180
    victim = None
    while time.monotonic() < deadline and victim is None:
        time.sleep(0.3)
        if (run_dir / "study.journal").exists() and sum(t.state.is_finished() for t in trials_of(run_dir)) >= 2:
            actors = [child for p in cluster_processes(ray_cluster["temp_dir"]) if "raylet" in p.name()
                      for child in p.children(recursive=True) if "_WorkerActor" in " ".join(child.cmdline())]
            if actors:
                victim = actors[0]
    assert victim is not None, "no actor process found"
    victim.kill()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()[-3000:]
    trials = trials_of(run_dir)
    lost = [t for t in trials if "worker died" in str(t.user_attrs.get("fail_reason", ""))]
    assert lost, [t.user_attrs.get("fail_reason") for t in trials]
    for t in lost:
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, "a lost candidate is retried once"
        assert retries[0].params == t.params
    counted = [t for t in trials if t.state.is_finished() and not t.user_attrs.get("interrupted")]
    assert len(counted) == 10


def test_embedded_needs_no_cluster_and_leaves_nothing(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    space = write_space(tmp_path, family, backend="ray", budget={"trials": 3})
    proc = subprocess.run([sys.executable, "-m", "search.cli", "start", str(space), "--quiet", "--no-select"],
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sum(t.state == TrialState.COMPLETE for t in trials_of(tmp_path / "run")) == 3
    ray_dir = tmp_path / "run" / "ray"
    sessions = list(ray_dir.glob("session_*"))
    assert sessions, "the embedded Ray keeps its temp folder (logs, sockets) under the run folder"
    links = [p for p in Path(tempfile.gettempdir()).glob("ms-ray-*") if p.is_symlink() and p.resolve() == ray_dir]
    time.sleep(1)
    for path in [ray_dir, *links]:
        assert not cluster_processes(str(path)), "embedded Ray left processes behind"


def test_inprocess_never_imports_ray(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    space = write_space(tmp_path, family, budget={"trials": 1}, resources={})
    code = ("import sys; from search.cli import main\n"
            f"main(['start', {str(space)!r}, '--quiet'])\n"
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NO_RAY" in proc.stdout


def test_data_aware_statistics_are_computed_once_and_read_by_every_actor(
    ray_cluster: dict, family: tuple[Path, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 15: the first actor computes the regmean Grams once into the run folder; the other reads the file
    (a trial on an actor without them would fail), so every trial completes and one statistics file exists."""
    for key, value in LOOPBACK_ENV.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "calib.jsonl").write_text("".join(json.dumps({"text": f"abc {i} def"}) + "\n" for i in range(6)))
    space = write_space(tmp_path, family, methods={"regmean": {"alpha": [0.2, 1.0]}},
                        calibration={"jsonl": "calib.jsonl", "documents": 6, "max_length": 16},
                        budget={"trials": 4})
    main(["start", str(space), "--address", ray_cluster["gcs"], "--quiet", "--no-select"])
    trials = trials_of(tmp_path / "run")
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 4, [t.user_attrs.get("fail_reason")
                                                                       for t in trials]
    assert [p.name.split("-")[0] for p in (tmp_path / "run" / "statistics").iterdir()] == ["gram"]
