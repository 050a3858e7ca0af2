"""Label map -> panoptic segments: the class regions of a label map, things split into connected components."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["CONNECTIVITY", "Region", "label_map_regions"]

#: Connectivity used to split thing masks into instances (8: thin, slanted objects stay whole).
CONNECTIVITY = 8
_STRUCTURE = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


@dataclass(frozen=True)
class Region:
    """One future segment: ``mask`` is its pixels inside the window at ``(top, left)`` of the label map."""

    category: int
    mask: np.ndarray
    top: int
    left: int

    @property
    def window(self) -> tuple[slice, slice]:
        """Where ``mask`` sits in the full label map."""
        return (
            slice(self.top, self.top + self.mask.shape[0]),
            slice(self.left, self.left + self.mask.shape[1]),
        )

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def label_map_regions(
    label_map: np.ndarray,
    isthing: Sequence[bool],
    *,
    split_things: bool = True,
    connectivity: int = CONNECTIVITY,
) -> Iterator[Region]:
    """The regions of ``label_map`` (category index per pixel; values outside ``0..len(isthing)-1`` are void).

    Categories come in index order. A stuff class (or any class with ``split_things=False``) is one region over the
    whole map; a thing class yields one region per connected component, in raster order of their first pixel, each
    cropped to its bounding box so that the cost follows the objects, not the image.
    """
    if connectivity not in _STRUCTURE:
        raise ValueError(f"`connectivity` must be 4 or 8, got {connectivity}.")
    for cat, thing in enumerate(isthing):
        mask = label_map == cat
        if not mask.any():
            continue
        if not (thing and split_things):
            yield Region(cat, mask, 0, 0)
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        top, left = int(rows[0]), int(cols[0])
        crop = mask[top : int(rows[-1]) + 1, left : int(cols[-1]) + 1]
        labels, _ = ndimage.label(crop, structure=_STRUCTURE[connectivity])
        for j, box in enumerate(ndimage.find_objects(labels), start=1):
            yield Region(cat, labels[box] == j, top + box[0].start, left + box[1].start)
