"""One shard of the store: a binary file of contiguous arrays, written once, read by memory map.

Layout::

    b"MSSHARD1" | uint64 header length | header (JSON) | zero padding | arrays, each 64-byte aligned

The header lists each array's dtype, shape and byte offset, and the shard's local vocabularies
of source and family names. Per-structure arrays are indexed by the structure's position in
the shard; per-atom arrays by ``atom_start[k]:atom_start[k+1]``.

========== ============ ========= ==================================================
array      shape        dtype     meaning (units)
========== ============ ========= ==================================================
atom_start [n+1]        int64     first atom of each structure in the per-atom arrays
numbers    [N]          uint8     atomic numbers
positions  [N, 3]       float32   Å
forces     [N, 3]       float32   eV/Å (zeros where absent)
cell       [n, 3, 3]    float32   Å
pbc        [n, 3]       uint8     periodic flags
energy     [n]          float64   eV (float64: totals reach 1e5 eV; NaN where absent)
stress     [n, 6]       float32   eV/Å³, Voigt xx yy zz yz xz xy (NaN where absent)
flags      [n]          uint8     bit 0 energy, bit 1 forces, bit 2 stress present
source     [n]          uint16    index into the header's ``sources``
family     [n]          uint16    index into the header's ``families``
n_edges    [n]          uint32    directed neighbour pairs at the store's cutoff
key_start  [n+1]        int64     provenance strings, ``key_bytes[key_start[k]:...]``
key_bytes  [K]          uint8     UTF-8
========== ============ ========= ==================================================
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from matscale.data.structure import Structure
from matscale.errors import CorruptShardError

MAGIC = b"MSSHARD1"
ALIGN = 64
HAS_ENERGY, HAS_FORCES, HAS_STRESS = 1, 2, 4


def crc32_file(path: Path, chunk: int = 1 << 22) -> int:
    """CRC-32 of a file's bytes, read in chunks (flat memory, no page-cache mapping)."""
    crc = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class _Growable:
    """A numpy array that grows by doubling: appends cost O(1) amortised, memory ≤ 2x data."""

    def __init__(self, dtype: type | np.dtype, shape: tuple[int, ...] = ()) -> None:
        self.data = np.empty((1024, *shape), dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self.data.dtype).reshape(-1, *self.data.shape[1:])
        need = self.size + len(values)
        if need > len(self.data):
            grown = np.empty(
                (max(need, 2 * len(self.data)), *self.data.shape[1:]), dtype=self.data.dtype
            )
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size : need] = values
        self.size = need

    def view(self) -> np.ndarray:
        return self.data[: self.size]


#: What a ShardBuilder collects: (name, dtype, shape of one row). ``atoms`` and ``key_len``
#: become the ``atom_start`` and ``key_start`` offsets when the shard is written.
FIELDS: tuple[tuple[str, type, tuple[int, ...]], ...] = (
    ("numbers", np.uint8, ()),
    ("positions", np.float32, (3,)),
    ("forces", np.float32, (3,)),
    ("atoms", np.int64, ()),
    ("cell", np.float32, (3, 3)),
    ("pbc", np.uint8, (3,)),
    ("energy", np.float64, ()),
    ("stress", np.float32, (6,)),
    ("flags", np.uint8, ()),
    ("source", np.uint16, ()),
    ("family", np.uint16, ()),
    ("n_edges", np.uint32, ()),
    ("key_len", np.int64, ()),
    ("key_bytes", np.uint8, ()),
)
#: Fields turned into offset arrays (``name`` → the shard's array of cumulative starts).
OFFSETS = {"atoms": "atom_start", "key_len": "key_start"}


class ShardBuilder:
    """Collects structures in the shard's compact dtypes until :meth:`write` puts them on disk.

    Memory is at most twice the shard's size, whatever the structures' Python form was, so a
    packer's footprint is set by the shard size alone.
    """

    def __init__(self) -> None:
        self.fields = {name: _Growable(dtype, shape) for name, dtype, shape in FIELDS}
        self.sources: dict[str, int] = {}
        self.families: dict[str, int] = {}

    def __len__(self) -> int:
        return self.fields["atoms"].size

    @property
    def nbytes(self) -> int:
        """Bytes the shard will hold."""
        return sum(g.view().nbytes for g in self.fields.values())

    def add(self, s: Structure, n_edges: int) -> None:
        """Append one structure with its directed neighbour count at the store's cutoff."""
        n = s.n_atoms
        key = s.key.encode("utf-8", "surrogateescape")  # a file name may not be UTF-8
        rows = {
            "numbers": s.numbers,
            "positions": s.positions,
            "forces": np.zeros((n, 3)) if s.forces is None else s.forces,
            "atoms": [n],
            "cell": s.cell,
            "pbc": s.pbc,
            "energy": [np.nan if s.energy is None else s.energy],
            "stress": np.full(6, np.nan) if s.stress is None else s.stress,
            "flags": [_flags(s)],
            "source": [self.sources.setdefault(s.source, len(self.sources))],
            "family": [self.families.setdefault(s.family, len(self.families))],
            "n_edges": [n_edges],
            "key_len": [len(key)],
            "key_bytes": np.frombuffer(key, dtype=np.uint8),
        }
        for name, values in rows.items():
            self.fields[name].extend(np.asarray(values))

    def write(self, path: Path) -> dict[str, Any]:
        """Write the shard at ``path`` (atomically) and return its index entry: file name,
        counts, byte size and the CRC-32 the store checks later."""
        zero = np.zeros(1, dtype=np.int64)
        arrays: dict[str, np.ndarray] = {}
        for name, grown in self.fields.items():
            if name in OFFSETS:
                arrays[OFFSETS[name]] = np.concatenate([zero, np.cumsum(grown.view())])
            else:
                arrays[name] = grown.view()
        n_atoms = int(arrays["atom_start"][-1])
        header = {
            "version": 1,
            "n_structures": len(self),
            "n_atoms": n_atoms,
            "sources": list(self.sources),  # position = local id
            "families": list(self.families),
        }
        _write_arrays(path, header, arrays)
        return {
            "file": path.name,
            "n_structures": len(self),
            "n_atoms": n_atoms,
            "bytes": path.stat().st_size,
            "crc32": crc32_file(path),
        }


