"""A tiny packed store for training tests: 40 EMT cells and 24 molecules, two sources."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest

from matscale.data.pack import PackConfig, pack
from tests.conftest import emt_structures, molecules


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    path = root / "in.extxyz"
    ase.io.write(path, [s.to_atoms() for s in emt_structures(40) + molecules(24)])
    pack([path], root / "store", PackConfig(workers=1, cutoff=4.0), progress=False)
    return root / "store"
