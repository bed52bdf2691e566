"""Readers: each turns one file of a public format into a stream of :class:`Structure`.

=============== ================================ =============================================
format          files                            units converted
=============== ================================ =============================================
``ase``         anything ``ase.io`` reads        none (ASE files are in eV, Å); extxyz first
                (extxyz, xyz, POSCAR, cif, ...)
``ase-db``      ASE database (``.db``, sqlite)   none
``aselmdb``     fairchem's ASE-LMDB (OC20/OC22)  none
``ani-h5``      ANI-1x-style HDF5                energy Hartree → eV, forces Hartree/Å → eV/Å
``mptrj``       MPtrj JSON                       stress kbar (VASP sign) → eV/Å³ (ASE sign)
``adios``       HydraGNN's ADIOS2 datasets       none (eV, Å as HydraGNN stores them); see
                (``NAME.bp`` folders)            :mod:`matscale.data.adios`
=============== ================================ =============================================

A reader never validates physics (the packer does, with :func:`check_structure`); it raises
:class:`DataError` naming the file and record when a record cannot be parsed at all.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.adios import read_adios
from matscale.data.jsonstream import iter_json_object
from matscale.data.structure import Structure, stress_to_voigt
from matscale.errors import DataError
from matscale.units import ENERGY_UNITS, KBAR_EV_PER_A3

Reader = Callable[..., Iterator[Structure]]


def read_ase(
    path: str | Path,
    *,
    source: str,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
) -> Iterator[Structure]:
    """Read every frame of a file ``ase.io`` understands (extxyz first of all).

    The labels come from the frame's calculator (``energy``, ``forces``, ``stress``, as extxyz
    stores them) or, failing that, from ``atoms.info['energy']`` / ``atoms.arrays['forces']``.
    Other keys (MACE's ``REF_energy``, ``REF_forces``, ``REF_stress``, say): ``energy_key``,
    ``forces_key``, ``stress_key`` (``--reader-option energy_key=REF_energy`` on the command
    line); a key given this way is read from ``info``/``arrays`` only, never from the
    calculator, whose ``energy`` would be another label. Units stay eV, eV/Å, eV/Å³.
    ``atoms.info['source']`` overrides ``source``; ``atoms.info['family']`` sets the family.
    """
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    import ase.io

    path = str(path)
    if Path(path).stat().st_size == 0:  # e.g. a generated chunk whose every SCF failed
        return
    frames = ase.io.iread(path, index=":", format=format)
    i = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as exc:  # ase raises many kinds for a malformed file
            raise DataError(f"cannot parse ({_parse_problem(exc)})", file=path, record=i) from exc
        if i == 0 and (unread := unread_labels(atoms, keys)) and str(unread) not in _NOTED:
            _NOTED.add(str(unread))  # once per process: a folder of chunks would repeat it
            options = " ".join(f"--reader-option {k}_key={v}" for k, v in unread.items())
            print(
                f"note: {path}: keys {sorted(unread.values())} look like labels and are not "
                f"read ({options} reads them)",
                file=sys.stderr,
            )
        yield atoms_to_structure(
            atoms, source=source, key=f"{path}#{i}", file=path, record=i, keys=keys
        )
        i += 1


def unread_labels(atoms: Any, keys: dict[str, str]) -> dict[str, str]:
    """Labels (``energy``, ``forces``, ``stress``) that ``atoms`` lacks under ``keys`` but
    seems to hold under another key ending in the label's name (``REF_forces``,
    ``dft_energy``): {label: that key}. A MACE file packed with ``energy_key`` alone lost its
    forces and stress without a word."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    found: dict[str, str] = {}
    for label, store in (("energy", atoms.info), ("forces", atoms.arrays), ("stress", atoms.info)):
        key = keys[label]
        if store.get(key) is not None or (key == label and label in results):
            continue
        others = [k for k in store if k != key and k.lower().endswith(label)]
        if others:
            found[label] = others[0]
    return found


#: The unread label keys :func:`read_ase` has noted in this process.
_NOTED: set[str] = set()


def _parse_problem(exc: Exception) -> str:
    """ASE's parse error in words: its bare ``KeyError: 'Xx'`` is an element symbol it does
    not know; an assertion often carries no message at all."""
    said = str(exc)
    if isinstance(exc, KeyError) and exc.args and str(exc.args[0]).isalpha():
        return f"unknown element symbol {exc.args[0]!r}"
    return f"{type(exc).__name__}: {said}" if said else f"{type(exc).__name__} in ASE's reader"


