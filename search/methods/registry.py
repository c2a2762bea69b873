"""Every merge method by name, in reading order.

>>> get_method("ties").param("density").default
1.0
>>> get_method("tiez")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
search.errors.UserError: field 'merge_method': unknown merge method 'tiez'. Fix: did you mean 'ties'? ...
"""

from __future__ import annotations

import difflib

from search.errors import UserError
from search.methods.base import MergeMethod
from search.methods.iso import ISO_C, ISO_CTS
from search.methods.linear import LINEAR
from search.methods.magmax import MAGMAX
from search.methods.model_stock import MODEL_STOCK
from search.methods.slerp import SLERP
from search.methods.task_arithmetic import (
    BREADCRUMBS,
    BREADCRUMBS_TIES,
    DARE_LINEAR,
    DARE_TIES,
    DELLA,
    DELLA_LINEAR,
    TASK_ARITHMETIC,
    TIES,
)
from search.methods.tsv import TSV

METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        LINEAR,
        TASK_ARITHMETIC,
        TIES,
        DARE_LINEAR,
        DARE_TIES,
        SLERP,
        BREADCRUMBS,
        BREADCRUMBS_TIES,
        DELLA,
        DELLA_LINEAR,
        MODEL_STOCK,
        TSV,
        ISO_C,
        ISO_CTS,
        MAGMAX,
    )
}


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a UserError naming the known methods (and a near miss) otherwise."""
    method = METHODS.get(name)
    if method is not None:
        return method
    known = ", ".join(METHODS)
    close = difflib.get_close_matches(str(name), list(METHODS), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? Known methods: {known}" if close else f"use one of: {known}"
    raise UserError(f"unknown merge method '{name}'", field="merge_method", fix=hint)
