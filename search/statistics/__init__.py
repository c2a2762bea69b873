"""Per-parent statistics of calibration data for the data-aware merges (fisher, regmean), computed once per run.

- :mod:`~search.statistics.calibration`: the texts (a jsonl file, or an lm-eval task's search documents);
- :mod:`~search.statistics.compute`: the passes on a live model (diagonal empirical Fisher, Gram matrices);
- :mod:`~search.statistics.store`: the files in the run folder (safetensors) and the key that names them;
- :mod:`~search.statistics.run`: compute once or reuse, and attach to the parents.
"""