def _label(value: Any, convert: Callable[[Any], Any], field: str, file: str | None,
           record: int | None) -> Any:  # fmt: skip
    """``convert(value)`` (None stays None), or a DataError naming the label's field."""
    try:
        return None if value is None else convert(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"not a number ({exc})", file=file, record=record, field=field) from None


def _array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


#: How far below 1 a site's occupancy may be and still count as full: CIFs round (0.999).
FULL_OCCUPANCY = 0.99


def occupancy_problem(info: dict[str, Any]) -> str | None:
    """Why an ``ase.Atoms`` with this ``info`` is no structure a model computes, or None: ASE
    reads a CIF's partly occupied sites (a disordered alloy, vacancies) as one species at full
    occupancy, keeping the occupancies in ``info["occupancy"]`` ({site tag: {symbol: share}});
    the model would compute another material without a word."""
    sites = info.get("occupancy")
    if not isinstance(sites, dict):
        return None
    for tag, shares in sites.items():
        if not isinstance(shares, dict):
            continue
        if len(shares) > 1 or any(float(x) < FULL_OCCUPANCY for x in shares.values()):
            held = ", ".join(f"{el} {float(x):g}" for el, x in shares.items())
            return (
                f"site {tag} is partly occupied ({held}): a disordered structure, which ASE "
                "reads as one species per site; order it first (a supercell with one species "
                "on every site, e.g. a special quasirandom structure)"
            )
    return None


#: Where an ``ase.Atoms`` keeps each label by default: the calculator's result, else
#: ``info`` (energy, stress) or ``arrays`` (forces) under the same name.
LABEL_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def atoms_to_structure(
    atoms: Any,
    *,
    source: str,
    key: str = "",
    file: str | None = None,
    record: int | None = None,
    keys: dict[str, str] | None = None,
) -> Structure:
    """Convert an ``ase.Atoms`` (with calculator results or info/arrays labels) to a Structure.
    ``keys``: the info/arrays key of each label (:data:`LABEL_KEYS` by default); a label
    under another key than its default is read from info/arrays alone."""
    if why := occupancy_problem(atoms.info):
        raise DataError(why, file=file, record=record, field="occupancy")
    keys = {**LABEL_KEYS, **(keys or {})}
    results: dict[str, Any] = {}
    if atoms.calc is not None:
        results = dict(getattr(atoms.calc, "results", {}))

    def found(label: str, store: dict[str, Any]) -> Any:
        if keys[label] != LABEL_KEYS[label]:
            return store.get(keys[label])
        return results.get(label, store.get(label))

    energy = _label(found("energy", atoms.info), float, keys["energy"], file, record)
    forces = _label(found("forces", atoms.arrays), _array, keys["forces"], file, record)
    stress = _label(found("stress", atoms.info), stress_to_voigt, keys["stress"], file, record)
    try:
        return Structure(
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=np.float64),
            cell=np.asarray(atoms.cell[:], dtype=np.float64),
            pbc=np.asarray(atoms.pbc, dtype=bool),
            energy=energy,
            forces=forces,
            stress=stress,
            source=str(atoms.info.get("source", source)),
            family=str(atoms.info.get("family", "")),
            key=key,
            labelled_by=str(atoms.info.get("labelled_by", "")),
        )
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad label: {exc}", file=file, record=record) from exc


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_MAGIC = b"SQLite format 3\x00"


def read_ase_db(path: str | Path, *, source: str) -> Iterator[Structure]:
    """Read every row of an ASE database (``ase.db.connect``)."""
    import ase.db

    path = str(path)
    if not Path(path).exists():
        raise DataError("no such file", file=path)
    # ase.db.connect writes: it makes the tables of an empty file (0 → 69,632 bytes) and a
    # lock file beside it. Reading must never modify a user's input: check first, no lock.
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head != SQLITE_MAGIC:
        what = "the file is empty" if not head else "not an SQLite database"
        raise DataError(f"{what}: an ASE database (.db) was expected", file=path)
    try:
        db = ase.db.connect(path, type="db", create_indices=False, use_lock_file=False)
        rows = db.select()
        for row in rows:
            atoms = row.toatoms(add_additional_information=True)
            kvp = atoms.info.get("key_value_pairs", {})  # where ase.db keeps source and family
            for field in ("source", "family"):
                if field in kvp:
                    atoms.info[field] = kvp[field]
            yield atoms_to_structure(
                atoms, source=source, key=f"{path}#{row.id}", file=path, record=row.id
            )
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read ASE database ({type(exc).__name__}: {exc})", file=path
        ) from exc


