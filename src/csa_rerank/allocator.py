"""glibc malloc settings for jobs that allocate and free the same large tensors over and over.

A forward pass of the re-ranker at K = 1024 allocates tens of MB of activations and frees them again; so does
every training step.  glibc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with fresh ``mmap`` calls and gives freed memory at the top of its heap back to the kernel once more than the
trim threshold is free there.  Either way the next pass gets new pages, and the kernel has to fault in and zero
every one of them: ~6,000 minor page faults per query at K = 1024, ~15 % of the bf16 forward pass on the
2-core benchmark machine (docs/benchmarks.md).  :func:`retain_freed_memory` raises both thresholds, so freed
blocks stay mapped and are reused: the process keeps its peak heap size instead of returning memory between
passes, which is what a re-ranking or training job wants.  (jemalloc or tcmalloc through ``LD_PRELOAD``, as
PyTorch's CPU tuning guide suggests, do the same, but need a library installed and set before start-up.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# the largest value glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2); larger blocks still get their own mmap
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**30


def retain_freed_memory() -> bool:
    """Keep freed heap memory mapped for reuse (glibc only; process-wide, for the rest of the process).

    Returns:
        True when both settings were applied; False where the C library is not glibc (nothing is changed).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
