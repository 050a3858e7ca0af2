"""The contract's columns and the values with a fixed meaning (void, ignore, sources).

One row per image: ``image`` (Image), ``image_id`` (int64), ``file_name`` (string), ``width``/``height`` (int32),
``panoptic`` (Image, RGB PNG, ``id = R + 256 G + 256^2 B``, 0 = void), ``segments_info`` (List of ``{id,
category_id: ClassLabel, iscrowd, bbox [x, y, w, h], area, isthing}``), ``semantic`` (Image, mode L, class index,
255 = ignore), ``grounding`` (List of ``{segment_id, sentences}``), ``prompt`` (string), ``seed`` (int64),
``source`` (``synthetic`` | ``real``).
"""

from __future__ import annotations

__all__ = [
    "COLUMNS",
    "GROUNDING_KEYS",
    "IGNORE_LABEL",
    "IMAGE_COLUMNS",
    "MAX_SEGMENT_ID",
    "REQUIRED_COLUMNS",
    "SEGMENT_KEYS",
    "SOURCES",
    "VOID",
]

#: Semantic value of ignored (uncertain / unlabelled) pixels.
IGNORE_LABEL = 255
#: Panoptic id of void pixels.
VOID = 0
#: Largest segment id an RGB PNG can hold.
MAX_SEGMENT_ID = 256**3 - 1
#: Allowed values of the ``source`` column.
SOURCES = ("synthetic", "real")
#: Contract columns in order (optional extra columns such as diffsynth's ``attention`` may follow).
COLUMNS = (
    "image",
    "image_id",
    "file_name",
    "width",
    "height",
    "panoptic",
    "segments_info",
    "semantic",
    "grounding",
    "prompt",
    "seed",
    "source",
)
REQUIRED_COLUMNS = COLUMNS
#: Columns holding encoded images.
IMAGE_COLUMNS = ("image", "panoptic", "semantic")
#: Fields of a ``segments_info`` record.
SEGMENT_KEYS = ("id", "category_id", "iscrowd", "bbox", "area", "isthing")
#: Fields of a ``grounding`` record.
GROUNDING_KEYS = ("segment_id", "sentences")
