"""Reader of HydraGNN's ADIOS2 graph datasets (the paper's own files).

HydraGNN (ORNL) writes its datasets with ``AdiosWriter`` (hydragnn/utils/datasets/
adiosdataset.py) into an ADIOS2 BP folder (``NAME.bp/``). Layout, per *label* (HydraGNN's
splits, e.g. ``trainset``, ``valset``, ``testset``):

========================================= =======================================================
ADIOS2 name                               content
========================================= =======================================================
attribute ``LABEL/ndata``                 number of graphs
attribute ``LABEL/keys``                  names of the graphs' fields (PyG ``Data`` keys)
variable ``LABEL/KEY``                    every graph's ``KEY`` concatenated along one axis
attribute ``LABEL/KEY/variable_dim``      that axis (0 for per-atom fields, 1 for ``edge_index``)
variable ``LABEL/KEY/variable_count``     [ndata] each graph's extent along that axis
variable ``LABEL/KEY/variable_offset``    [ndata] where each graph starts along it
attribute ``dataset_name``                the dataset (optional): the records' source
========================================= =======================================================

Fields read (units as HydraGNN's atomistic datasets store them: eV and Å, nothing converted):
``pos`` [n, 3] Å; ``atomic_numbers`` [n, 1] (or column 0 of ``x``); ``cell`` [3, 3] Å and
``pbc`` [3] (absent: a molecule); ``energy`` [1] eV (or ``energy_key="energy_per_atom"``,
multiplied by the atom count); ``forces`` [n, 3] eV/Å. Graph fields (``edge_index``,
``edge_attr``, ``edge_shifts``, ``pe``, ...) are not read: matscale builds its own graphs.
Stress is not read: HydraGNN's examples do not store it, and no convention is fixed for it.
Each record's family is its label, so ``data.holdout_families=[testset]`` keeps HydraGNN's
own test split out of training. Needs the ``adios2`` package (extra ``adios``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.structure import Structure
from matscale.errors import DataError

#: Graphs read from the file at once (one ADIOS2 read per field per block).
BLOCK = 1024
#: Energy fields the reader accepts: total (eV) or per atom (eV/atom).
ENERGY_KEYS = ("energy", "energy_per_atom")


def read_adios(
    path: str | Path, *, source: str, energy_key: str = "energy", labels: str = ""
) -> Iterator[Structure]:
    """Read every graph of a HydraGNN ADIOS2 dataset (``NAME.bp``), label by label.

    ``labels`` is a comma-separated list of the labels to read (default: all, in name order);
    ``energy_key`` names the energy field (``energy``, total in eV, or ``energy_per_atom``).
    The file's ``dataset_name`` attribute, when present, is the records' source.
    """
    file = str(path)
    if energy_key not in ENERGY_KEYS:
        raise DataError(f"energy_key {energy_key!r} is not one of {ENERGY_KEYS}", file=file)
    try:
        import adios2
    except ImportError as exc:
        raise DataError(
            "reading ADIOS2 files needs the adios2 package: "
            "pip install -c constraints.txt -e '.[adios]'",
            file=file,
        ) from exc
    try:
        reader = adios2.FileReader(file)
    except Exception as exc:  # adios2 raises its own kinds for a folder it cannot open
        raise DataError(f"not an ADIOS2 BP file ({exc})", file=file) from exc
    with reader:
        attributes = reader.available_attributes()
        found = sorted(a[: -len("/ndata")] for a in attributes if a.endswith("/ndata"))
        if not found:
            raise DataError("no HydraGNN dataset in it (no LABEL/ndata attribute)", file=file)
        chosen = [x for x in labels.split(",") if x] or found
        missing = sorted(set(chosen) - set(found))
        if missing:
            raise DataError(f"labels {missing} not in the file (it has {found})", file=file)
        if "dataset_name" in attributes:
            source = _text(reader.read_attribute("dataset_name")) or source
        for label in chosen:
            yield from _read_label(reader, label, source=source, energy_key=energy_key, file=file)


def _text(value: Any) -> str:
    """An attribute's string, whether adios2 returns it as a str, a one-item list or bytes."""
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":  # a string stored as bytes
        return value.astype(np.uint8).tobytes().decode("utf-8", "replace")
    return str(value)


