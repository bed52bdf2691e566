"""Checkpoints (atomic, keep-last-K, exact resume) and the exported inference file.

A checkpoint holds the model, EMA and optimizer states, the plateau state, the position in the
data (epoch, batch), every RNG state, the resolved RunConfig and the data statistics. It is
written to a temporary file and renamed, so a crash mid-save never destroys the last good one.

Under FSDP the model, EMA and optimizer states are not gathered: every process writes its own
shards with ``torch.distributed.checkpoint`` into ``step-XXXXXXXX.dcp/`` (see
:func:`save_sharded`), and the ``.pt`` file, written last, holds the rest. DCP reshards on
load, so such a checkpoint resumes on any number of processes and on any backend.
The exported model (``matscale export``) is :mod:`matscale.calc.model_file`'s format: what
inference needs (weights, EMA when available; the model config; the inference transform; data
statistics) and what a model card reports, with a Markdown card beside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch

import matscale


class _HashingWriter:
    """A binary file that keeps the SHA-256 of what is written through it: the digest of a
    checkpoint without reading it back."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def save_atomic(obj: Any, path: Path) -> str:
    """``torch.save`` through a temporary file and a rename: a write that fails (a full
    disk, a quota) leaves the file at ``path`` as it was and no temporary file, and raises
    an ``OSError`` naming ``path``, the space left and what to do. Returns the SHA-256 (hex)
    of the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            torch.save(obj, cast(BinaryIO, writer))  # torch calls write and flush only
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, RuntimeError) and "unexpected pos" not in str(exc):
            raise  # not a failed write: torch's own error
        # torch's writer reports a short write as "[enforce fail ...] unexpected pos"
        free = shutil.disk_usage(path.parent).free / 2**20
        raise OSError(
            getattr(exc, "errno", None) or errno.ENOSPC,
            f"could not be written ({getattr(exc, 'strerror', None) or 'short write'}; "
            f"{free:,.0f} MiB free on its device): free space (or raise the quota), then run the "
            "same command again (earlier checkpoints are intact)",
            str(path),
        ) from exc
    try:
        os.replace(tmp, path)
    except OSError:  # a folder of that name, say: no stray temporary file either
        tmp.unlink(missing_ok=True)
        raise
    return writer.sha256.hexdigest()


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the duration: a second process training the same run
    folder (the same ``name=`` twice) is refused instead of interleaving the first one's
    metrics and checkpoints. The operating system releases the lock when the holder exits,
    however it exits, so a killed run never leaves a stale lock."""
    import fcntl

    from matscale.errors import ConfigError

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise ConfigError(
                f"{run_dir} is being trained by another process ({fh.read().strip() or 'pid ?'}): "
                "wait for it to finish, stop it, or give this run another name="
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        yield


def rng_state() -> dict[str, Any]:
    """Every random generator's state (torch, numpy, python)."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (third-party code may use the global one)
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-XXXXXXXX.pt``."""
    return run_dir / "checkpoints" / f"step-{step:08d}.pt"


def digest_path(checkpoint: Path) -> Path:
    """``step-XXXXXXXX.pt.sha256``: the SHA-256 of the checkpoint's bytes, recorded when it
    was written. torch's zip format keeps no checksum it checks, so without it a checkpoint
    whose bytes a disk or a copy changed would resume, and export, whatever they now hold."""
    return checkpoint.with_name(checkpoint.name + ".sha256")


def is_checkpoint_name(path: Path) -> bool:
    """Whether ``path`` is named as :func:`checkpoint_path` names checkpoints."""
    return re.fullmatch(r"step-\d{8}\.pt", path.name) is not None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_checkpoint_name(p))


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and its digest (:func:`digest_path`), and
    delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    digest = digest_path(path)
    # a checkpoint written again at the same step must not meet the old file's digest; one
    # that the process dies before its digest is written is read unchecked, as before digests
    digest.unlink(missing_ok=True)
    sha256 = save_atomic({**state, "version": matscale.__version__, "rng": rng_state()}, path)
    tmp = digest.with_name(digest.name + ".tmp")
    tmp.write_text(sha256 + "\n")
    os.replace(tmp, digest)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "deepspeed" / old.stem, ignore_errors=True)  # its ZeRO shards
        shutil.rmtree(sharded_path(run_dir, int(old.stem[5:])), ignore_errors=True)
    return path


