"""What every benchmark starts with. Importing it puts the checkout on ``sys.path`` and keeps the hubs offline;
:func:`library_log` sends the libraries' messages (lm-eval, transformers, datasets, Optuna, Ray) to a log file
under ``results/bench/`` so that the terminal shows only the benchmark's own lines, as ``search start`` does.

    from common import ROOT, library_log   # bench/ is the script's folder, so it is on sys.path

    if __name__ == "__main__":
        with library_log("search_quality"):
            main()
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                      ("TQDM_DISABLE", "1")):  # lm-eval draws a tqdm bar per call; the bench prints its own lines
    os.environ.setdefault(_name, _value)

LOG_DIR = ROOT / "results" / "bench"


def library_log(name: str, *, verbose: bool = False):  # type: ignore[no-untyped-def]
    """The libraries' messages of this benchmark go to ``results/bench/<name>.log`` while the context is active."""
    from search.console import LibraryLog

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    print(f"(the libraries' messages: {LOG_DIR / f'{name}.log'})", file=sys.stderr)
    return LibraryLog(LOG_DIR / f"{name}.log", verbose=verbose)