class _Field:
    """One field of one label: where each graph's slice lies in the concatenated variable."""

    def __init__(self, reader: Any, label: str, key: str, n: int, file: str) -> None:
        self.reader, self.name = reader, f"{label}/{key}"
        variables = reader.available_variables()
        if self.name not in variables:
            raise DataError("field missing", file=file, record=label, field=key)
        self.shape = [int(x) for x in variables[self.name]["Shape"].split(",")]
        self.dim = int(
            np.asarray(reader.read_attribute(f"{self.name}/variable_dim")).reshape(-1)[0]
        )
        self.count = np.asarray(reader.read(f"{self.name}/variable_count")).astype(np.int64)
        self.offset = np.asarray(reader.read(f"{self.name}/variable_offset")).astype(np.int64)
        if self.count.shape != (n,) or self.offset.shape != (n,):
            raise DataError(
                f"{len(self.count)} counts and {len(self.offset)} offsets for {n} graphs",
                file=file,
                record=label,
                field=key,
            )

    def block(self, lo: int, hi: int) -> list[np.ndarray]:
        """The slices of graphs ``lo``..``hi - 1``, each with the graph's axis first."""
        first = int(self.offset[lo])
        span = int(self.offset[hi - 1] + self.count[hi - 1]) - first
        start = [0] * len(self.shape)
        count = list(self.shape)
        start[self.dim], count[self.dim] = first, span
        data = np.moveaxis(np.asarray(self.reader.read(self.name, start, count)), self.dim, 0)
        return [
            data[int(self.offset[i]) - first : int(self.offset[i] + self.count[i]) - first]
            for i in range(lo, hi)
        ]


def _read_label(
    reader: Any, label: str, *, source: str, energy_key: str, file: str
) -> Iterator[Structure]:
    n = int(np.asarray(reader.read_attribute(f"{label}/ndata")).reshape(-1)[0])
    if not n:
        return
    keys = {_text(k) for k in np.atleast_1d(np.asarray(reader.read_attribute(f"{label}/keys")))}
    z_key = "atomic_numbers" if "atomic_numbers" in keys else "x"
    for need in ("pos", z_key):
        if need not in keys:
            raise DataError("field missing", file=file, record=label, field=need)
    fields = {
        "pos": _Field(reader, label, "pos", n, file),
        "z": _Field(reader, label, z_key, n, file),
    }
    for key in ("cell", "pbc", energy_key, "forces"):
        if key in keys:
            fields[key] = _Field(reader, label, key, n, file)
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        blocks = {name: f.block(lo, hi) for name, f in fields.items()}
        for j in range(hi - lo):
            yield _structure(
                {name: b[j] for name, b in blocks.items()},
                energy_key=energy_key,
                source=source,
                family=label,
                file=file,
                record=f"{label}/{lo + j}",
            )


def _structure(
    g: dict[str, np.ndarray], *, energy_key: str, source: str, family: str, file: str, record: str
) -> Structure:
    positions = np.asarray(g["pos"], dtype=np.float64)
    z = np.asarray(g["z"], dtype=np.float64)
    z = z[:, 0] if z.ndim == 2 else z  # [n, 1] atomic numbers, or x's first column
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise DataError(f"pos has shape {positions.shape}", file=file, record=record, field="pos")
    if len(z) != len(positions) or not np.all(z == np.round(z)):
        raise DataError(
            f"{len(z)} atomic numbers (integers expected) for {len(positions)} positions",
            file=file,
            record=record,
            field="atomic_numbers",
        )
    periodic = "cell" in g and "pbc" in g and bool(np.any(g["pbc"]))
    cell = np.asarray(g["cell"], dtype=np.float64).reshape(3, 3) if periodic else np.zeros((3, 3))
    pbc = np.asarray(g["pbc"]).reshape(3).astype(bool) if periodic else np.zeros(3, dtype=bool)
    energy = None
    if energy_key in g:
        energy = float(np.asarray(g[energy_key], dtype=np.float64).reshape(-1)[0])
        if energy_key == "energy_per_atom":
            energy *= len(positions)
    forces = g.get("forces")
    return Structure(
        numbers=z.astype(np.int64),
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=energy,
        forces=None if forces is None else np.asarray(forces, dtype=np.float64),
        source=source,
        family=family,
        key=f"{file}#{record}",
    )
