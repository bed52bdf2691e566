"""The MACE peer (benchmarks/peers/mace_model.py) against MACE's own pipeline, in the
environment benchmarks/peers/setup_mace makes (.venv-mace; CI makes it before the tests).

The peer wraps matscale's graphs for MACE. A wrong convention there (an edge's direction, a
shift against wrapped positions) still gives a smooth, conservative energy, and every
comparison with MACE would quietly measure another model: check_mace.py compares the wrapper
with MACE's own neighbour list and batching to 1e-9, and its forces with finite differences.
"""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MACE_PYTHON = ROOT / ".venv-mace" / "bin" / "python"


@pytest.mark.skipif(
    not MACE_PYTHON.exists(), reason="no .venv-mace: run benchmarks/peers/setup_mace (CI does)"
)
def test_the_mace_peer_equals_maces_own_pipeline() -> None:
    result = subprocess.run(
        [str(MACE_PYTHON), str(ROOT / "benchmarks" / "peers" / "check_mace.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "MACE peer checks passed" in result.stdout
    assert "(e) vs MACE's own neighbour list and batching" in result.stdout
