"""One store read as the union of others, without copying data: ``combine_stores``.

Fine-tuning with replay trains on the new data and on the pretraining data at once; the
sampler and the splits work on one store, so the inputs' shards are hard-linked (copied where
the file system cannot link) into a new store, their parts renumbered as parts of one packing
run, and the index and statistics rebuilt by :func:`~matscale.data.store.merge_parts`. A source
present in two inputs must have been labelled the same way (``labelled_by``) in both, as when
packing; stores packed at different cutoffs are refused.

The combined store records its inputs (``combined_from`` in ``parts/``): calling again with the
same inputs returns it as it is (a resumed fine-tuning run), other inputs are refused. It also
records, per input, the split it keeps (:func:`combined_parts`): a replayed pretraining store
keeps the split its model was trained with, so that its validation and test structures are
never trained on (``matscale.train.data.make_splits`` reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matscale.data.store import META, Store, merge_parts, write_json_atomic
from matscale.errors import DataError

RECORD = "combined_from.json"


def combine_stores(
    stores: Sequence[str | Path],
    out: str | Path,
    splits: Sequence[dict[str, Any] | None] | None = None,
) -> Store:
    """A store at ``out`` holding every structure of ``stores`` (in that order). ``splits``
    gives, per input, the split settings it keeps (``split``, ``split_seed``,
    ``holdout_families``: a pretraining run's), or None for the run's own."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("is a file, not a folder: choose another --out", file=str(out))
    if out.is_dir() and any(out.iterdir()) and not (out / META).exists():
        raise DataError("folder is not empty and not a store: choose another --out", file=str(out))
    inputs = [_identity(Path(s)) for s in stores]
    splits = list(splits) if splits is not None else [None] * len(inputs)
    if len(splits) != len(inputs):
        raise ValueError(f"{len(inputs)} stores but {len(splits)} split settings")
    content = {"inputs": inputs, "splits": splits}
    record = out / "parts" / RECORD
    if (out / META).exists():
        if record.exists() and json.loads(record.read_text()) == content:
            return Store(out)
        raise DataError(
            "exists and is not the combination of these stores (delete it to combine again)",
            file=str(out),
        )
    # the same content twice (the same store, or a copy of it) would put each structure in
    # the combination twice, where one copy can land in training and the other in validation
    for n, store in enumerate(inputs):
        for earlier in inputs[:n]:
            if earlier["path"] == store["path"] or earlier["shards_crc32"] == store["shards_crc32"]:
                raise DataError(
                    f"holds the same structures as {earlier['path']}, also given: each would be "
                    "in the combination twice (give each store once)",
                    file=store["path"],
                )
    cutoffs = {i["cutoff_A"] for i in inputs}
    if len(cutoffs) > 1:
        raise DataError(
            f"cannot combine stores packed at different cutoffs {sorted(cutoffs)} Å: "
            + ", ".join(f"{i['path']} ({i['cutoff_A']} Å)" for i in inputs)
        )
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # a combination cut short: nothing in it is kept
    try:
        (tmp / "shards").mkdir(parents=True)
        (tmp / "parts").mkdir()
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        parts = [(k, p) for k, store in enumerate(inputs) for p in _parts(Path(store["path"]))]
        for n, (k, part_file) in enumerate(parts):
            part = json.loads(part_file.read_text())
            for entry in part["shards"]:
                name = f"s{k}-{entry['file']}"
                _link(Path(inputs[k]["path"]) / "shards" / entry["file"], tmp / "shards" / name)
                entry["file"] = name
            part.update(part=n, n_parts=len(parts), inputs_digest=digest)
            stem = f"s{k}-{part_file.stem}"
            (tmp / "parts" / f"{stem}.json").write_text(json.dumps(part))
            shutil.copyfile(
                part_file.with_suffix(".stats.npz"), tmp / "parts" / f"{stem}.stats.npz"
            )
            prints = part_file.with_suffix(".fingerprints.npy")  # repeats across the inputs
            if prints.is_file():
                shutil.copyfile(prints, tmp / "parts" / f"{stem}.fingerprints.npy")
        merge_parts(tmp, one_packing=False)
        write_json_atomic(tmp / "parts" / RECORD, content)
        os.replace(tmp, out)
    except BaseException:  # a combination cut short leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Store(out)


def combined_parts(store: str | Path) -> list[tuple[int, dict[str, Any] | None]] | None:
    """For a combined store, each input's structures (in order) and the split settings it
    keeps (None: the run's own); None for any other store."""
    record = Path(store) / "parts" / RECORD
    if not record.is_file():
        return None
    content = json.loads(record.read_text())
    return [
        (int(i["n_structures"]), split)
        for i, split in zip(content["inputs"], content["splits"], strict=True)
    ]


def describe_parts(store: str | Path) -> list[dict[str, Any]] | None:
    """For a combined store, each input's name, structures and the split it keeps (None: the
    run's own), for a run's checkpoint and model card; None for any other store."""
    record = Path(store) / "parts" / RECORD
    if not record.is_file():
        return None
    content = json.loads(record.read_text())
    return [
        {"store": i["path"], "structures": int(i["n_structures"]), "kept_split": split}
        for i, split in zip(content["inputs"], content["splits"], strict=True)
    ]


def _identity(path: Path) -> dict[str, Any]:
    """What names a store's content: its path, size, cutoff and shard checksums."""
    if not (path / META).is_file():
        raise DataError("is not a packed store (no meta.json)", file=str(path))
    meta = json.loads((path / META).read_text())
    return {
        "path": str(path.resolve()),
        "n_structures": meta["n_structures"],
        "cutoff_A": meta["cutoff_A"],
        "shards_crc32": [s["crc32"] for s in meta["shards"]],
    }


def _parts(store: Path) -> list[Path]:
    """The part files of ``store`` (its packers' shard lists), in name order."""
    return sorted(p for p in (store / "parts").glob("*.json") if p.name != RECORD)


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target``; copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
