"""The held-out protocol: families of the default data that differ from training in kind.

A random split scores a model on structures like those it trained on; users run it on others.
The default data (``matscale data generate``) makes, per source, families chosen to be kept
out of training and scored apart, each a different kind of extrapolation:

- ``emt-metals``: surfaces (a coordination never seen in bulk), free clusters (finite
  particles, no periodicity), distorted cells (large forces and short contacts) and the
  hottest MD (1500 K, training stops at 1000 K);
- ``xtb-molecules``: dimers (intermolecular contacts), molecules larger than any in training
  (17–33 atoms, 24 on average, against at most 14) and the hottest MD (1500 K, training stops
  at 800 K);
- ``xtb-main-group`` (the foundation data's molecules with Si, P, S, Cl, Br): the same three
  kinds, its large chains 32–49 atoms against at most 29 in training.

Use it with ``data.holdout_families`` (``matscale train ... data.holdout_families=[surface,
cluster, distorted, md-1500K, dimer, large]``): family names are shared across sources, so
``md-1500K`` leaves both sources' hottest snapshots out. ``benchmarks/peers`` scores every
model on each family here.
"""

from __future__ import annotations

from matscale.data.generate import emt, xtb, xtb_main_group

#: Per source, the families kept out of training and scored one by one.
HELDOUT_FAMILIES: dict[str, tuple[str, ...]] = {
    emt.SOURCE: ("surface", "cluster", "distorted", "md-1500K"),
    xtb.SOURCE: ("dimer", "large", "md-1500K"),
    xtb_main_group.SOURCE: ("dimer", "large", "md-1500K"),
}

#: What each held-out family tests (for tables and reports).
WHAT_IT_TESTS: dict[str, str] = {
    "surface": "slabs with vacuum: coordination never seen in bulk",
    "cluster": "free 13-55-atom particles: finite, not periodic",
    "distorted": "cells strained ±10 % and rattled 0.12-0.22 Å: large forces, short contacts",
    "md-1500K": "the hottest MD snapshots (training stops below)",
    "dimer": "two molecules 2.5-5 Å apart: intermolecular contacts",
    "large": "chains larger than any training molecule of their source",
}


def all_heldout_families() -> tuple[str, ...]:
    """Every held-out family of every source, each once, for ``data.holdout_families``."""
    return tuple(dict.fromkeys(f for fams in HELDOUT_FAMILIES.values() for f in fams))