def _write_arrays(path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in arrays.items():
        layout[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        offset = _align(offset + arr.nbytes)
    blob = json.dumps({**header, "arrays": layout}).encode()
    data_start = _align(len(MAGIC) + 8 + len(blob))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
        for name, arr in arrays.items():
            fh.write(b"\0" * (data_start + layout[name]["offset"] - fh.tell()))
            fh.write(np.ascontiguousarray(arr).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a crash mid-write never leaves a half shard under the real name


def _flags(s: Structure) -> int:
    return (
        (HAS_ENERGY if s.energy is not None else 0)
        | (HAS_FORCES if s.forces is not None else 0)
        | (HAS_STRESS if s.stress is not None else 0)
    )


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Shard:
    """Read-only memory-mapped view of one shard file. Arrays are numpy views into the map."""

    def __init__(self, path: Path, *, expected_crc32: int | None = None) -> None:
        self.path = path
        if expected_crc32 is not None:
            actual = crc32_file(path)
            if actual != expected_crc32:
                raise CorruptShardError(
                    f"checksum mismatch (crc32 {actual:#010x}, index says {expected_crc32:#010x})"
                    "; the shard is corrupt or was modified after packing: copy it again from "
                    "where the store came from, or repack the store (`matscale data pack`)",
                    file=str(path),
                )
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(MAGIC))
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > path.stat().st_size:
                    raise ValueError(f"header length {length} exceeds the file")
                header = json.loads(fh.read(length))
            if magic != MAGIC:
                raise ValueError(f"bad magic {magic!r}")
            data_start = _align(len(MAGIC) + 8 + length)
            mm = np.memmap(path, dtype=np.uint8, mode="r")
            self.arrays: dict[str, np.ndarray] = {}
            for name, spec in header["arrays"].items():
                dtype = np.dtype(spec["dtype"])
                count = int(np.prod(spec["shape"], dtype=np.int64))
                start = data_start + spec["offset"]
                view = mm[start : start + count * dtype.itemsize].view(dtype)
                # plain arrays over the map (it stays open through their base): every slice of
                # an np.memmap is a memmap too, whose bookkeeping made reading a structure
                # take 23 µs against 12.5
                self.arrays[name] = view.reshape(spec["shape"]).view(np.ndarray)
        except (ValueError, KeyError, struct.error, json.JSONDecodeError, TypeError) as exc:
            raise CorruptShardError(
                f"unreadable shard header ({exc}): repack the store (`matscale data pack`)",
                file=str(path),
            ) from exc
        self.sources: list[str] = header["sources"]
        self.families: list[str] = header["families"]
        self.n_structures: int = header["n_structures"]

    def structure(self, k: int, *, source: str, family: str, labelled_by: str = "") -> Structure:
        """The ``k``-th structure of this shard (float64 copies of the stored float32)."""
        a = self.arrays
        lo, hi = int(a["atom_start"][k]), int(a["atom_start"][k + 1])
        flags = int(a["flags"][k])
        kb = a["key_bytes"][int(a["key_start"][k]) : int(a["key_start"][k + 1])]
        return Structure(
            numbers=a["numbers"][lo:hi].astype(np.int64),
            positions=a["positions"][lo:hi].astype(np.float64),
            cell=a["cell"][k].astype(np.float64),
            pbc=a["pbc"][k].astype(bool),
            energy=float(a["energy"][k]) if flags & HAS_ENERGY else None,
            forces=a["forces"][lo:hi].astype(np.float64) if flags & HAS_FORCES else None,
            stress=a["stress"][k].astype(np.float64) if flags & HAS_STRESS else None,
            source=source,
            family=family,
            key=kb.tobytes().decode("utf-8", "surrogateescape"),
            labelled_by=labelled_by,
        )
