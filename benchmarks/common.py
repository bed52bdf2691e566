"""Helpers shared by the benchmark scripts: machine description, memory figures, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import time
from pathlib import Path
from typing import Any

from matscale.allocator import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"

#: Every benchmark process, the peers' included (benchmarks/peers/train_peer.py does the same),
#: allocates as the ``matscale`` command does: freed pages kept for the next step
#: (:mod:`matscale.allocator`; ``MATSCALE_KEEP_FREED_MEMORY=0`` measures without, and
#: benchmarks/allocator.py measures the difference).
KEEPS_FREED_MEMORY = keep_freed_memory()


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, torch build, device."""
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "keeps_freed_memory": KEEPS_FREED_MEMORY,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory (MiB) of this process, or of its finished children."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def _children_of() -> dict[int, list[int]]:
    """Every process's children, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # the name, in parentheses, may hold spaces: the fields follow its last ")"
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # ended while we looked
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return children


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process descended from it. Each is stopped (SIGSTOP) as it is
    found, so none starts another or, its parent gone, moves under init before the kill: a
    process group is not enough, torchrun starts each rank in a session of its own."""
    stopped: list[int] = []
    frontier = [pid]
    while frontier:
        for p in frontier:
            try:
                os.kill(p, signal.SIGSTOP)
                stopped.append(p)
            except ProcessLookupError:
                pass
        children = _children_of()
        frontier = [c for p in frontier for c in children.get(p, []) if c not in stopped]
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def rss_breakdown_mb() -> dict[str, float]:
    """Current resident memory split into anonymous (heap) and file-backed (page cache of
    memory-mapped files, reclaimable by the kernel) parts, in MiB (Linux only)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus the machine description to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1))
    print(f"wrote {path}")
    return path


def step_model(store: Any, width: int, depth: int) -> Any:
    """The EGNN the step benchmarks train (train_throughput, step_profile, gemm_widths): width
    × depth, one head per source of ``store`` (a ``matscale.data.store.Store``), 30 mean
    neighbours, the store's statistics; seed 0."""
    import torch

    from matscale.models.egnn import EGNN, EGNNConfig, set_statistics

    torch.manual_seed(0)
    config = EGNNConfig(width=width, depth=depth, heads=tuple(store.sources), avg_neighbours=30.0)
    model = EGNN(config)
    set_statistics(model, store.stats)
    return model


def store_batches(store: Any, max_atoms: int, count: int, order: Any = None) -> list[Any]:
    """``count`` collated batches of ≤ ``max_atoms`` atoms of a ``matscale.data.store.Store``,
    structures taken in ``order`` (indices; None: the store's own), radius graphs at 5 Å with
    one head per source, as ``matscale train`` builds them."""
    from matscale.data.batch import GraphDataset, collate
    from matscale.data.transform import GraphSettings

    settings = GraphSettings.from_stats(
        cutoff=5.0, max_neighbours=None, heads=tuple(store.sources), stats=store.stats
    )
    ds = GraphDataset(store, settings)
    out: list[Any] = []
    current: list[Any] = []
    atoms = 0
    for i in range(len(store)) if order is None else order:
        n = int(store.n_atoms[i])
        if current and atoms + n > max_atoms:
            out.append(collate(current))
            if len(out) == count:
                return out
            current, atoms = [], 0
        current.append(ds[int(i)])
        atoms += n
    if current:
        out.append(collate(current))
    return out[:count]
