"""``matscale data info``: a human-readable summary of a store's statistics."""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from matscale.data.store import Store, repeats_note


def describe(store: Store) -> str:
    """Multi-line text: size, per-source statistics (units in the headers), families, skips."""
    m = store.meta
    lines = [
        f"store {store.path}: {m['n_structures']:,} structures, {m['n_atoms']:,} atoms, "
        f"{len(m['shards'])} shards, {m['bytes'] / 2**20:,.1f} MiB, cutoff {store.cutoff} Å",
        "",
        f"{'source':<16}{'structs':>9}{'atoms/str':>10}{'neigh/atom':>11}"
        f"{'F rms eV/Å':>11}{'E resid eV':>11}{'stress':>8}  elements",
    ]
    for name, st in store.stats.items():
        elements = " ".join(chemical_symbols[int(z)] for z in st["elements"])
        lines.append(
            f"{name:<16}{st['structures']:>9,}{st['mean_atoms']:>10.1f}"
            f"{st['mean_neighbours']:>11.1f}{st.get('force_rms_eV_per_A', float('nan')):>11.3f}"
            f"{st.get('energy_residual_rms_eV', float('nan')):>11.3f}{st['with_stress']:>8,}"
            f"  {elements}"
        )
    if store.labelled_by:
        lines += ["", "labelled by a model (a teacher), not by a reference calculation:"]
        lines += [f"  {name}: {who}" for name, who in store.labelled_by.items()]
    lines += ["", "reference energies (eV/atom, least squares per source):"]
    for name, st in store.stats.items():
        refs = ", ".join(
            f"{chemical_symbols[int(z)]} {e:.3f}" for z, e in st["reference_energy_eV"].items()
        )
        lines.append(f"  {name}: {refs}")
        loose = len(st["reference_energy_eV"]) - st.get("reference_energy_rank", 10**9)
        if loose > 0:  # stores packed before the rank was recorded say nothing
            lines.append(
                f"    ({loose} of these {'is' if loose == 1 else 'are'} fixed only in "
                "combination with others: those elements' counts never vary apart in this "
                "source, so their split is the least-squares minimum norm, not a measurement)"
            )
    by_source: dict[str, list[str]] = {}
    src = np.asarray(store.source_ids)
    fam = np.asarray(store.family_ids)
    for s, name in enumerate(store.sources):
        per = np.bincount(fam[src == s], minlength=len(store.families))
        by_source[name] = [
            f"{store.families[f] or '(none)'} {per[f]:,}" for f in np.nonzero(per)[0]
        ]
    lines += ["", "families:"] + [f"  {name}: {', '.join(v)}" for name, v in by_source.items()]
    if m["skipped"]:
        lines += [
            "",
            "skipped while packing: " + ", ".join(f"{k} {v:,}" for k, v in m["skipped"].items()),
        ]
    if note := repeats_note(m):
        lines += ["", note]
    return "\n".join(lines)
