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


def write_shard(path: Path, structures: list[Structure], n_edges: list[int]) -> dict[str, Any]:
    """Write ``structures`` as one shard at ``path`` (atomically) and return its index entry.

    The entry holds the file name, counts, byte size and CRC-32 that the store checks later.
    """
    sources = sorted({s.source for s in structures})
    families = sorted({s.family for s in structures})
    src_id = {name: i for i, name in enumerate(sources)}
    fam_id = {name: i for i, name in enumerate(families)}
    n_atoms = np.array([s.n_atoms for s in structures], dtype=np.int64)
    atom_start = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    keys = [s.key.encode("utf-8") for s in structures]
    nan6 = np.full(6, np.nan)
    arrays: dict[str, np.ndarray] = {
        "atom_start": atom_start,
        "numbers": np.concatenate([s.numbers for s in structures]).astype(np.uint8),
        "positions": np.concatenate([s.positions for s in structures]).astype(np.float32),
        "forces": np.concatenate(
            [np.zeros((s.n_atoms, 3)) if s.forces is None else s.forces for s in structures]
        ).astype(np.float32),
        "cell": np.stack([s.cell for s in structures]).astype(np.float32),
        "pbc": np.stack([s.pbc for s in structures]).astype(np.uint8),
        "energy": np.array([np.nan if s.energy is None else s.energy for s in structures]),
        "stress": np.stack([nan6 if s.stress is None else s.stress for s in structures]).astype(
            np.float32
        ),
        "flags": np.array([_flags(s) for s in structures], dtype=np.uint8),
        "source": np.array([src_id[s.source] for s in structures], dtype=np.uint16),
        "family": np.array([fam_id[s.family] for s in structures], dtype=np.uint16),
        "n_edges": np.asarray(n_edges, dtype=np.uint32),
        "key_start": np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64),
        "key_bytes": np.frombuffer(b"".join(keys), dtype=np.uint8),
    }
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in arrays.items():
        layout[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset}
        offset = _align(offset + arr.nbytes)
    header = json.dumps(
        {
            "version": 1,
            "n_structures": len(structures),
            "n_atoms": int(atom_start[-1]),
            "sources": sources,
            "families": families,
            "arrays": layout,
        }
    ).encode()
    data_start = _align(len(MAGIC) + 8 + len(header))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", len(header)) + header)
        fh.write(b"\0" * (data_start - fh.tell()))
        for name, arr in arrays.items():
            fh.write(b"\0" * (data_start + layout[name]["offset"] - fh.tell()))
            fh.write(np.ascontiguousarray(arr).tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a crash mid-write never leaves a half shard under the real name
    return {
        "file": path.name,
        "n_structures": len(structures),
        "n_atoms": int(atom_start[-1]),
        "bytes": path.stat().st_size,
        "crc32": crc32_file(path),
    }


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
                    "; the shard is corrupt or was modified after packing",
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
                self.arrays[name] = view.reshape(spec["shape"])
        except (ValueError, KeyError, struct.error, json.JSONDecodeError, TypeError) as exc:
            raise CorruptShardError(f"unreadable shard header ({exc})", file=str(path)) from exc
        self.sources: list[str] = header["sources"]
        self.families: list[str] = header["families"]
        self.n_structures: int = header["n_structures"]

    def structure(self, k: int, *, source: str, family: str) -> Structure:
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
            key=kb.tobytes().decode("utf-8"),
        )
