"""Settings for processes that run numpy audio code one file after another, one process per core.

Both were measured once on the 2-core development machine while prepare was built (the numbers
below; docs/BENCHMARKS.md section 1 has prepare's resulting speed):
- BLAS threads: Coqui's mel projection is a float32 x float64 matrix product; with one process
  per core, numpy's default BLAS threads only contend (~18x slower product, ~4x slower loader).
- glibc malloc: numpy buffers above 128 KB (every waveform, STFT and mel of a 5 s utterance) are
  mmap'ed and returned to the kernel on free, then page-faulted back in for the next file:
  ~8 ms of system time per file, half of prepare's time. Raising the thresholds keeps them in
  the heap for reuse; memory use stays bounded by the largest file's working set.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from typing import Any

from threadpoolctl import ThreadpoolController, threadpool_limits

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


_controller: ThreadpoolController | None = None


def one_blas_thread() -> Any:
    """A context with numpy's BLAS on one thread (torch's own threads untouched); ~35 us to enter.
    Results of a BLAS product depend on the thread count in their last bits, so code that must
    give identical numbers in any process runs in it."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def limit_blas_threads() -> Any:
    """One BLAS thread in this process; keep the returned object referenced for as long as it should last."""
    return threadpool_limits(limits=1)


def keep_freed_memory() -> bool:
    """Make glibc keep large freed buffers for reuse (no-op elsewhere). Returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        )
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
