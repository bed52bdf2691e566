"""The allocator benchmark's worker runs under the setting it is asked for, in a fresh process,
and reports what it measured (a tiny trained model, a few calls each way)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from matscale import allocator as matscale_allocator
from tests.benchmarks import load_benchmark
from tests.calc.conftest import train_tiny

bench = load_benchmark("allocator")


@pytest.mark.skipif(matscale_allocator._libc() is None, reason="glibc's malloc only")
def test_each_setting_in_its_own_process(
    tiny_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model = train_tiny(tiny_store, tmp_path_factory.mktemp("bench-allocator"))
    args = argparse.Namespace(store=tiny_store, model=model, head="emt", threads=1,
                              max_atoms=64, warmup=2, steps=3)  # fmt: skip
    kept = bench.run_case("calc-256", True, args)
    glibc = bench.run_case("calc-256", False, args)
    for row in (kept, glibc):
        assert row["atoms"] == 256 and row["seconds"] > 0 and row["peak_rss_mib"] > 0
    assert kept["keeps_freed_memory"] and not glibc["keeps_freed_memory"]
    assert kept["faults"] <= glibc["faults"]
