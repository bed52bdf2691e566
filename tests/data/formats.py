"""Writers of small files in each public format, as the real datasets lay them out.

They are written here, from the format descriptions, so that the readers are tested against
files the tests make (no download).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import h5py
import lmdb
import numpy as np
import orjson

from matscale.data.structure import Structure, voigt_to_matrix
from matscale.units import HARTREE_EV, KBAR_EV_PER_A3


def write_aselmdb(path: Path, structures: list[Structure]) -> None:
    """fairchem's ASE-LMDB: ids 1..n as ASCII keys, zlib(orjson(row dict)), plus nextid."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 30, meminit=False)
    with env.begin(write=True) as txn:
        for k, s in enumerate(structures, start=1):
            row = {
                "numbers": s.numbers,
                "positions": s.positions,
                "cell": s.cell,
                "pbc": s.pbc,
                "energy": s.energy,
                "forces": s.forces,
                "stress": s.stress,
                "calculator": "unknown",
                "ctime": 23.0,
                "mtime": 23.0,
                "user": "test",
                "key_value_pairs": {"sid": k},
                "data": {},
            }
            row = {k2: v for k2, v in row.items() if v is not None}
            txn.put(
                str(k).encode("ascii"),
                zlib.compress(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)),
            )
        txn.put(b"nextid", zlib.compress(orjson.dumps(len(structures) + 1)))
    env.close()


def write_ani_h5(path: Path, groups: dict[str, list[Structure]], symbols: bool = False) -> None:
    """ANI-1x layout: one group per formula with coordinates [c, n, 3] Å, atomic_numbers (or
    species symbols), energies [c] Hartree and forces [c, n, 3] Hartree/Å."""
    from ase.data import chemical_symbols

    with h5py.File(path, "w") as f:
        for name, confs in groups.items():
            g = f.create_group(name)
            g["coordinates"] = np.stack([s.positions for s in confs])
            if symbols:
                g["species"] = np.array([chemical_symbols[z].encode() for z in confs[0].numbers])
            else:
                g["atomic_numbers"] = confs[0].numbers
            g["wb97x_dz.energy"] = np.array([s.energy for s in confs]) / HARTREE_EV
            g["wb97x_dz.forces"] = np.stack([s.forces for s in confs]) / HARTREE_EV


def write_mptrj(path: Path, materials: dict[str, list[Structure]]) -> None:
    """MPtrj JSON: {mp_id: {frame_id: {structure (pymatgen dict), energies, force, stress}}},
    stress in kbar with VASP's sign (the negative of ASE's)."""
    from ase.data import chemical_symbols

    doc = {}
    for mp_id, frames in materials.items():
        doc[mp_id] = {}
        for k, s in enumerate(frames):
            frac = np.linalg.solve(s.cell.T, s.positions.T).T
            doc[mp_id][f"{mp_id}-{k}-0"] = {
                "structure": {
                    "@module": "pymatgen.core.structure",
                    "@class": "Structure",
                    "charge": 0,
                    "lattice": {"matrix": s.cell.tolist(), "pbc": [True, True, True]},
                    "sites": [
                        {
                            "species": [{"element": chemical_symbols[z], "occu": 1}],
                            "abc": f.tolist(),
                            "xyz": p.tolist(),
                            "label": chemical_symbols[z],
                            "properties": {},
                        }
                        for z, f, p in zip(s.numbers, frac, s.positions, strict=True)
                    ],
                },
                "uncorrected_total_energy": s.energy,
                "corrected_total_energy": s.energy - 1.0,
                "energy_per_atom": s.energy / s.n_atoms,
                "force": s.forces.tolist(),
                "stress": (-voigt_to_matrix(s.stress) / KBAR_EV_PER_A3).tolist(),
                "magmom": None,
                "mp_id": mp_id,
            }
    path.write_text(json.dumps(doc, indent=1))
