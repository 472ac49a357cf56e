"""Monotonic alignment search (GlowTTS's MAS) on the GPU: the same paths as Coqui's Cython, no host trip.

Coqui's GlowTTS finds each utterance's alignment with monotonic_alignment_search.maximum_path,
a Cython loop on the CPU: on a GPU every training step copies the log-likelihood matrix to the
host, waits for it (a host-device sync in the middle of the forward pass), runs the loop and
copies the path back. maximum_path() here runs the same dynamic programme as a Triton kernel on
the GPU instead (one program per utterance: a column sweep over the frames with the text
positions in parallel, then the backtrack), so the forward pass never waits for the host.

The arithmetic is Cython's, operation for operation in float32 (value[x, y] += max(left, diagonal),
the same -1e9 outside the band, the same tie rule in the backtrack: stay on the same text position
unless the diagonal is strictly larger), so the paths are identical, not merely close:
tests/test_alignment.py compares them on random and real batches, running the kernel through
Triton's interpreter on the CPU (TRITON_INTERPRET=1).

On the CPU, or where Triton is missing, it is Coqui's Cython function.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from monotonic_alignment_search import maximum_path as cython_maximum_path

logger = logging.getLogger(__name__)

MAX_NEG = -1e9  # Cython's max_neg_val (exactly representable in float32)


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, built on first use (TRITON_INTERPRET is read when it is defined)."""
    import triton
    import triton.language as tl

    # Unannotated on purpose: triton.jit reads parameter annotations (constexpr, type specialisation).
    @triton.jit
    def mas_kernel(  # type: ignore[no-untyped-def]
        value_ptr,
        path_ptr,
        t_x_ptr,
        t_y_ptr,
        stride_b,
        stride_x,
        BLOCK_X: tl.constexpr,
    ):
        b = tl.program_id(0)
        t_x = tl.load(t_x_ptr + b)
        t_y = tl.load(t_y_ptr + b)
        value = value_ptr + b * stride_b
        path = path_ptr + b * stride_b
        xs = tl.arange(0, BLOCK_X)
        if (t_x > 0) & (t_y > 0):
            # Forward: column y from column y - 1, in place, text positions in parallel.
            for y in range(t_y):
                in_band = (xs >= tl.maximum(0, t_x + y - t_y)) & (xs < tl.minimum(t_x, y + 1))
                here = tl.load(value + xs * stride_x + y, mask=in_band, other=0.0)
                # value[x, y-1] (x == y: outside the band, max_neg)
                left = tl.load(value + xs * stride_x + (y - 1), mask=in_band & (xs != y), other=MAX_NEG)
                # value[x-1, y-1] (x == 0: 0 at the origin, max_neg elsewhere)
                corner = tl.where(y == 0, 0.0, MAX_NEG)
                diagonal = tl.load(value + (xs - 1) * stride_x + (y - 1), mask=in_band & (xs > 0), other=corner)
                tl.store(value + xs * stride_x + y, tl.maximum(left, diagonal) + here, mask=in_band)
                tl.debug_barrier()  # the next column reads this one's neighbours
            # Backtrack from the last text position at the last frame.
            index = t_x - 1
            for step in range(t_y):
                y = t_y - 1 - step
                tl.store(path + index * stride_x + y, 1.0)
                stay = tl.load(value + index * stride_x + (y - 1), mask=(y > 0) & (index > 0), other=0.0)
                move = tl.load(value + (index - 1) * stride_x + (y - 1), mask=(y > 0) & (index > 0), other=0.0)
                index = index - ((index != 0) & ((index == y) | (stay < move))).to(tl.int32)

    return mas_kernel


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def maximum_path_triton(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Coqui's maximum_path(value, mask) as a Triton kernel: value, mask [b, t_x, t_y]; the path
    has value's dtype and device. Runs on a CUDA device, or on the CPU under TRITON_INTERPRET=1."""
    values = (value * mask).float().contiguous()  # the kernel works in place on its own copy
    path = torch.zeros_like(values)
    t_x = mask.sum(1)[:, 0].to(torch.int32)
    t_y = mask.sum(2)[:, 0].to(torch.int32)
    batch, width, frames = values.shape
    if batch and width and frames:
        block = max(16, 1 << (width - 1).bit_length())
        _kernel()[(batch,)](
            values, path, t_x, t_y, width * frames, frames, BLOCK_X=block, num_warps=4 if block >= 256 else 1
        )
    return path.to(dtype=value.dtype)


def maximum_path(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The alignment path for GlowTTS's forward pass: the Triton kernel on a CUDA device,
    Coqui's Cython elsewhere (or when Triton is missing or fails, with one warning)."""
    if value.is_cuda and triton_available() and not _failed:
        try:
            return maximum_path_triton(value, mask)
        except Exception as exc:  # noqa: BLE001 - a driver or compiler problem: fall back, say so once
            _fail(exc)
    return cython_maximum_path(value, mask)


_failed = False


def _fail(exc: Exception) -> None:
    global _failed
    _failed = True
    logger.warning(
        " ! Alignment search on the GPU failed (%s: %s); using Coqui's CPU version (a host round trip per step)",
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
