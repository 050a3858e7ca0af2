"""The cheap part of making detectron2 0.6 importable on the current stack, applied by ``import seemadapt``.

People register a dataset with seemadapt and then use detectron2's own tools (``from detectron2.data import
DatasetCatalog``), so ``import seemadapt`` must be enough for that import to work, without importing detectron2
itself (seconds) when it is not used:

* ``PIL.Image.LINEAR`` (removed in Pillow 10) is a default argument in ``detectron2.data.transforms``; it is the
  old name of ``Image.BILINEAR``.
* ``detectron2._C`` (the C++ extension, absent from the pure-Python build) is imported unconditionally by a few
  modules whose compiled ops seemadapt never calls; an empty stand-in module lets them import.

:mod:`seemadapt._detectron2` adds the rest (module-local NumPy aliases) when seemadapt itself uses detectron2.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from PIL import Image

__all__ = ["apply"]


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
