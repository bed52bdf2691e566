"""The billion-parameter benchmark's runner: a run past its time is stopped, every rank of it."""

import argparse
import uuid
from pathlib import Path

from tests.benchmarks import load_benchmark

billion = load_benchmark("billion")


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return found


def test_a_run_past_its_timeout_is_killed_with_its_ranks(tiny_store: Path, tmp_path: Path) -> None:
    name = f"timeout-{uuid.uuid4().hex[:8]}"
    # long enough for torchrun to start both ranks and train, far too short for the steps
    args = argparse.Namespace(store=tiny_store, width=8, depth=1, max_atoms=8, steps=10**6,
                              timeout=25.0)  # fmt: skip
    row = billion.run(name, ["parallel.backend=ddp", "model.cutoff=4.0"], args, tmp_path)
    assert row["returncode"] == -9
    assert "timed out" in row["error"]
    assert row.get("steps", 0) > 0  # the steps it finished are kept
    assert _processes_naming(f"name={name}") == []  # no rank left behind