#: Keys of the fairchem ASE-LMDB layout that hold bookkeeping, not structures.
ASELMDB_RESERVED = {b"nextid", b"metadata", b"deleted_ids"}


def read_aselmdb(path: str | Path, *, source: str) -> Iterator[Structure]:
    """Read fairchem's ASE-LMDB layout, as used for OC20/OC22 (``*.aselmdb``).

    One LMDB file (``subdir=False``); each record is keyed by its ASE id in ASCII and holds a
    zlib-compressed JSON dict of an ``ase.db`` row (``numbers``, ``positions``, ``cell``,
    ``pbc``, ``energy``, ``forces``, ``stress``, ``key_value_pairs``, ``data``).
    """
    import lmdb
    import orjson

    path = str(path)
    if not Path(path).is_file():
        raise DataError("no such file", file=path)
    try:
        env = lmdb.open(
            path, subdir=False, readonly=True, lock=False, readahead=False, meminit=False
        )
    except lmdb.Error as exc:
        raise DataError(f"not an LMDB file ({exc})", file=path) from exc
    with env, env.begin(write=False) as txn:
        keys = [
            k
            for k in txn.cursor().iternext(keys=True, values=False)
            if bytes(k) not in ASELMDB_RESERVED
        ]
        keys.sort(key=lambda k: int(k) if bytes(k).isdigit() else -1)
        for key in keys:
            rid = bytes(key).decode("ascii", "replace")
            try:
                row = orjson.loads(zlib.decompress(txn.get(key) or b""))
            except (zlib.error, orjson.JSONDecodeError) as exc:
                raise DataError(
                    f"record is not zlib-compressed JSON ({exc})", file=path, record=rid
                ) from exc
            if not isinstance(row, dict):
                raise DataError(
                    f"record is a JSON {type(row).__name__}, not an object", file=path, record=rid
                )
            yield _row_to_structure(row, source=source, file=path, record=rid)


def _row_to_structure(row: dict[str, Any], *, source: str, file: str, record: str) -> Structure:
    """Turn one ASE-row dict (as JSON) into a Structure."""
    kvp = row.get("key_value_pairs") or {}
    try:
        numbers = np.asarray(row["numbers"], dtype=np.int64)
        stress = row.get("stress")
        return Structure(
            numbers=numbers,
            positions=np.asarray(row["positions"], dtype=np.float64),
            cell=np.asarray(row.get("cell", np.zeros((3, 3))), dtype=np.float64).reshape(3, 3),
            pbc=np.asarray(row.get("pbc", [False] * 3), dtype=bool),
            energy=None if row.get("energy") is None else float(row["energy"]),
            forces=None if row.get("forces") is None else np.asarray(row["forces"], np.float64),
            stress=None if stress is None else stress_to_voigt(np.asarray(stress)),
            source=str(kvp.get("source", source)),
            family=str(kvp.get("family", "")),
            key=f"{file}#{record}",
        )
    except KeyError as exc:
        raise DataError("missing", file=file, record=record, field=str(exc.args[0])) from exc
    except (TypeError, ValueError) as exc:
        raise DataError(f"bad value ({exc})", file=file, record=record) from exc


#: Dataset names tried, in order, for each quantity of an ANI-style HDF5 group.
ANI_KEYS: dict[str, tuple[str, ...]] = {
    "coordinates": ("coordinates",),
    "numbers": ("atomic_numbers", "species"),
    "energy": ("energies", "wb97x_dz.energy", "energy"),
    "forces": ("forces", "wb97x_dz.forces"),
}


def read_ani_h5(
    path: str | Path, *, source: str, energy_unit: str = "Hartree"
) -> Iterator[Structure]:
    """Read an ANI-1x-style HDF5 file: groups (one per formula) of conformers.

    Each group holding a ``coordinates`` dataset [n_conf, n_atoms, 3] Å is read, with
    ``atomic_numbers`` [n_atoms] (or ``species`` as symbols), energies [n_conf] and forces
    [n_conf, n_atoms, 3] under the names in :data:`ANI_KEYS`. Energies are in ``energy_unit``
    (Hartree for ANI-1x; also ``eV`` or ``kcal/mol``) and forces in that unit per Å; both are
    converted to eV and eV/Å. Conformers whose energy is NaN (ANI-1x leaves gaps) come through
    with NaN, for the packer to skip and count.
    """
    import h5py

    path = str(path)
    if energy_unit not in ENERGY_UNITS:
        raise DataError(
            f"unknown energy unit {energy_unit!r}; known: {sorted(ENERGY_UNITS)}", file=path
        )
    to_ev = ENERGY_UNITS[energy_unit]
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"not an HDF5 file ({exc})", file=path) from exc
    with handle:
        groups: list[Any] = []
        handle.visititems(lambda name, obj: groups.append(obj) if _is_ani_group(obj) else None)
        for group in groups:
            yield from _read_ani_group(group, source=source, to_ev=to_ev, file=path)


