"""A generated block inside a hand-written README, between two HTML comment markers.

>>> write_marked_block(Path("README.md"), "| a | b |", start="<!-- t:start -->", end="<!-- t:end -->",
...                    heading="Table")                                           # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path


def write_marked_block(readme: Path, block: str, *, start: str, end: str, heading: str) -> None:
    """Replace the text between ``start`` and ``end``; append a ``## heading`` section with them when missing."""
    text = readme.read_text() if readme.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{block}\n{end}{tail}"
    else:
        text = f"{text.rstrip()}\n\n## {heading}\n\n{start}\n{block}\n{end}\n"
    readme.write_text(text)
