"""Image + semantic-mask folders into the contract (``from_masks``), e.g. Kvasir-SEG's ``images/`` + ``masks/``."""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

import datasets
import numpy as np
from PIL import Image as PILImage

from seemadapt.data.convert import IMAGE_EXTENSIONS, build_dataset, image_payload
from segcontract import IGNORE_LABEL, Category, ContractError, label_map_regions, make_row

__all__ = ["from_masks"]


def _files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {str(folder)!r} is not a directory.")
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    }


def _things(things: bool | Collection[str], names: Sequence[str]) -> set[str]:
    if isinstance(things, bool):
        return set(names) if things else set()
    things = {str(t) for t in things}
    unknown = sorted(things - set(names))
    if unknown:
        raise ValueError(f"`things` names {unknown} that are not in classes {list(names)}.")
    return things


def _value_to_name(
    classes: str | Sequence[str] | Mapping[int, str], mode: str, background: str | None
) -> dict[int, str]:
    """Mask value -> class name for ``mode`` (``binary``: the one class is value 1)."""
    if mode == "binary":
        if isinstance(classes, str):
            classes = [classes]
        if isinstance(classes, Mapping) or len(classes) != 1:
            raise ValueError(
                f"mode='binary' needs exactly one class name, got {classes!r}; use mode='values'."
            )
        return {1: str(classes[0])}
    if mode != "values":
        raise ValueError(f"mode must be 'binary' or 'values', got {mode!r}.")
    if isinstance(classes, str):
        raise ValueError("mode='values' needs a list of class names or a {value: name} mapping, not a str.")
    if isinstance(classes, Mapping):
        value_to_name = {int(k): str(v) for k, v in classes.items()}
    else:
        offset = 1 if background is not None else 0
        value_to_name = {i + offset: str(n) for i, n in enumerate(classes)}
    if background is not None and 0 in value_to_name:
        raise ValueError(f"mask value 0 is the background {background!r}; start class values at 1.")
    if IGNORE_LABEL in value_to_name:
        raise ValueError("mask value 255 is reserved for ignore; give the class another value.")
    return value_to_name


def _categories(
    value_to_name: Mapping[int, str], background: str | None, things: bool | Collection[str]
) -> list[Category]:
    names = list(value_to_name.values())
    if background is not None:
        if background in names:
            raise ValueError(f"background {background!r} is also a class name; rename one of them.")
        names.append(background)
    thing_names = _things(things, names[: len(value_to_name)])
    return [Category(i, n, n in thing_names) for i, n in enumerate(names)]


class _Labeller:
    """Turns one mask image into a label map (category index per pixel, -1 = void)."""

    def __init__(
        self, mode: str, value_to_name: Mapping[int, str], background: str | None, threshold: int | None
    ) -> None:
        self.mode, self.value_to_name, self.background, self.threshold = (
            mode,
            value_to_name,
            background,
            threshold,
        )
        self.background_index = len(value_to_name) if background is not None else -1
        self.lut = np.full(256, -1, dtype=np.int64)  # mask value -> category index, -1 = void
        for i, value in enumerate(value_to_name):
            self.lut[value] = i
        if background is not None:
            self.lut[0] = self.background_index

    def __call__(self, mask: np.ndarray, mask_path: Path) -> np.ndarray:
        if self.mode == "binary":
            cut = self.threshold if self.threshold is not None else (0 if mask.max() <= 1 else 127)
            return np.where(mask > cut, 0, self.background_index)
        labels = self.lut[mask]
        unknown = np.unique(mask[(labels < 0) & (mask != IGNORE_LABEL)])
        if self.background is None and 0 not in self.value_to_name:
            unknown = unknown[unknown != 0]
        if unknown.size:
            raise ContractError(
                f"{mask_path}: mask value(s) {unknown.tolist()[:8]} map to no class ({dict(self.value_to_name)}). "
                "Fix: pass classes as a {value: name} mapping covering them, or paint them 255 (ignore)."
            )
        return labels


