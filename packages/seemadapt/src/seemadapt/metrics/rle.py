"""COCO RLE encoding of many masks at once, on several threads: pycocotools' own C encoder without the GIL.

``pycocotools.mask.encode`` runs its C loop (``rleEncode``: one compare per pixel) while holding the GIL, so 100 masks
of a 480x640 image take about 20 ms on one core whatever the machine has. Its extension module also exports that C API
(``maskApi.h``: ``rleEncode``, ``rleToString``, ``rleArea``, ``rleFree``); called through ``ctypes``, which releases the
GIL, the masks are encoded in contiguous groups, one per worker thread (:mod:`seemadapt.workers`). The counts strings
are pycocotools' own, byte for byte. Where the extension does not export those symbols (another build),
:func:`encode_with_areas` falls back to ``pycocotools.mask.encode`` and ``area``. :func:`encode_in_background` returns
at once and lets the caller go on (``seemadapt.evaluate`` scores the next image meanwhile).
"""

from __future__ import annotations

import ctypes
import importlib.util
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from seemadapt.workers import WORKER_THREADS, worker_pool

__all__ = ["PendingEncoding", "encode_in_background", "encode_with_areas"]

_MIN_PIXELS_PER_THREAD = 1 << 20  # below about a megapixel per thread, a thread costs more than it saves


class _Rle(ctypes.Structure):
    """``maskApi.h``'s ``RLE``: ``siz h, w, m; uint *cnts`` (``siz`` is ``unsigned long``)."""

    _fields_ = [
        ("h", ctypes.c_ulong),
        ("w", ctypes.c_ulong),
        ("m", ctypes.c_ulong),
        ("cnts", ctypes.POINTER(ctypes.c_uint)),
    ]


@dataclass(frozen=True)
class _Api:
    encode: Any
    to_string: Any
    area: Any
    free_rle: Any
    free: Any


@lru_cache(maxsize=1)
def _api() -> _Api | None:
    """pycocotools' C functions with their signatures, or None where the extension or libc does not export them."""
    spec = importlib.util.find_spec("pycocotools._mask")  # the compiled library that holds maskApi.c
    if spec is None or not spec.origin:
        return None
    try:
        library = ctypes.CDLL(spec.origin)
        libc = ctypes.CDLL(None)
        api = _Api(library.rleEncode, library.rleToString, library.rleArea, library.rleFree, libc.free)
    except (OSError, AttributeError, TypeError):
        return None
    rle_array = ctypes.POINTER(_Rle)
    api.encode.argtypes = [rle_array, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    api.encode.restype = None
    api.to_string.argtypes = [rle_array]
    api.to_string.restype = ctypes.c_void_p  # a malloc'ed char*: read, then freed with libc's free
    api.area.argtypes = [rle_array, ctypes.c_ulong, ctypes.POINTER(ctypes.c_uint)]
    api.area.restype = None
    api.free_rle.argtypes = [rle_array]
    api.free_rle.restype = None
    api.free.argtypes = [ctypes.c_void_p]
    api.free.restype = None
    return api


Encoded = tuple[list[dict[str, Any]], list[int]]  # (RLEs, areas)


class PendingEncoding:
    """RLEs and areas being encoded on :func:`~seemadapt.workers.worker_pool` (:func:`encode_in_background`)."""

    def __init__(self, parts: list[Future[Encoded]] | None = None, done: Encoded | None = None) -> None:
        self._parts = parts or []
        self._done = done

    def result(self) -> Encoded:
        """The RLEs and areas, in the masks' order (waits for the workers; raises what they raised)."""
        if self._done is None:
            results = [part.result() for part in self._parts]
            self._done = (
                [rle for rles, _ in results for rle in rles],
                [a for _, areas in results for a in areas],
            )
            self._parts = []
        return self._done


def encode_with_areas(masks: np.ndarray) -> Encoded:
    """COCO RLEs (``{"size": [H, W], "counts": bytes}``, as ``pycocotools.mask.encode`` gives) and pixel areas of
    ``masks``: uint8 ``[H, W, N]`` in Fortran order (``[N, W, H]`` C-contiguous storage), as pycocotools takes."""
    return encode_in_background(masks, wait=True).result()


def encode_in_background(masks: np.ndarray, *, wait: bool = False) -> PendingEncoding:
    """:func:`encode_with_areas` on the worker threads, returning at once (``wait``: the caller waits anyway, so one
    group of masks is encoded on the calling thread). ``masks`` must not change until :meth:`PendingEncoding.result`
    has returned."""
    if masks.ndim != 3 or masks.dtype != np.uint8 or not masks.flags.f_contiguous:
        raise ValueError(
            f"masks must be a Fortran-ordered uint8 [H, W, N] array, got {masks.dtype} {masks.shape} "
            f"(Fortran order: {masks.flags.f_contiguous})."
        )
    height, width, count = masks.shape
    api = _api()
    if api is None or count == 0:
        rles = mask_utils.encode(masks) if count else []
        return PendingEncoding(done=(rles, [int(a) for a in mask_utils.area(rles)] if rles else []))
    groups = max(1, min(WORKER_THREADS, count, height * width * count // _MIN_PIXELS_PER_THREAD))
    bounds = np.linspace(0, count, groups + 1).astype(int).tolist()
    parts = [(start, stop) for start, stop in pairwise(bounds) if stop > start]
    if wait and len(parts) == 1:
        return PendingEncoding(done=_encode_group(api, masks, height, width, *parts[0]))
    pool = worker_pool()
    return PendingEncoding([pool.submit(_encode_group, api, masks, height, width, *part) for part in parts])


def _encode_group(
    api: _Api, masks: np.ndarray, height: int, width: int, start: int, stop: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Masks ``start:stop`` (each ``height * width`` bytes, one after another in ``masks``' storage)."""
    count = stop - start
    rles = (_Rle * count)()
    areas = (ctypes.c_uint * count)()
    address = masks.ctypes.data + start * height * width
    api.encode(rles, address, height, width, count)  # ctypes releases the GIL for the call
    try:
        api.area(rles, count, areas)
        out = []
        for k in range(count):
            pointer = api.to_string(ctypes.byref(rles[k]))
            try:
                out.append({"size": [height, width], "counts": ctypes.string_at(pointer)})
            finally:
                api.free(pointer)
    finally:
        for k in range(count):
            api.free_rle(ctypes.byref(rles[k]))
    return out, list(areas)
