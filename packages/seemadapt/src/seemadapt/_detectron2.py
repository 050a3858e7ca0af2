"""The one door to detectron2: every seemadapt import of detectron2 goes through this module.

detectron2 0.6 (installed as the byte-identical ``pb1-detectron2`` redistribution, built without its
C++ extension) predates Pillow 10 and NumPy 1.24. This module makes the pure-Python parts we use work
on the current stack without touching NumPy globally:

* ``PIL.Image.LINEAR`` (removed in Pillow 10) is a default argument in ``detectron2.data.transforms``;
  it is the old name of ``Image.BILINEAR``.
* ``detectron2._C`` is imported unconditionally by a few modules whose compiled ops we never call
  (deformable conv, rotated boxes, the fast COCO evaluator); an empty stand-in module lets them import.
* A handful of functions use the removed aliases ``np.int``/``np.float``/``np.bool``/``np.str``. Those
  modules get a *module-local* NumPy proxy that adds the aliases; ``numpy`` itself is never modified.
"""

from __future__ import annotations

import importlib
import importlib.util
import types

import numpy as _np

from seemadapt import detectron2_compat

_LEGACY_ALIASES = {"int": int, "float": float, "bool": bool, "str": str, "object": object}

# detectron2 modules that still use the removed NumPy aliases.
_LEGACY_NUMPY_MODULES = (
    "detectron2.evaluation.sem_seg_evaluation",
    "detectron2.structures.masks",
    "detectron2.data.build",
    "detectron2.utils.visualizer",
    "detectron2.utils.video_visualizer",
    "detectron2.evaluation.pascal_voc_evaluation",
    "detectron2.data.datasets.pascal_voc",
)


class _LegacyNumpy(types.ModuleType):
    """NumPy with the pre-1.24 scalar aliases, visible only to the detectron2 modules it is given to."""

    def __init__(self) -> None:
        super().__init__("numpy")

    def __getattr__(self, name: str):
        if name in _LEGACY_ALIASES:
            return _LEGACY_ALIASES[name]
        return getattr(_np, name)


detectron2_compat.apply()

import detectron2  # noqa: E402
import detectron2.data  # noqa: E402
import detectron2.data.datasets.coco_panoptic  # noqa: E402
import detectron2.data.transforms  # noqa: E402
import detectron2.evaluation  # noqa: E402
import detectron2.structures  # noqa: E402
import detectron2.utils.visualizer  # noqa: E402

_legacy = _LegacyNumpy()
for _name in _LEGACY_NUMPY_MODULES:
    try:
        _module = importlib.import_module(_name)
    except Exception:  # pragma: no cover - optional modules
        continue
    _module.np = _legacy  # type: ignore[attr-defined]

from detectron2.data import (  # noqa: E402
    DatasetCatalog,
    DatasetFromList,
    MapDataset,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json  # noqa: E402
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.visualizer import ColorMode, Visualizer  # noqa: E402

__all__ = [
    "BitMasks",
    "Boxes",
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "ColorMode",
    "DatasetCatalog",
    "DatasetFromList",
    "Instances",
    "MapDataset",
    "MetadataCatalog",
    "SemSegEvaluator",
    "T",
    "Visualizer",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "detectron2",
    "load_coco_panoptic_json",
]
