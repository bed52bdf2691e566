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
import os
import random
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import matscale


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and a rename: a write that fails (a full
    disk, a quota) leaves the file at ``path`` as it was and no temporary file, and raises
    an ``OSError`` naming ``path``, the space left and what to do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as fh:
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
    os.replace(tmp, path)


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


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"step-\d{8}\.pt", p.name))


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and delete all but the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    save_atomic({**state, "version": matscale.__version__, "rng": rng_state()}, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
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
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _labellers_of_store(checkpoint: dict[str, Any]) -> dict[str, str]:
    """Source → teacher of a checkpoint from before they were saved: read from its store when
    that store is still there with the same content; else none known."""
    from matscale.data.store import META, Store

    store = Path(checkpoint.get("config", {}).get("data", {}).get("store", ""))
    if not (store / META).is_file():
        return {}
    found = Store(store)
    return found.labelled_by if found.content_id == checkpoint.get("store_content") else {}


def export_model(checkpoint: dict[str, Any], path: Path) -> Path:
    """Write the model file for ``checkpoint`` (EMA weights if any, else the weights; see
    :mod:`matscale.calc.model_file`) and its model card beside it (``.md``)."""
    from matscale.calc.card import model_card
    from matscale.calc.model_file import legacy_graph, model_file_blob
    from matscale.data.transform import GraphSettings
    from matscale.models.egnn import upgrade_config

    keep = (
        "stats", "labelled_by", "step", "train_seconds", "train_structures", "hardware",
        "store_parts",
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
