"""``matscale data info``: a human-readable summary of a store's statistics."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.data import chemical_symbols

from matscale.data.store import Store, repeats_note

#: Above this force RMS (eV/Å) a source's labels are likely in other units: DFT data near
#: and far from equilibrium runs 0.1–3 eV/Å (the default data: 0.4–1.5), and kcal/mol/Å is
#: 23x, Hartree/Bohr 51x an eV/Å.
IMPLAUSIBLE_FORCE_RMS_EV_PER_A = 10.0

#: Above this spread of energies per atom (eV, the residual of the per-element reference
#: fit, per mean atom count), the energies are likely in other units or of mixed levels of
#: theory (the default data: 0.01–0.1 eV/atom).
IMPLAUSIBLE_ENERGY_RESIDUAL_EV_PER_ATOM = 1.0

#: Fewer atoms of an element than this in a source: its reference energy rests on them
#: alone and a model learns next to nothing of it, yet its head will accept the element.
RARE_ELEMENT_ATOMS = 20


def warnings_about(stats: dict[str, dict[str, Any]]) -> list[str]:
    """What in a store's per-source statistics (``Store.stats``) looks wrong: labels in other
    units than eV and eV/Å, elements a source holds a handful of atoms of."""
    out = []
    for name, st in stats.items():
        rms = st.get("force_rms_eV_per_A")
        if rms is not None and rms > IMPLAUSIBLE_FORCE_RMS_EV_PER_A:
            out.append(
                f"source {name!r}: force RMS {rms:.1f} eV/Å, where DFT data runs 0.1-3: are its "
                "forces in other units (kcal/mol/Å is 23x, Hartree/Bohr 51x an eV/Å)? matscale "
                "reads eV and eV/Å"
            )
        resid = st.get("energy_residual_rms_eV")
        per_atom = resid / max(st["mean_atoms"], 1.0) if resid is not None else None
        if per_atom is not None and per_atom > IMPLAUSIBLE_ENERGY_RESIDUAL_EV_PER_ATOM:
            out.append(
                f"source {name!r}: energies spread {per_atom:.2f} eV/atom about the per-element "
                "fit, where one level of theory spreads ~0.01-0.1: other units than eV, or "
                "several levels of theory under one source?"
            )
        rare = {int(z): n for z, n in st["elements"].items() if n < RARE_ELEMENT_ATOMS}
        if rare:
            listed = ", ".join(
                f"{chemical_symbols[z]} ({n} atoms)" for z, n in sorted(rare.items())
            )
            out.append(
                f"source {name!r}: {listed}: too few to learn from, yet a model trained on it "
                "will accept these elements in its head; drop the records or add data"
            )
    return out


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
    lines += [f"warning: {w}" for w in warnings_about(store.stats)]
    return "\n".join(lines)
