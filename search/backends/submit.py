"""``search submit``: run a space on a Ray cluster as a Ray Job.

The job's driver runs ``search start SPACE --address auto`` on the cluster, with this package shipped in the
runtime environment (``py_modules``), so the cluster runs the same code as the submitter. Model paths, the space
file and the run folder must be on storage every node reaches (a shared folder); the study storage is the
journal file in the run folder, or the ``storage:`` URL of the space (PostgreSQL for many nodes).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from search.config.space import LoadedSpace

PACKAGE_DIRS = ("search", "evaluators")


def submit_run(loaded: LoadedSpace, address: str) -> tuple[str, str]:
    """Submit; return the job id and the commands to follow it."""
    from ray.job_submission import JobSubmissionClient

    import evaluators
    import search

    space_file = Path(loaded.file).resolve()
    entrypoint = " ".join(shlex.quote(a) for a in (
        "python", "-m", "search.cli", "start",
        str(space_file), "--address", "auto", "--output", str(Path(loaded.output).resolve()), "--quiet"))
    runtime_env = {
        "py_modules": [str(Path(search.__file__).parent), str(Path(evaluators.__file__).parent)],
        "excludes": ["demo/models", "__pycache__", "*.pyc"],
        "env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    }
    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    follow = (f"follow it:  ray job logs --address {address} --follow {job_id}\n"
              f"progress:   search status {Path(loaded.output).resolve()}")
    return job_id, follow