def _is_ani_group(obj: Any) -> bool:
    import h5py

    return isinstance(obj, h5py.Group) and "coordinates" in obj


def _find(group: Any, quantity: str) -> Any:
    for name in ANI_KEYS[quantity]:
        if name in group:
            return group[name]
    return None


def _read_ani_group(group: Any, *, source: str, to_ev: float, file: str) -> Iterator[Structure]:
    name = group.name
    coords = np.asarray(group["coordinates"], dtype=np.float64)
    z = _find(group, "numbers")
    if z is None:
        raise DataError(
            "group has no atomic_numbers or species", file=file, record=name, field="atomic_numbers"
        )
    z = np.asarray(z)
    if z.dtype.kind in "SUO":
        from ase.data import atomic_numbers

        symbols = [s.decode() if isinstance(s, bytes) else str(s) for s in z]
        unknown = sorted(set(symbols) - set(atomic_numbers))
        if unknown:
            raise DataError(
                f"unknown element symbols {unknown}", file=file, record=name, field="species"
            )
        z = np.array([atomic_numbers[s] for s in symbols])
    if z.dtype.kind == "f" and not np.all(z == np.round(z)):
        raise DataError(
            "atomic numbers are not integers", file=file, record=name, field="atomic_numbers"
        )
    numbers = z.astype(np.int64).reshape(-1)
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise DataError(
            f"coordinates have shape {coords.shape}, expected [n_conf, {len(numbers)}, 3]",
            file=file,
            record=name,
            field="coordinates",
        )
    e = _find(group, "energy")
    f = _find(group, "forces")
    energies = None if e is None else np.asarray(e, dtype=np.float64).reshape(-1) * to_ev
    forces = None if f is None else np.asarray(f, dtype=np.float64) * to_ev
    n_conf = coords.shape[0]
    if energies is not None and energies.shape != (n_conf,):
        raise DataError(
            f"{len(energies)} energies for {n_conf} conformers",
            file=file,
            record=name,
            field="energies",
        )
    if forces is not None and forces.shape != coords.shape:
        raise DataError(
            f"forces have shape {forces.shape}, coordinates {coords.shape}",
            file=file,
            record=name,
            field="forces",
        )
    for k in range(n_conf):
        yield Structure(
            numbers=numbers,
            positions=coords[k],
            energy=None if energies is None else float(energies[k]),
            forces=None if forces is None else forces[k],
            source=source,
            family=str(group.attrs.get("family", "")),
            key=f"{file}#{name}/{k}",
        )


def read_mptrj(
    path: str | Path, *, source: str, energy_key: str = "uncorrected_total_energy"
) -> Iterator[Structure]:
    """Read MPtrj JSON: ``{mp_id: {frame_id: {structure, energy, force, stress, ...}}}``.

    The file is streamed one material at a time, so the 11 GB release is read in flat memory.
    ``structure`` is a pymatgen ``Structure.as_dict()`` (lattice matrix in Å, Cartesian
    ``xyz`` per site); ``force`` is in eV/Å; ``stress`` is in kbar with VASP's sign (positive =
    compressive) and is converted to eV/Å³ with ASE's sign. ``energy_key`` picks the raw DFT
    energy (default) or ``corrected_total_energy`` (MP2020 corrections applied).
    """
    path = str(path)
    for mp_id, frames in iter_json_object(path):
        if not isinstance(frames, dict):
            raise DataError(
                "a .json file is read as MPtrj ({material: {frame: ...}}) unless it is an ASE "
                "database, and this entry is no object of frames: not a structure file? (a "
                "folder's other .json files are read too)",
                file=path,
                record=mp_id,
            )
        for frame_id, frame in frames.items():
            yield _mptrj_frame(
                frame, source=source, energy_key=energy_key, file=path, record=f"{mp_id}/{frame_id}"
            )


