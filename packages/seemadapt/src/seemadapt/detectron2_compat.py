"""The one door to detectron2: ``import seemadapt`` applies its cheap shim, and seemadapt imports detectron2's names
from here.

detectron2 0.6 (installed as the byte-identical ``pb1-detectron2`` redistribution, built without its C++ extension)
predates Pillow 10 and NumPy 1.24. People register a dataset with seemadapt and then use detectron2's own tools
(``from detectron2.data import DatasetCatalog``), so ``import seemadapt`` must be enough for that import to work,
without importing detectron2 itself (seconds) when it is not used. :func:`apply` (run by ``import seemadapt``) does
the cheap part:

* ``PIL.Image.LINEAR`` (removed in Pillow 10) is a default argument in ``detectron2.data.transforms``; it is the
  old name of ``Image.BILINEAR``.
* ``detectron2._C`` (the C++ extension, absent from the pure-Python build) is imported unconditionally by a few
  modules whose compiled ops seemadapt never calls; an empty stand-in module lets them import.

The detectron2 names below (``DatasetCatalog``, ``T`` = ``detectron2.data.transforms``, ...) load detectron2 on first
access (:func:`import_detectron2`), which also gives the few modules that use the removed aliases
``np.int``/``np.float``/``np.bool``/``np.str`` a *module-local* NumPy that has them; ``numpy`` itself is never
modified.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from seemadapt.lazy import lazy_attributes

if TYPE_CHECKING:
    pass

#: detectron2's names seemadapt uses -> (module, attribute)
_NAMES: dict[str, tuple[str, str]] = {
    **{
        name: ("detectron2.data", name)
        for name in (
            "DatasetCatalog",
            "DatasetFromList",
            "MapDataset",
            "MetadataCatalog",
            "build_detection_test_loader",
            "build_detection_train_loader",
        )
    },
    "T": ("detectron2.data", "transforms"),
    "load_coco_panoptic_json": ("detectron2.data.datasets.coco_panoptic", "load_coco_panoptic_json"),
    **{
        name: ("detectron2.evaluation", name)
        for name in ("COCOEvaluator", "COCOPanopticEvaluator", "SemSegEvaluator")
    },
    **{name: ("detectron2.structures", name) for name in ("BitMasks", "Boxes", "Instances")},
    **{name: ("detectron2.utils.visualizer", name) for name in ("ColorMode", "Visualizer")},
}

__all__ = ["apply", "import_detectron2", *sorted(_NAMES)]

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
    """NumPy with the pre-1.24 scalar aliases, visible only to the detectron2 module it is given to (it wraps that
    module's own ``np``, so ``import seemadapt`` does not import NumPy)."""

    def __init__(self, numpy: types.ModuleType) -> None:
        super().__init__("numpy")
        self.wrapped = numpy

    def __getattr__(self, name: str) -> Any:
        if name in _LEGACY_ALIASES:
            return _LEGACY_ALIASES[name]
        return getattr(self.wrapped, name)


def _has_compiled_extension() -> bool:
    """Whether the installed detectron2 ships ``_C`` (looked up on disk: importing detectron2 is not cheap)."""
    try:
        spec = importlib.util.find_spec("detectron2")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(any(Path(folder).glob("_C*")) for folder in spec.submodule_search_locations)


def apply() -> None:
    """Alias ``Image.LINEAR`` and stand in for a missing ``detectron2._C``; idempotent."""
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    if "detectron2._C" not in sys.modules and not _has_compiled_extension():
        sys.modules["detectron2._C"] = types.ModuleType("detectron2._C")


def import_detectron2() -> None:
    """Import detectron2 with :func:`apply`'s shim and the module-local NumPy aliases; idempotent."""
    apply()
    for name in _LEGACY_NUMPY_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # pragma: no cover - optional modules
            continue
        numpy = getattr(module, "np", None)
        if isinstance(numpy, types.ModuleType) and not isinstance(numpy, _LegacyNumpy):
            module.np = _LegacyNumpy(numpy)  # type: ignore[attr-defined]


# detectron2 is heavy (seconds): its names load on first access, after import_detectron2
__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, prepare=import_detectron2)
