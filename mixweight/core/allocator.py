"""glibc malloc thresholds for training: freed activation memory is kept for the next step, not re-faulted.

A training step allocates and frees the same activation tensors every step, many of them megabytes
(gpt2-tiny at 16 x 128 tokens: a 6 MiB tensor per MLP activation and per temporary of its GELU). glibc
serves large allocations with fresh mmap()s and trims freed memory at the top of its heap back to the
kernel, so every step page-faults those megabytes in again and the kernel zeroes them (a GELU of that size
took 3x to 4.7x more minor faults per step with glibc's defaults; on a whole quickstart arm the CPU time
saved was within the noise of the measurement: benchmarks/RESULTS.md, issue 26).
`keep_freed_memory` raises both thresholds once per process, so memory freed in one step serves the next.

Only where the allocation happens changes, never what is computed (torch aligns its CPU tensors to 64
bytes whatever malloc returns): runs are bit-identical with and without it. What a user sees is that up to
1 GiB of freed memory stays with the process between steps instead of going back to the system (the peak
RSS was not measured either way). Nothing is changed where the C library is not glibc, or when the user
set glibc's malloc options (MALLOC_*_ variables, GLIBC_TUNABLES).
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt() parameters (malloc.h) and values: the mmap threshold's ceiling on 64-bit glibc is 32 MiB
# (larger tensors keep their own mmap, where a page fault per 4 KiB is small beside the work on them);
# up to 1 GiB of free memory at the heap's top is kept rather than trimmed.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True when they are set (now or before)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not _is_glibc() or any(name in os.environ for name in USER_SETTINGS):
        return False
    libc = ctypes.CDLL(None)
    _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


def _is_glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # musl and others do not know the name
        return False