def _mptrj_frame(
    frame: dict[str, Any], *, source: str, energy_key: str, file: str, record: str
) -> Structure:
    try:
        lattice = frame["structure"]["lattice"]
        sites = frame["structure"]["sites"]
        from ase.data import atomic_numbers

        numbers = np.array([atomic_numbers[site["species"][0]["element"]] for site in sites])
        positions = np.array([site["xyz"] for site in sites], dtype=np.float64)
        stress = frame.get("stress")
        return Structure(
            numbers=numbers.astype(np.int64),
            positions=positions,
            cell=np.asarray(lattice["matrix"], dtype=np.float64),
            pbc=np.asarray(lattice.get("pbc", [True, True, True]), dtype=bool),
            energy=float(frame[energy_key]),
            forces=None if frame.get("force") is None else np.asarray(frame["force"], np.float64),
            stress=None
            if stress is None
            else -KBAR_EV_PER_A3 * stress_to_voigt(np.asarray(stress, dtype=np.float64)),
            source=source,
            key=f"{file}#{record}",
        )
    except KeyError as exc:
        raise DataError("missing", file=file, record=record, field=str(exc.args[0])) from exc
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"bad value ({exc})", file=file, record=record) from exc


#: The one explicit table of formats. Extensions map to formats in :func:`guess_format`.
READERS: dict[str, Reader] = {
    "ase": read_ase,
    "ase-db": read_ase_db,
    "aselmdb": read_aselmdb,
    "ani-h5": read_ani_h5,
    "mptrj": read_mptrj,
    "adios": read_adios,
}

_EXTENSIONS = {
    ".db": "ase-db",
    ".aselmdb": "aselmdb",
    ".lmdb": "aselmdb",
    ".h5": "ani-h5",
    ".hdf5": "ani-h5",
    ".json": "mptrj",
    ".bp": "adios",  # an ADIOS2 BP folder: one input, though a directory
}


#: Suffixes a directory given to ``matscale data pack`` is searched for.
DATA_SUFFIXES = (".extxyz", ".xyz", ".traj", ".cif", ".vasp", ".pdb", *_EXTENSIONS)


def guess_format(path: str | Path) -> str:
    """Format name for a file from its extension; anything unknown goes to ``ase``. A
    ``.json`` file is MPtrj's unless its first rows are an ASE database's (``unique_id``,
    ``ctime``: what ``ase.io.write`` and ``md --traj x.json`` make)."""
    fmt = _EXTENSIONS.get(Path(path).suffix.lower(), "ase")
    if fmt == "mptrj" and _is_ase_json(Path(path)):
        return "ase"
    return fmt


def _is_ase_json(path: Path) -> bool:
    """Whether the JSON file at ``path`` is an ASE database, by its first 4 KiB (an MPtrj file
    is gigabytes: not parsed to tell)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False  # the reader names the file and what is wrong with it
    return b'"unique_id"' in head and b'"ctime"' in head


def add_reader_args(parser: Any) -> None:
    """The readers' command-line options (``--format``, ``--reader-option``) on ``parser``
    (an ``argparse.ArgumentParser``): the verbs that read files (pack, eval, predict)."""
    parser.add_argument("--format", default=None, help="reader for all inputs (default: by suffix)")
    parser.add_argument(
        "--reader-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. energy_key=REF_energy, forces_key=REF_forces, "
        "stress_key=REF_stress (extxyz: MACE's keys), energy_key=corrected_total_energy "
        "(mptrj), energy_unit=kcal/mol (ani-h5) or labels=trainset,valset (adios); repeatable",
    )


def parse_reader_options(pairs: list[str], flag: str = "--reader-option") -> dict[str, str]:
    """``["energy_key=REF_energy", ...]`` (a command line's ``KEY=VALUE`` reader options) as
    a dict; a pair without ``=`` or key is a :class:`DataError` naming ``flag``."""
    options: dict[str, str] = {}
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise DataError(f"{flag} {text!r} is not KEY=VALUE")
        options[key] = value
    return options


def read_structures(
    path: str | Path, *, source: str | None = None, format: str | None = None, **options: Any
) -> Iterator[Structure]:
    """Read any supported file, guessing its format from the extension unless ``format`` is set.

    ``source`` defaults to the file's stem (``ani1x.h5`` → ``ani1x``); files whose records
    carry their own source (extxyz written by ``matscale data generate``) keep it.
    """
    fmt = format or guess_format(path)
    if fmt not in READERS:
        raise DataError(f"unknown format {fmt!r}; known: {sorted(READERS)}", file=str(path))
    if not Path(path).exists():
        raise DataError("no such file", file=str(path))
    import inspect

    accepted = set(inspect.signature(READERS[fmt]).parameters) - {"path", "source"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DataError(
            f"the {fmt} reader has no options {unknown}; it takes {sorted(accepted) or 'none'}",
            file=str(path),
        )
    return READERS[fmt](path, source=source or Path(path).stem, **options)
