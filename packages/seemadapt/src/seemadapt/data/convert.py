"""What the converters share: reading an image file as stored bytes, and building the contract ``Dataset``."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
from PIL import Image as PILImage

from segcontract import Category, ContractError, attach_categories, contract_features

__all__ = ["IMAGE_EXTENSIONS", "build_dataset", "image_payload"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_EXIF_ORIENTATION = 0x0112


def build_dataset(rows: list[dict], categories: list[Category]) -> datasets.Dataset:
    """The contract ``Dataset`` of ``rows`` with ``categories`` attached to its ``info.description``."""
    features = contract_features([c.name for c in categories])
    ds = datasets.Dataset.from_list(rows, features=features, info=datasets.DatasetInfo(features=features))
    return attach_categories(ds, categories)


def image_payload(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Original bytes and (w, h). Files with an EXIF rotation are re-encoded unrotated, matching their masks."""
    data = path.read_bytes()
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
            size = img.size
            if img.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1) or img.format not in ("JPEG", "PNG"):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
                data = buf.getvalue()
    except (OSError, SyntaxError, ValueError) as err:
        raise ContractError(
            f"{path}: corrupt or unreadable image ({err}). Fix: re-encode or remove the file."
        ) from None
    return data, size
