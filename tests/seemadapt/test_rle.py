"""COCO RLE encoding on several threads against pycocotools' own ``mask.encode`` and ``mask.area``."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from seemadapt.metrics import rle


def fortran_masks(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[H, W, N]`` in Fortran order: blobs (few runs), noise (many), an empty and a full mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for k in range(count):
        kind = k % 4
        if kind == 0:
            cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(1, max(height, width) / 2)
            masks.append((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
        elif kind == 1:
            masks.append(rng.random((height, width)) < 0.5)
        else:
            masks.append(np.full((height, width), kind == 3))
    return np.asfortranarray(np.stack(masks, axis=-1).astype(np.uint8))


def expected(masks: np.ndarray) -> rle.Encoded:
    rles = mask_utils.encode(masks)
    return rle.Encoded(rles, [int(a) for a in mask_utils.area(rles)])


@pytest.mark.parametrize(("count", "height", "width"), [(1, 5, 7), (9, 31, 17), (13, 64, 48)])
@pytest.mark.parametrize("pixels_per_thread", [1, None])  # every call split over threads / the default split
def test_encode_equals_pycocotools_byte_for_byte(count, height, width, pixels_per_thread, monkeypatch):
    if pixels_per_thread is not None:
        monkeypatch.setattr(rle, "_MIN_PIXELS_PER_THREAD", pixels_per_thread)
        monkeypatch.setattr(
            rle, "WORKER_THREADS", 3
        )  # uneven groups, more threads than this machine may have
    masks = fortran_masks(count, height, width)
    assert rle.encode_with_areas(masks) == expected(masks)


def test_encode_without_the_c_api_falls_back_to_pycocotools(monkeypatch):
    assert (
        rle._api() is not None
    )  # the pinned pycocotools exports its C API: the threaded path is the one tested
    monkeypatch.setattr(rle, "_api", lambda: None)
    masks = fortran_masks(6, 12, 10, seed=1)
    assert rle.encode_with_areas(masks) == expected(masks)


def test_encode_of_no_masks_and_bad_layouts():
    assert rle.encode_with_areas(np.zeros((4, 5, 0), dtype=np.uint8, order="F")) == ([], [], None)
    with pytest.raises(ValueError, match="Fortran-ordered uint8"):
        rle.encode_with_areas(np.zeros((4, 5, 2), dtype=np.uint8))  # C order: pixels would be read wrongly
    with pytest.raises(ValueError, match="Fortran-ordered uint8"):
        rle.encode_with_areas(np.zeros((4, 5, 2), dtype=bool, order="F"))


def test_encoding_in_the_background_returns_at_once_and_gives_the_same(monkeypatch):
    monkeypatch.setattr(rle, "_MIN_PIXELS_PER_THREAD", 1)
    masks = fortran_masks(7, 20, 30, seed=2)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    encode_group = rle._encode_group

    def held(*args):  # each group waits until the test lets it go: the call must not wait for it
        started.set()
        release.wait(timeout=10)
        out = encode_group(*args)
        finished.set()
        return out

    monkeypatch.setattr(rle, "_encode_group", held)
    pending = rle.encode_in_background(masks)
    assert not finished.is_set()  # returned while the groups are held
    assert started.wait(timeout=10)  # and they do run on the workers
    release.set()
    assert pending.result() == expected(masks) and pending.result() == expected(masks)  # result() twice: same


def test_background_errors_are_raised_by_result(monkeypatch):
    def broken(*args):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(rle, "_encode_group", broken)
    pending = rle.encode_in_background(fortran_masks(3, 8, 8))
    with pytest.raises(RuntimeError, match="encoder failed"):
        pending.result()


@pytest.mark.parametrize("c_api", [True, False])
def test_ious_with_references_equal_pycocotools_iou_per_label(c_api, monkeypatch):
    """Each mask's IoU with the references of its own label (crowd ones by the mask's area, as ``COCOeval``), NaN
    with the others: on threads in uneven groups, and through pycocotools' Python API without the C API; references'
    counts as bytes or as str."""
    monkeypatch.setattr(rle, "_MIN_PIXELS_PER_THREAD", 1)
    monkeypatch.setattr(rle, "WORKER_THREADS", 3)
    if not c_api:
        monkeypatch.setattr(rle, "_api", lambda: None)
    masks = fortran_masks(11, 24, 20, seed=3)
    references = mask_utils.encode(fortran_masks(6, 24, 20, seed=4))
    references[1:3] = [
        {**r, "counts": r["counts"].decode()} for r in references[1:3]
    ]  # str, as read from JSON
    labels, reference_labels, crowd = np.arange(11) % 3, [0, 1, 1, 2, 5, 0], [0, 1, 0, 0, 0, 1]
    overlap = rle.Overlap(references, reference_labels, crowd, labels)
    want = np.full((11, 6), np.nan)
    for i, j in np.argwhere(labels[:, None] == np.array(reference_labels)[None, :]):
        want[i, j] = mask_utils.iou(mask_utils.encode(masks[:, :, i : i + 1]), [references[j]], [crowd[j]])[
            0, 0
        ]
    assert np.isfinite(want).sum() == 19 and (want[np.isfinite(want)] > 0).any()
    for encoded in (
        rle.encode_with_areas(masks, overlap),
        rle.encode_in_background(masks, overlap=overlap).result(),
    ):
        assert encoded[:2] == expected(masks)[:2]
        np.testing.assert_array_equal(encoded.ious, want)


def test_overlap_checks_its_lengths():
    with pytest.raises(ValueError, match="one label and one crowd flag per reference"):
        rle.Overlap([{"size": [2, 2], "counts": b"04"}], [0, 1], [0], np.zeros(3))
    overlap = rle.Overlap([], [], [], np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match="Overlap has 2 labels for 3 masks"):
        rle.encode_with_areas(fortran_masks(3, 4, 4), overlap)
