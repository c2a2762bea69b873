"""Selection: from a finished (or interrupted) study to a winner picked on select, reported on test.

>>> from search.selection import select_run, read_selection    # doctest: +SKIP
>>> select_run("results/demo").winner                            # doctest: +SKIP
'greedy-soup'
"""

from search.selection.record import Item, Options, Part, Selection, read_selection
from search.selection.select import select_run

__all__ = ["Item", "Options", "Part", "Selection", "read_selection", "select_run"]
