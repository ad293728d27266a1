"""Keep large freed buffers in the process (glibc ``mallopt``), the fast path on CPU.

By default glibc hands every freed buffer above its mmap threshold back to the OS, so on the CPU
backend each fresh output array of a large jitted op page-faults its memory in again; that costs
more than the arithmetic of a cheap activation (``benchmarks/activations.py`` measures it: a jitted
sigmoid over 16M float32 ran at 0.67 G elements/s with the default malloc and at 4.25 G elements/s
with these settings, the same as writing into a preallocated buffer). Raising the mmap and trim
thresholds keeps freed memory for reuse; one arena keeps it in one place. The cost is that freed
memory is not returned to the OS while the process lives, which suits a training process.

The ``jaxnn`` console script applies this at start-up, before JAX allocates anything;
``JAXNN_DEFAULT_MALLOC=1`` turns it off. Library users can start Python with the equivalent
environment variables ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
MALLOC_ARENA_MAX=1``.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: Marks a process where the settings were applied (read by the benchmarks to label results).
MARKER = "JAXNN_MALLOC_APPLIED"


def apply_fast_malloc() -> bool:
    """Apply the settings with ``mallopt(3)``; ``True`` if glibc accepted all three.

    Does nothing (returns ``False``) off Linux, without glibc, with ``JAXNN_DEFAULT_MALLOC=1``,
    or when the user set any ``MALLOC_*`` variable (their choice stands).
    """
    if os.environ.get("JAXNN_DEFAULT_MALLOC") == "1" or not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all([mallopt(_M_MMAP_THRESHOLD, 1 << 30), mallopt(_M_TRIM_THRESHOLD, 1 << 30),
              mallopt(_M_ARENA_MAX, 1)])
    if ok:
        os.environ[MARKER] = "mallopt"
    return ok
