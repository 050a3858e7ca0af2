"""One process-wide pool of worker threads for work that runs without the GIL (PNG decoding in Pillow, pycocotools'
C encoder called through ``ctypes``).

Its threads start once and then wait: a call does not pay for starting threads, nor for the GIL hand-offs a fresh
thread needs before it runs (about 8 ms for the second of two decoding threads started in one call).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["WORKER_THREADS", "worker_pool"]

_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
WORKER_THREADS = max(1, min(4, _CPUS))
"""Threads in the pool: this process's CPUs, at most 4."""

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child has the pool object but none of its threads: it makes its own on first use."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def worker_pool() -> ThreadPoolExecutor:
    """The pool, created on first use. Its tasks must not wait on other tasks of the pool."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="seemadapt-worker")
        return _pool
