"""Export: selected models as Hugging Face folders, each with its mergekit recipe.

>>> from search.export import export_run                        # doctest: +SKIP
>>> export_run("results/demo", "best")                           # doctest: +SKIP
"""

from search.export.folder import export_run

__all__ = ["export_run"]