def _read_mask(mask_path: Path, image_name: str, size: tuple[int, int]) -> np.ndarray:
    try:
        with PILImage.open(mask_path) as m:
            mask = np.asarray(m.convert("L"))
    except (OSError, SyntaxError, ValueError) as err:
        raise ContractError(f"{mask_path}: corrupt or unreadable mask ({err}).") from None
    w, h = size
    if mask.shape != (h, w):
        raise ContractError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_name} is {w}x{h}."
        )
    return mask


def _segments(
    labels: np.ndarray, categories: Sequence[Category], split: bool, min_area: int
) -> tuple[np.ndarray, list[dict]]:
    """Segment id map (1, 2, ... in category order) and records; thing components below ``min_area`` are void."""
    ids = np.zeros(labels.shape, dtype=np.int32)
    segments: list[dict] = []
    for region in label_map_regions(labels, [c.isthing for c in categories], split_things=split):
        cat = categories[region.category]
        if cat.isthing and split and region.area < min_area:
            continue
        segments.append({"id": len(segments) + 1, "category_id": cat.id, "isthing": cat.isthing})
        ids[region.window][region.mask] = len(segments)
    return ids, segments


def from_masks(
    images_dir: str | Path,
    masks_dir: str | Path,
    classes: str | Sequence[str] | Mapping[int, str],
    *,
    mode: Literal["binary", "values"] = "binary",
    background: str | None = "background",
    threshold: int | None = None,
    things: bool | Collection[str] = True,
    instances: Literal["components", "semantic"] = "components",
    mask_suffix: str = "",
    min_area: int = 1,
    source: str = "real",
) -> datasets.Dataset:
    """Image + semantic-mask folders (the usual medical layout, e.g. Kvasir-SEG ``images/*.jpg`` + ``masks/*.jpg``).

    Masks pair with images by file stem (``masks/<stem><mask_suffix>.*``).

    Args:
        classes: ``mode="binary"``: the one foreground class name. ``mode="values"``: a list of names, where mask
            value ``v`` is ``classes[v - 1]`` when ``background`` is set (value 0 = background) and ``classes[v]``
            when it is None; or an explicit ``{value: name}`` mapping.
        mode: ``"binary"``: a pixel is the class where ``mask > threshold``, else background. ``"values"``: mask
            values are class values; ``255`` is ignore (void).
        background: the explicit stuff category for the zero value (known non-target pixels, supervised and
            scored); ``None`` makes those pixels void instead.
        threshold: binary cut. ``None`` = 127 (robust to JPEG-compressed 0/255 masks, as in Kvasir-SEG), or 0
            for masks whose maximum is 1 (0/1 PNGs).
        things: which classes are things (split into instances); True = all, False = none, or a set of names.
        instances: ``"components"`` splits each thing into 8-connected components; ``"semantic"`` keeps one
            segment per class.
        min_area: thing components smaller than this many pixels become void (JPEG speckles).
    """
    images = _files(Path(images_dir), "images_dir")
    masks = _files(Path(masks_dir), "masks_dir")
    if not images:
        raise FileNotFoundError(
            f"images_dir {str(images_dir)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    value_to_name = _value_to_name(classes, mode, background)
    categories = _categories(value_to_name, background, things)
    labeller = _Labeller(mode, value_to_name, background, threshold)
    rows, missing = [], []
    for image_id, (stem, image_path) in enumerate(images.items()):
        mask_path = masks.get(stem + mask_suffix)
        if mask_path is None:
            missing.append(image_path.name)
            continue
        data, size = image_payload(image_path)
        labels = labeller(_read_mask(mask_path, image_path.name, size), mask_path)
        ids, segments = _segments(labels, categories, instances == "components", min_area)
        rows.append(
            make_row(
                image=data,
                panoptic_ids=ids,
                segments=segments,
                image_id=image_id,
                file_name=image_path.name,
                source=source,
            )
        )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no mask in {str(masks_dir)!r} (e.g. {missing[:3]}); masks pair by stem"
            f"{f' + suffix {mask_suffix!r}' if mask_suffix else ''}. Fix: add the masks or remove the images."
        )
    extra = sorted(set(masks) - {s + mask_suffix for s in images})
    if extra:
        warnings.warn(f"{len(extra)} mask(s) without an image were skipped (e.g. {extra[:3]}).", stacklevel=2)
    return build_dataset(rows, categories)
