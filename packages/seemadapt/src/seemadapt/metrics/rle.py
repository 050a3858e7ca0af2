"""COCO RLE encoding of many masks at once, on several threads: pycocotools' own C encoder without the GIL.

``pycocotools.mask.encode`` runs its C loop (``rleEncode``: one compare per pixel) while holding the GIL, so 100 masks
of a 480x640 image take about 20 ms on one core whatever the machine has. Its extension module also exports that C API
(``maskApi.h``: ``rleEncode``, ``rleToString``, ``rleArea``, ``rleFree``); called through ``ctypes``, which releases the
GIL, the masks are encoded in contiguous groups, one per worker thread (:mod:`seemadapt.workers`). The counts strings
are pycocotools' own, byte for byte. Where the extension does not export those symbols (another build),
:func:`encode_with_areas` falls back to ``pycocotools.mask.encode`` and ``area``. :func:`encode_in_background` returns
at once and lets the caller go on (``seemadapt.evaluate`` scores the next image meanwhile). Given :class:`Overlap`
references, each group also takes its masks' IoUs with them (``rleIou``, the function ``pycocotools.mask.iou`` and
``COCOeval`` call) while its RLEs are still in C form: ``COCOeval`` would decode every counts string again.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from seemadapt.workers import WORKER_THREADS, worker_pool

__all__ = ["Encoded", "Overlap", "PendingEncoding", "encode_in_background", "encode_with_areas"]

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
    from_string: Any
    iou: Any


@lru_cache(maxsize=1)
def _api() -> _Api | None:
    """pycocotools' C functions with their signatures, or None where the extension or libc does not export them."""
    spec = importlib.util.find_spec("pycocotools._mask")  # the compiled library that holds maskApi.c
    if spec is None or not spec.origin:
        return None
    try:
        library = ctypes.CDLL(spec.origin)
        libc = ctypes.CDLL(None)
        api = _Api(
            library.rleEncode,
            library.rleToString,
            library.rleArea,
            library.rleFree,
            libc.free,
            library.rleFrString,
            library.rleIou,
        )
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
    api.from_string.argtypes = [rle_array, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_ulong]
    api.from_string.restype = None
    api.iou.argtypes = [
        rle_array,
        rle_array,
        ctypes.c_ulong,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    api.iou.restype = None
    return api


class Encoded(NamedTuple):
    """What an encoding gives, in the masks' order."""

    rles: list[dict[str, Any]]
    areas: list[int]
    ious: np.ndarray | None = None
    """``[N, R]`` float64 IoUs with the :class:`Overlap` references (NaN where the labels differ); None without."""


@dataclass(frozen=True)
class Overlap:
    """References to take each mask's IoU with, as ``COCOeval(iouType="segm")`` does: only with the references of
    the mask's own label, and for a crowd reference the mask's own area as the union.

    ``references``: compressed COCO RLEs (``{"size": [H, W], "counts": bytes or str}``); ``reference_labels`` and
    ``crowd`` one per reference; ``labels`` one per mask. A reference of another size than the masks gets IoU -1,
    as in pycocotools.
    """

    references: Sequence[dict[str, Any]]
    reference_labels: Sequence[int]
    crowd: Sequence[int]
    labels: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        if not len(self.references) == len(self.reference_labels) == len(self.crowd):
            raise ValueError(
                f"Overlap needs one label and one crowd flag per reference, got {len(self.references)} references, "
                f"{len(self.reference_labels)} labels and {len(self.crowd)} crowd flags."
            )

    def pairs(self, start: int, stop: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """For masks ``start:stop``: ``(mask indices within them, reference indices)`` per label both have."""
        labels = np.asarray(self.labels[start:stop])
        references = np.asarray(self.reference_labels, dtype=np.int64)
        return [
            (np.nonzero(labels == label)[0], np.nonzero(references == label)[0])
            for label in np.intersect1d(labels, references)
        ]


class PendingEncoding:
    """RLEs and areas being encoded on :func:`~seemadapt.workers.worker_pool` (:func:`encode_in_background`)."""

    def __init__(self, parts: list[Future[Encoded]] | None = None, done: Encoded | None = None) -> None:
        self._parts = parts or []
        self._done = done

    def result(self) -> Encoded:
        """The RLEs, areas and IoUs, in the masks' order (waits for the workers; raises what they raised)."""
        if self._done is None:
            results = [part.result() for part in self._parts]
            ious = [part.ious for part in results]
            self._done = Encoded(
                [rle for part in results for rle in part.rles],
                [a for part in results for a in part.areas],
                None if any(part is None for part in ious) else np.concatenate(ious),
            )
            self._parts = []
        return self._done


def encode_with_areas(masks: np.ndarray, overlap: Overlap | None = None) -> Encoded:
    """COCO RLEs (``{"size": [H, W], "counts": bytes}``, as ``pycocotools.mask.encode`` gives) and pixel areas of
    ``masks``: uint8 ``[H, W, N]`` in Fortran order (``[N, W, H]`` C-contiguous storage), as pycocotools takes; and
    the IoUs with ``overlap``'s references when given."""
    return encode_in_background(masks, wait=True, overlap=overlap).result()


def encode_in_background(
    masks: np.ndarray, *, wait: bool = False, overlap: Overlap | None = None
) -> PendingEncoding:
    """:func:`encode_with_areas` on the worker threads, returning at once (``wait``: the caller waits anyway, so one
    group of masks is encoded on the calling thread). ``masks`` must not change until :meth:`PendingEncoding.result`
    has returned."""
    if masks.ndim != 3 or masks.dtype != np.uint8 or not masks.flags.f_contiguous:
        raise ValueError(
            f"masks must be a Fortran-ordered uint8 [H, W, N] array, got {masks.dtype} {masks.shape} "
            f"(Fortran order: {masks.flags.f_contiguous})."
        )
    height, width, count = masks.shape
    if overlap is not None and len(overlap.labels) != count:
        raise ValueError(f"Overlap has {len(overlap.labels)} labels for {count} masks.")
    api = _api()
    if api is None or count == 0:
        return PendingEncoding(done=_encode_in_python(masks, overlap))
    groups = max(1, min(WORKER_THREADS, count, height * width * count // _MIN_PIXELS_PER_THREAD))
    bounds = np.linspace(0, count, groups + 1).astype(int).tolist()
    parts = [(start, stop) for start, stop in pairwise(bounds) if stop > start]
    if wait and len(parts) == 1:
        return PendingEncoding(done=_encode_group(api, masks, overlap, *parts[0]))
    pool = worker_pool()
    return PendingEncoding([pool.submit(_encode_group, api, masks, overlap, *part) for part in parts])


def _encode_in_python(masks: np.ndarray, overlap: Overlap | None) -> Encoded:
    """:func:`encode_with_areas` through pycocotools' Python API (no C API, or no masks)."""
    rles = mask_utils.encode(masks) if masks.shape[-1] else []
    areas = [int(a) for a in mask_utils.area(rles)] if rles else []
    if overlap is None:
        return Encoded(rles, areas)
    ious = np.full((len(rles), len(overlap.references)), np.nan)
    for rows, columns in overlap.pairs(0, len(rles)):
        ious[np.ix_(rows, columns)] = mask_utils.iou(
            [rles[k] for k in rows],
            [overlap.references[k] for k in columns],
            [int(overlap.crowd[k]) for k in columns],
        )
    return Encoded(rles, areas, ious)


def _encode_group(api: _Api, masks: np.ndarray, overlap: Overlap | None, start: int, stop: int) -> Encoded:
    """Masks ``start:stop`` (each ``height * width`` bytes, one after another in ``masks``' storage)."""
    height, width, _ = masks.shape
    count = stop - start
    rles = (_Rle * count)()
    areas = (ctypes.c_uint * count)()
    address = masks.ctypes.data + start * height * width
    api.encode(rles, address, height, width, count)  # ctypes releases the GIL for the call
    try:
        api.area(rles, count, areas)
        ious = None if overlap is None else _ious(api, rles, overlap, start, stop)
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
    return Encoded(out, list(areas), ious)


def _ious(api: _Api, rles: ctypes.Array, overlap: Overlap, start: int, stop: int) -> np.ndarray:
    """``[stop - start, R]`` IoUs of the encoded masks ``rles`` (masks ``start:stop``) with the references of their
    label (``rleIou``, as ``pycocotools.mask.iou``; NaN for other labels)."""
    ious = np.full((stop - start, len(overlap.references)), np.nan)
    for rows, columns in overlap.pairs(start, stop):
        references = (_Rle * len(columns))()  # zeroed: rleFree of one not yet decoded frees NULL
        try:
            for k, column in enumerate(columns.tolist()):
                reference = overlap.references[column]
                counts = reference["counts"]
                counts = counts.encode() if isinstance(counts, str) else counts  # str when read from JSON
                api.from_string(ctypes.byref(references[k]), counts, *reference["size"])
            masks = (_Rle * len(rows))(*(rles[k] for k in rows.tolist()))  # the same counts, not copied
            crowd = np.ascontiguousarray([overlap.crowd[k] for k in columns], dtype=np.uint8)
            out = np.empty(len(rows) * len(columns))  # rleIou writes o[reference * m + mask]
            api.iou(masks, references, len(rows), len(columns), crowd.ctypes.data, out.ctypes.data)
            ious[np.ix_(rows, columns)] = out.reshape(len(columns), len(rows)).T
        finally:
            for k in range(len(columns)):
                api.free_rle(ctypes.byref(references[k]))
    return ious
