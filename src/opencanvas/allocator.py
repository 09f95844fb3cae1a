"""Process-wide malloc settings for stages that churn through large buffers.

The YFCC reader allocates and frees a 16 MB chunk about 25 times per million lines,
and DuckDB allocates its result buffers for each chunk. By default glibc hands blocks
that large back to the kernel (mmap / heap trim), so every reuse page-faults freshly
zeroed memory: on this 2-core VM that was ~375k minor faults and ~10% of the CPU time
per million lines (`benchmarks/RESULTS.md`). Keeping freed memory in the heap removes
most of it. (Arrow's own pool, mimalloc, is not affected by these settings.)
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for this setting on 64-bit
TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Serve blocks under 32 MB from the heap and keep up to 1 GB of freed heap (glibc only).

    Returns whether the settings took effect; elsewhere (macOS, musl) it does nothing.
    The cost is a resident size that stays at its peak until the process ends.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
