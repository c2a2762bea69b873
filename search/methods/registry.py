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
from search.methods.checkpoints import CHECKPOINT_AVERAGE, CHECKPOINT_EMA, LAWA
from search.methods.data_aware import FISHER, REGMEAN
from search.methods.iso import ISO_C, ISO_CTS
from search.methods.linear import LINEAR
from search.methods.magmax import MAGMAX
from search.methods.model_stock import MODEL_STOCK
from search.methods.pairwise import ARCEE_FUSION, NEARSWAP
from search.methods.passthrough import PASSTHROUGH
from search.methods.ram import RAM, RAMPLUS_TL
from search.methods.sce import SCE
from search.methods.slerp import SLERP
from search.methods.spherical import KARCHER, MULTISLERP, NUSLERP
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
        # mergekit 0.1.5's newer methods
        NUSLERP,
        MULTISLERP,
        KARCHER,
        SCE,
        RAM,
        RAMPLUS_TL,
        NEARSWAP,
        ARCEE_FUSION,
        PASSTHROUGH,
        # beyond mergekit: tested against their papers' equations
        TSV,
        ISO_C,
        ISO_CTS,
        MAGMAX,
        CHECKPOINT_AVERAGE,
        CHECKPOINT_EMA,
        LAWA,
        # data-aware: read per-parent statistics of the space's calibration data (search.statistics)
        FISHER,
        REGMEAN,
    )
}

# The methods mergekit 0.1.5 also has (same name, parameters, defaults): `search merge` agrees with mergekit to
# <= 1e-5 in float32 on each (tests/test_merge_vs_mergekit.py, tests/test_methods_mergekit_015.py).
MERGEKIT_METHODS: frozenset[str] = frozenset({
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs", "breadcrumbs_ties",
    "della", "della_linear", "model_stock", "nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl",
    "nearswap", "arcee_fusion", "passthrough",
})


def get_method(name: str) -> MergeMethod:
    """The method called ``name``; a UserError naming the known methods (and a near miss) otherwise."""
    method = METHODS.get(name)
    if method is not None:
        return method
    known = ", ".join(METHODS)
    close = difflib.get_close_matches(str(name), list(METHODS), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? Known methods: {known}" if close else f"use one of: {known}"
    raise UserError(f"unknown merge method '{name}'", field="merge_method", fix=hint)
