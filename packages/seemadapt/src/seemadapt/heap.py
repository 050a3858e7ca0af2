"""glibc heap settings for CPU training and inference: keep freed memory in the process while the work runs.

A CPU training step allocates and frees a few hundred MB of large tensors, and inference a few [queries, H, W] mask
maps of ~120 MB per image. glibc hands allocations above its ``mmap`` threshold (128 KiB, raised dynamically to at
most 32 MiB) straight to the kernel and trims the top of the heap when more than twice that is free, so every step
faults the same memory in again as fresh zeroed pages: on a Focal-T step at 256 px about 0.1-0.5 M page faults, 5-10%
of the step's CPU time (mostly system time); in post-processing of 480x640 images, about a third of its time. Raising
both thresholds keeps those pages in the heap for reuse; it changes no computed value. :func:`release_freed_memory`
returns what is free to the kernel when the work ends; :func:`freed_memory_kept` does both around a block. Other C
libraries (and other systems) are left alone.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "KEEP_BYTES",
    "SETTLED_MMAP_BYTES",
    "freed_memory_kept",
    "keep_freed_memory",
    "release_freed_memory",
]

KEEP_BYTES = 1 << 30
"""Blocks up to this size come from the heap, and up to this much free heap top is kept (glibc ``mallopt``)."""

SETTLED_MMAP_BYTES = 32 << 20
"""glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems: the highest mmap threshold its dynamic adjustment reaches."""

_process_wide = False  # keep_freed_memory() called by the user: blocks leave the settings alone

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(limit: int = KEEP_BYTES, *, scoped: bool = False) -> bool:
    """Serve blocks up to ``limit`` bytes from the heap and keep up to ``limit`` free bytes at its top.

    Process-wide and idempotent; returns whether glibc accepted both settings (False elsewhere). Called by a user
    (a long-running inference process, say), it holds until :func:`release_freed_memory`: the blocks of
    :func:`freed_memory_kept` then leave it alone. ``scoped``: called by such a block.
    """
    global _process_wide
    if limit < 1:
        raise ValueError(f"keep_freed_memory: limit must be >= 1 byte, got {limit}.")
    _process_wide = _process_wide or not scoped
    libc = _glibc()
    if libc is None:
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(limit)) == 1
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(limit)) == 1
    return mmap_set and trim_set


def release_freed_memory() -> bool:
    """Return the free heap memory to the kernel (glibc ``malloc_trim``); whether any was released.

    The thresholds then go down to where glibc's own dynamic adjustment tops out on 64-bit systems
    (:data:`SETTLED_MMAP_BYTES`, trim at twice that), so that after training the process does not keep up to
    :data:`KEEP_BYTES` of free heap for whatever runs next.
    """
    global _process_wide
    _process_wide = False
    libc = _glibc()
    if libc is None:
        return False
    released = libc.malloc_trim(ctypes.c_size_t(0)) == 1
    libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(SETTLED_MMAP_BYTES))
    libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2 * SETTLED_MMAP_BYTES))
    return released


_depth = 0  # open freed_memory_kept blocks (evaluate() inside training, predict() inside evaluate())
_depth_lock = threading.Lock()


@contextmanager
def freed_memory_kept(device: Any = "cpu") -> Iterator[None]:
    """Keep freed memory in the heap for the block when its work runs on the CPU (``device``: a ``torch.device``,
    its name, or None when unknown: nothing changes); the outermost of nested blocks hands it back at its end.
    Used by training, :func:`seemadapt.evaluate` and ``SEEM.predict``."""
    global _depth
    if getattr(device, "type", device) != "cpu" or _process_wide:
        yield
        return
    with _depth_lock:
        _depth += 1
        if _depth == 1:
            keep_freed_memory(scoped=True)
    try:
        yield
    finally:
        with _depth_lock:
            _depth -= 1
            if _depth == 0:
                release_freed_memory()
