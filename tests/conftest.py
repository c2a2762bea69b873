from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory):
    """A tiny Llama base and three fine-tunes as HF folders (session-wide; read-only for tests)."""
    from tiny import make_family

    root = tmp_path_factory.mktemp("family")
    return make_family(root, 3)


@pytest.fixture()
def single_thread():
    """One intra-op torch thread: tiny tensors on a shared 2-core machine run several times faster so."""
    from selection_world import one_thread

    with one_thread():
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, family: tuple[Path, list[Path]]) -> Path:
    """A finished tiny Pareto study with its selection (built once per session, shared read-only)."""
    from selection_world import selected_run

    return selected_run(tmp_path_factory.mktemp("sel"), family)
