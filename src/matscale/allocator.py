"""Keep freed memory in the process: glibc's ``malloc`` settings for a CPU step.

PyTorch's CPU allocator has no cache: every tensor is a ``posix_memalign`` and every release a
``free``. glibc serves a block of more than ``M_MMAP_THRESHOLD`` bytes (128 KiB at start,
raised on the fly up to 32 MiB, beyond which every block is mapped) with a fresh ``mmap`` and
unmaps it when freed, and it gives the
top of its heap back to the kernel once more than ``M_TRIM_THRESHOLD`` is free there. A training
step allocates and frees megabytes of edge tensors ([E, H] float32: 20,000 edges × 78 channels is
6 MiB) dozens of times, so each one comes back as new pages that the kernel must fault in and
zero: a memory pass the step never asked for. On this project's 2-core machine that was a third
of the demo model's compiled step (``benchmarks/allocator.py``).

:func:`keep_freed_memory` sets both thresholds once and turns separate mappings off, as a
caching allocator would: blocks of every size come from the heap, and what is freed stays mapped
for the next step. Peak resident memory grows little (the same blocks are reused: +2 % at the
demo's width, benchmarks/allocator.py; 11–40 % for a force call on a few thousand atoms,
whose blocks of unequal sizes the heap cannot always fit into each other's holes; calls with
blocks larger than :data:`LARGEST_KEPT_BYTES` map them afresh again, :func:`fit_heap_to`);
what changes is that a process no longer shrinks after its peak, as with PyTorch's CUDA
allocator. Training on one process or with DDP (``train.run.build_run``) and every model loaded
for inference (``calc.load_potential``) apply it. Sharded runs (FSDP2, DeepSpeed) do not: their
steps are bound by memory, not page faults, and their freed shards fragment a heap that keeps
everything (docs/training.md: they want the opposite, ``MALLOC_MMAP_THRESHOLD_=65536``). A
library user may call it, set glibc's ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
(read at start; they then take precedence), or preload jemalloc or tcmalloc as PyTorch's CPU
tuning guide suggests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import sys

from matscale.errors import ConfigError

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: The largest mmap threshold glibc accepts on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``).
#: Blocks above it would still be mapped and unmapped each time, so :data:`MMAP_MAX` also
#: turns the mapping of blocks off: the heap serves every size.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024

#: Blocks glibc may hold as separate mappings at once: none, while a call's blocks are at most
#: the kept size (:func:`fit_heap_to`). A force call on 4,000 atoms frees [E, H] edge tensors
#: of 54 MiB (168,000 edges × 80 channels), above the 32 MiB ceiling: mapped afresh at every
#: call, their page faults took 1/2 to 2/3 of the call (benchmarks/inference.py: 2.0–2.5x the
#: atoms/s at 4,000 atoms without them).
MMAP_MAX = 0

#: glibc's own ``M_MMAP_MAX``: as many mappings as it likes.
GLIBC_MMAP_MAX = 65536

#: The largest block a call may free for it to be kept in the heap (:func:`fit_heap_to`), by
#: default. Kept, larger blocks were faster still (2.2x at 10,000 atoms of width 80, 2.3x at
#: 24,000 of width 64, 3x at 8,000) but the heap fits blocks of unequal sizes into each
#: other's holes badly: 34–70 % more peak memory there (benchmarks/largest_system.py), and a
#: large structure is where memory runs out. Up to 64 MiB (~4,700 atoms at width 80) the
#: cost was 11–40 % of a peak under 1 GiB.
LARGEST_KEPT_BYTES = 64 * 2**20

#: The environment setting of the kept size in MiB, for a user whose memory is plentiful
#: (``MATSCALE_KEEP_BLOCKS_MIB=1024``: the speed above, for that memory).
KEEP_BLOCKS_SWITCH = "MATSCALE_KEEP_BLOCKS_MIB"

#: Whether :func:`keep_freed_memory` applied its settings in this process, and the
#: ``M_MMAP_MAX`` last set (the process-wide state :func:`fit_heap_to` switches).
_state: dict[str, int | bool] = {
    "applied": False,
    "mmap_max": GLIBC_MMAP_MAX,
    "largest_kept": LARGEST_KEPT_BYTES,
}

#: Free memory kept at the top of the heap before any goes back to the kernel: the largest value
#: ``mallopt``'s ``int`` takes (2 GiB), i.e. keep what a step frees.
TRIM_THRESHOLD_BYTES = 2**31 - 1

#: Set to ``0`` (or ``false``, ``no``, ``off``) in the environment to leave glibc's settings
#: alone (to compare, or to keep a process's resident memory shrinking after its peak).
ENV_SWITCH = "MATSCALE_KEEP_FREED_MEMORY"

#: The values of :data:`ENV_SWITCH` that turn it off (compared in lower case).
OFF = ("0", "false", "no", "off")

#: glibc's own environment settings of the same thresholds: a user who set one keeps theirs.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or ``None`` on a system without it (macOS, musl: their allocators differ)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # not glibc
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Serve blocks up to :data:`MMAP_THRESHOLD_BYTES` from the heap and keep freed memory in
    the process (glibc ``mallopt``). Returns whether the settings were applied: ``False``
    without glibc, when :data:`ENV_SWITCH` is off (``0``), or when the user chose glibc's thresholds
    in the environment (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``: theirs stand).
    Safe to call more than once."""
    off = os.environ.get(ENV_SWITCH, "1").strip().lower() in OFF
    if off or any(v in os.environ for v in USER_SETTINGS):
        return False
    libc = _libc()
    if libc is None:
        return False
    # mallopt returns 1 on success. A threshold set by hand also stops glibc from moving the
    # mmap threshold itself (it raises it to each freed mapped block's size, and the trim
    # threshold to twice that, so 6 MiB blocks would still be handed back at every step).
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    trimmed = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    unmapped = libc.mallopt(M_MMAP_MAX, MMAP_MAX) == 1
    _state.update(
        applied=mapped and trimmed and unmapped,
        mmap_max=MMAP_MAX,
        largest_kept=largest_kept_bytes(),
    )
    return bool(_state["applied"])


