"""The process keeps the pages a step frees: once :func:`matscale.allocator.keep_freed_memory`
has run, a force call reuses them instead of faulting in new ones (thousands per call without)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matscale import allocator
from matscale.errors import ConfigError

pytestmark = pytest.mark.skipif(allocator._libc() is None, reason="glibc's malloc only")

#: In a fresh process: (settings applied?, minor page faults over 3 force calls of a 64-wide
#: EGNN on 500 atoms of fcc Cu, ~20,000 edges at 5 Å, after 3 calls that warm it up).
_PROBE = """
import json, resource, torch
from ase.build import bulk
from matscale.allocator import keep_freed_memory
from matscale.calc.ase_calculator import MatscaleCalculator
from matscale.calc.model_file import Potential
from matscale.data.transform import GraphSettings
from matscale.models.egnn import EGNN, EGNNConfig
applied = keep_freed_memory()
torch.manual_seed(0)
model = EGNN(EGNNConfig(width=64, depth=2, heads=("emt",), cutoff=5.0)).eval()
graph = GraphSettings(cutoff=5.0, heads=("emt",), elements=((29,),))
atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((5, 5, 5))
atoms.calc = MatscaleCalculator(Potential(model=model, graph=graph))
def call():
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    call()
print(json.dumps([applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before]))
"""


def _probe(program: str = _PROBE, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop(allocator.ENV_SWITCH, None)
    done = subprocess.run(
        [sys.executable, "-c", program], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    applied, faults = json.loads(done.stdout.strip().splitlines()[-1])
    return applied, faults


def test_freed_blocks_come_back_without_page_faults() -> None:
    applied, faults = _probe()
    assert applied
    assert faults < 10_000  # 0 to ~5,000 here; ~70,000 pages of 4 KiB without it (below)


def test_glibc_defaults_fault_every_block_in_again() -> None:
    """What the setting saves: with glibc's own thresholds the heap is handed back after each
    call and its edge tensors' pages faulted in again (~24,000 per call here), so the probe
    above says something."""
    applied, faults = _probe(**{allocator.ENV_SWITCH: "0"})
    assert not applied
    assert faults > 20_000


def test_blocks_above_glibcs_mmap_ceiling_are_kept_too() -> None:
    """A force call on 4,000 atoms (168,000 edges) frees [E, 64] edge tensors of 41 MiB, above
    the largest mmap threshold glibc accepts (32 MiB): unless separate mappings are turned off
    (``M_MMAP_MAX``), each is mapped and faulted in page by page at every call (~330,000 faults
    per call here, half the call's time); kept, they come back from the heap."""
    applied, faults = _probe(_PROBE.replace("(5, 5, 5)", "(10, 10, 10)"))
    assert applied
    assert faults < 100_000  # 0 to ~20,000 here
    _, without = _probe(_PROBE.replace("(5, 5, 5)", "(10, 10, 10)"), **{allocator.ENV_SWITCH: "0"})
    assert without > 500_000


def test_a_users_own_settings_stand(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in allocator.USER_SETTINGS:
        monkeypatch.setenv(name, "131072")
        assert allocator.keep_freed_memory() is False
        monkeypatch.delenv(name)
    for off in ("0", "false", "No", "off"):
        monkeypatch.setenv(allocator.ENV_SWITCH, off)
        assert allocator.keep_freed_memory() is False
    monkeypatch.delenv(allocator.ENV_SWITCH)
    assert allocator.keep_freed_memory() is True


def test_training_and_inference_apply_it(
    monkeypatch: pytest.MonkeyPatch, tiny_store: Path, tmp_path: Path
) -> None:
    """A run on one process (or DDP) and every model loaded for inference start with the
    setting."""
    from matscale.calc import model_file
    from matscale.train import run
    from tests.calc.conftest import train_tiny

    calls: list[str] = []
    monkeypatch.setattr(run, "keep_freed_memory", lambda: calls.append("train") or True)
    monkeypatch.setattr(model_file, "keep_freed_memory", lambda: calls.append("load") or True)
    model = train_tiny(tiny_store, tmp_path)
    assert calls == ["train"]
    model_file.load_potential(model)
    assert calls == ["train", "load"]


def test_a_call_with_blocks_over_the_limit_maps_them_again(
    monkeypatch: pytest.MonkeyPatch, tiny_store: Path, tmp_path: Path
) -> None:
    """Blocks up to LARGEST_KEPT_BYTES stay in the heap; a call whose largest tensor is
    larger (8,000 atoms of width 128: kept, 34-70 % more peak memory) lets glibc map them
    again, and a smaller call turns that off once more; MATSCALE_KEEP_BLOCKS_MIB moves the
    limit. Every force call tells the allocator its largest tensor: edges x width x 4 bytes."""
    from ase.build import bulk

    from matscale.calc import inference, model_file
    from matscale.data.graph import radius_graph
    from tests.calc.conftest import train_tiny

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(allocator, "_libc", lambda: FakeLibc())
    monkeypatch.setattr(allocator, "_state", dict(allocator._state))
    monkeypatch.delenv(allocator.ENV_SWITCH, raising=False)
    for name in allocator.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory()
    assert calls[-1] == (allocator.M_MMAP_MAX, 0)
    calls.clear()
    allocator.fit_heap_to(allocator.LARGEST_KEPT_BYTES)  # as it is: nothing to set
    allocator.fit_heap_to(allocator.LARGEST_KEPT_BYTES + 1)
    allocator.fit_heap_to(2**40)
    allocator.fit_heap_to(2**20)
    assert calls == [(allocator.M_MMAP_MAX, allocator.GLIBC_MMAP_MAX), (allocator.M_MMAP_MAX, 0)]
    monkeypatch.setenv(allocator.KEEP_BLOCKS_SWITCH, "1024")  # memory to spare: keep 1 GiB
    assert allocator.keep_freed_memory()
    calls.clear()
    allocator.fit_heap_to(2**30)
    allocator.fit_heap_to(2**30 + 1)
    assert calls == [(allocator.M_MMAP_MAX, allocator.GLIBC_MMAP_MAX)]
    for bad in ("lots", "-1", "inf", "nan"):
        monkeypatch.setenv(allocator.KEEP_BLOCKS_SWITCH, bad)
        with pytest.raises(ConfigError, match=r"MATSCALE_KEEP_BLOCKS_MIB=.* in MiB"):
            allocator.keep_freed_memory()
    monkeypatch.delenv(allocator.KEEP_BLOCKS_SWITCH)

    seen: list[int] = []
    monkeypatch.setattr(inference, "fit_heap_to", seen.append)
    potential = model_file.load_potential(train_tiny(tiny_store, tmp_path))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    inference.predict(potential, [atoms], head="emt")
    edges = radius_graph(atoms.positions, atoms.cell[:], atoms.pbc, potential.graph.cutoff)[0]
    assert seen == [edges.shape[1] * potential.model.config.width * 4]  # float32


def test_a_training_step_tells_the_allocator_its_largest_tensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each micro-batch of a step: edges x width x 4 bytes, as a force call does (a training
    run at a large width and batch would otherwise keep blocks of any size, at its memory's
    cost)."""
    import torch

    from matscale.config import TrainConfig
    from matscale.train import step
    from tests.train.test_distributed import _batches, _model

    seen: list[int] = []
    monkeypatch.setattr(step, "fit_heap_to", seen.append)
    model = _model("conservative")
    batches = _batches()
    optimizer = step.make_optimizer(model, TrainConfig())
    step.train_step(model, batches, optimizer, TrainConfig(), lr=1e-3, device=torch.device("cpu"))
    assert seen == [int(g.edge_index.shape[1]) * 16 * 4 for g in batches]  # width 16
