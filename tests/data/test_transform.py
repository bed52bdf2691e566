"""The inference transform's element check: a table lookup for the common case, and every
element outside a head's training data refused by name, whatever its number."""

import numpy as np
import pytest

from matscale.data.transform import GraphSettings
from matscale.errors import DataError

SETTINGS = GraphSettings(cutoff=5.0, heads=("emt", "xtb"), elements=((29, 79), (1, 6, 8)))


def test_elements_a_head_saw_pass() -> None:
    SETTINGS.check_elements(np.array([29, 79, 29]), 0)
    SETTINGS.check_elements(np.array([1, 1, 8]), 1)


@pytest.mark.parametrize(
    ("numbers", "named"),
    [
        ([29, 8], "O (Z=8)"),  # another head's element
        ([29, 26, 26], "Fe (Z=26)"),
        ([29, 0], "X (a dummy atom) (Z=0)"),  # outside the periodic table, below and above it
        ([29, 119], "Z=119"),
        ([-1, 29], "Z=-1"),
    ],
)
def test_other_elements_are_refused_by_name(numbers: list[int], named: str) -> None:
    with pytest.raises(DataError, match="never appeared") as info:
        SETTINGS.check_elements(np.array(numbers), 0, file="in.xyz", record=3)
    assert named in str(info.value) and info.value.field == "numbers"
    assert "which knows Cu, Au" in str(info.value)
