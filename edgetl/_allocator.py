"""Keep glibc from returning large blocks to the OS between inferences.

By default glibc serves allocations above a (dynamic, at most 32 MB) threshold with a fresh
``mmap`` and gives them back with ``munmap`` on free. PyTorch's CPU activations at batch >= 8
cross it, so every forward pass page-faults its buffers in again: measured here, EfficientNet-Lite0
at batch 8 ran 118-170 ms by default and 55-60 ms with the threshold raised, and which of the two a
process got depended on what it had allocated before. Raising the mmap and trim thresholds (what
tcmalloc/jemalloc, the allocators PyTorch's CPU performance guide recommends, do in effect) makes
latency steady and fine-tuning faster; the cost is that freed memory stays with the process.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
THRESHOLD_BYTES = 1 << 30
_applied: bool | None = None


def steady_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds for this process; False where that is not possible (non-glibc)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(THRESHOLD_BYTES))
                                and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(THRESHOLD_BYTES)))
            except (OSError, AttributeError):  # musl and others have no mallopt
                _applied = False
    return _applied
