"""The morning report of a run: report.html (plots embedded), report.md and report_files/*.png.

>>> from search.report import render_report                     # doctest: +SKIP
>>> render_report("results/demo")                                # doctest: +SKIP
"""

from search.report.render import render_report

__all__ = ["render_report"]