def largest_kept_bytes() -> int:
    """The largest block kept in the heap: :data:`KEEP_BLOCKS_SWITCH` (MiB) if set, else
    :data:`LARGEST_KEPT_BYTES`. A value that is not a number of MiB ≥ 0 is an error that names
    the setting."""
    raw = os.environ.get(KEEP_BLOCKS_SWITCH)
    if raw is None or not raw.strip():
        return LARGEST_KEPT_BYTES
    try:
        mib = float(raw)
    except ValueError:
        mib = math.nan
    if not 0 <= mib < math.inf:
        raise ConfigError(
            f"{KEEP_BLOCKS_SWITCH}={raw!r} in the environment: expected the largest block to "
            f"keep, in MiB (a number >= 0; the default is {LARGEST_KEPT_BYTES // 2**20})"
        )
    return int(mib * 2**20)


def fit_heap_to(largest_block: int) -> None:
    """Before a call whose largest tensor is ``largest_block`` bytes: keep every block in the
    heap (:data:`MMAP_MAX`) when it is at most :func:`largest_kept_bytes`, or let glibc map
    blocks above 32 MiB afresh again when it is larger. Nothing unless
    :func:`keep_freed_memory` applied its settings. Blocks already in the heap stay there."""
    libc = _libc()
    if not _state["applied"] or libc is None:
        return
    want = MMAP_MAX if largest_block <= int(_state["largest_kept"]) else GLIBC_MMAP_MAX
    if want != _state["mmap_max"]:
        libc.mallopt(M_MMAP_MAX, want)
        _state["mmap_max"] = want
