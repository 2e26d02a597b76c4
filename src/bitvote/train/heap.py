"""Keep a training process's freed memory in its heap, so a step does not page-fault its tensors in.

A CPU training step allocates and frees the same large tensors every step (activations,
the voters' leaf sums and their dL/ds, gradients). glibc serves blocks above its mmap
threshold (at most 32 MB) with fresh ``mmap`` pages and returns them on ``free``, so every
step faults each of those pages in again and the kernel zeroes them. glibc raises that
threshold as blocks come back, so the first steps pay most (docs/results.md has the
figures). With mmap off and trimming off, freed blocks stay in the heap and later steps
reuse them; the process then holds its peak footprint until it exits, which a training run
reaches in its first steps anyway.

Process-wide and permanent, so only the training entry points call it, on the CPU;
``BITVOTE_KEEP_HEAP=0`` leaves the allocator as it is. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "wanted"]

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_applied = False


def wanted() -> bool:
    """``BITVOTE_KEEP_HEAP=0`` turns :func:`keep_freed_memory` off (for A/B timing)."""
    return os.environ.get("BITVOTE_KEEP_HEAP", "1") != "0"


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it; True where that is in force."""
    global _applied
    if _applied:
        return True
    if not wanted():
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: other C libraries read these numbers otherwise
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # TypeError: no process handle (Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # -1: no trimming at all (mallopt(3)); 0 blocks served by mmap: every large block from the heap
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _applied