def sharded_path(run_dir: Path, step: int) -> Path:
    """``run_dir/checkpoints/step-XXXXXXXX.dcp``: the sharded states of a checkpoint."""
    return run_dir / "checkpoints" / f"step-{step:08d}.dcp"


def save_sharded(states: dict[str, Any], run_dir: Path, step: int) -> Path:
    """Write every process's shards of ``states`` (from
    :func:`matscale.parallel.plan.local_states`) with ``torch.distributed.checkpoint``.
    Call on every process, before :func:`save_checkpoint` on the main one: the shards go to a
    temporary folder that the main process renames once all are written, and the ``.pt``
    file, which makes the checkpoint visible to :func:`list_checkpoints`, comes after."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    main = not dist.is_initialized() or dist.get_rank() == 0
    final = sharded_path(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # a save that crashed half-way
        tmp.parent.mkdir(parents=True, exist_ok=True)
    if dist.is_initialized():
        dist.barrier()
    dcp.save(
        states, checkpoint_id=tmp, no_dist=not dist.is_initialized()
    )  # collective: returns on the main process once all
    if main:  # shards and the metadata are written
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return final


def load_sharded(states: dict[str, Any], path: Path) -> None:
    """Fill ``states`` (this process's current states) in place from :func:`save_sharded`'s
    folder, resharding to this run's processes. Call on every process."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    if not path.is_dir():
        from matscale.errors import DataError

        raise DataError("the checkpoint's sharded states are missing", file=str(path))
    dcp.load(states, checkpoint_id=path, no_dist=not dist.is_initialized())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU), checked against
    its recorded digest. A damaged or truncated file is a :class:`DataError` naming it and
    the earlier checkpoint to fall back to; nothing is deleted."""
    from matscale.errors import DataError

    digest = digest_path(path)
    if digest.is_file():
        recorded = digest.read_text().strip()
        if _sha256_of(path) != recorded:
            raise DataError(
                f"damaged: its bytes no longer match the SHA-256 recorded when it was written "
                f"({digest.name}). {_fall_back(path)}",
                file=str(path),
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except MemoryError:
        raise
    except Exception as exc:  # truncated, emptied or not a checkpoint: torch's own words
        said = str(exc)[:120] or "no details"
        raise DataError(
            f"cannot be read as a checkpoint ({type(exc).__name__}: {said}): truncated or "
            f"damaged. {_fall_back(path)}",
            file=str(path),
        ) from None


def _sha256_of(path: Path) -> str:
    sha256 = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            sha256.update(block)
    return sha256.hexdigest()


def _fall_back(path: Path) -> str:
    """What to do about an unreadable checkpoint, in words: which earlier one remains."""
    earlier = [p for p in list_checkpoints(path.parent.parent) if p.name < path.name]
    also = f" and {digest_path(path).name}" if digest_path(path).is_file() else ""
    move = f"Move it{also} out of {path.parent}"
    if earlier:
        return f"{move} to resume from the previous checkpoint, {earlier[-1].name}"
    return f"{move} to start the run again from step 0 (there is no earlier checkpoint)"


def _labellers_of_store(checkpoint: dict[str, Any]) -> dict[str, str]:
    """Source → teacher of a checkpoint from before they were saved: read from its store when
    that store is still there with the same content; else none known."""
    from matscale.data.store import META, Store

    store = Path(checkpoint.get("config", {}).get("data", {}).get("store", ""))
    if not (store / META).is_file():
        return {}
    found = Store(store)
    return found.labelled_by if found.content_id == checkpoint.get("store_content") else {}


def check_export_target(path: Path) -> None:
    """Refuse, before any checkpoint is read, an export that would replace something other
    than an earlier export: a folder, a checkpoint, a config. The model card goes beside the
    file (``.md``), so that name must be free or hold an earlier card."""
    from matscale.calc.card import CARD_TITLE
    from matscale.calc.model_file import is_model_file
    from matscale.errors import DataError

    if path.is_dir():
        raise DataError(
            "is a folder: give the model file's name (say, model.pt in it)", file=str(path)
        )
    if path.exists() and not is_model_file(path):
        raise DataError(
            "exists and is not a matscale model file, which exporting would replace: choose "
            "another name",
            file=str(path),
        )
    if path.suffix != ".pt":  # its card is NAME.md: model.extxyz would read as a structure file
        raise DataError("a model file's name ends in .pt (say, model.pt)", file=str(path))
    if not path.parent.is_dir():  # a mistyped folder is reported, not created (as md, relax)
        raise DataError("no folder to write it in", file=str(path))
    card = path.with_suffix(".md")
    if card.is_dir() or (card.exists() and not card.read_bytes().startswith(CARD_TITLE.encode())):
        raise DataError(
            f"the model card of {path.name} would replace this file, which is not one: choose "
            "another name",
            file=str(card),
        )


def export_run(run_dir: Path, path: Path) -> Path:
    """Write the model file of ``run_dir``'s last checkpoint to ``path``. A checkpoint holds
    the validation errors only; the test and held-out ones a finished run measured are in the
    model file it exported at its end (``run_dir/model.pt``), and are kept when that file is
    of the same step."""
    from matscale.calc.model_file import is_model_file, read_model_file
    from matscale.errors import DataError

    found = list_checkpoints(run_dir)
    if not found:
        raise DataError("no checkpoint in this run folder", file=str(run_dir))
    checkpoint = load_checkpoint(found[-1])
    final = run_dir / "model.pt"
    if is_model_file(final):
        before = read_model_file(final)
        if before.get("step") == checkpoint.get("step"):
            metrics = {**checkpoint.get("metrics", {}), **before.get("metrics", {})}
            checkpoint = {**checkpoint, "metrics": metrics}
    return export_model(checkpoint, path)


def export_model(checkpoint: dict[str, Any], path: Path) -> Path:
    """Write the model file for ``checkpoint`` (EMA weights if any, else the weights; see
    :mod:`matscale.calc.model_file`) and its model card beside it (``.md``)."""
    from matscale.calc.card import model_card
    from matscale.calc.model_file import legacy_graph, model_file_blob
    from matscale.data.transform import GraphSettings
    from matscale.models.egnn import upgrade_config

    keep = (
        "stats", "labelled_by", "step", "train_seconds", "train_structures", "hardware",
        "store_parts", "split_structures",
    )  # fmt: skip
    if "labelled_by" not in checkpoint:
        checkpoint = {**checkpoint, "labelled_by": _labellers_of_store(checkpoint)}
    if "graph" in checkpoint:
        graph = GraphSettings.from_dict(checkpoint["graph"])
    else:  # a checkpoint from before transforms were saved
        graph = legacy_graph(checkpoint["model_config"], checkpoint["config"], checkpoint["stats"])
    blob = model_file_blob(
        model_config=upgrade_config(checkpoint["model_config"]),
        graph=graph,
        state_dict=checkpoint.get("ema") or checkpoint["model"],
        extra={
            **{k: checkpoint[k] for k in keep if k in checkpoint},
            "run_config": checkpoint["config"],
            "metrics": checkpoint.get("metrics", {}),
        },
    )
    save_atomic(blob, path)
    path.with_suffix(".md").write_text(model_card(blob, name=path.name))
    return path
