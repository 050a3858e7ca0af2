"""Mappers from registered dicts to SEEM's per-image inputs, and epoch-aware sampling for deterministic loaders.

Training (``SEEMTrainMapper``) follows SEEM's COCO panoptic + grounding dataset mapper with LSJ: random horizontal
flip, ``ResizeScale(min_scale, max_scale)`` to ``image_size``, ``FixedSizeCrop`` padding the image with
128 and the semantic map with 255. Two deliberate differences from the official mapper:

* **Determinism.** The random draws come from a per-sample ``RandomState`` seeded with ``(seed, epoch, image_id)``,
  never from global state, so the same sample gives the same output in any worker, with any number of workers. The
  draws are detectron2's own (same distributions, same order as ``RandomFlip -> ResizeScale -> FixedSizeCrop``; a
  test checks the transforms equal detectron2's for the same stream), and the results are detectron2 transforms.
* **Masks pad with 0, not 255** (padding is no object, not an uncertain pixel): the panoptic id map pads with void, so no padded pixel can leak
  into a mask target; grounding masks are boolean. Sentences of flipped samples swap ``left``/``right``.

Each training output::

    image        uint8 tensor [3, S, S] (RGB, 0..255, not normalised)
    height/width S, S (the size of every target)
    instances    detectron2 Instances: gt_classes int64 [N], gt_masks BitMasks [N, S, S], gt_boxes, is_things bool [N]
                 (non-crowd segments still visible after the crop)
    sem_seg      int64 [S, S], class index, 255 = ignore (void, crop padding)
    groundings   {"masks": bool [n, S, S], "texts": [str] * n, "mode": "text" | "class", "hash": [int] * n}
    class_names  list[str], contiguous order (for the text encoder)
    image_id, file_name, source, epoch

Grounding: ``n`` is drawn in ``1..max_grounding``. Mode ``"text"`` when the image has grounding sentences: ``n``
segments in random order, one random sentence each (lower-cased). Otherwise mode ``"class"``: ``n`` random classes
present in the image, all their masks, each text a random template of the class name; ``hash`` is shared by
same-class masks. No segment at all: ``texts == ["none"]`` and zero masks. Hashes are stable across processes
(blake2b), unlike Python's ``hash``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from seemadapt.detectron2_compat import (
    BitMasks,
    Boxes,
    DatasetCatalog,
    DatasetFromList,
    Instances,
    MetadataCatalog,
    T,
    build_detection_train_loader,
)
from seemadapt.hashing import stable_hash
from segcontract import IGNORE_LABEL, rgb2id

__all__ = [
    "CLASS_TEMPLATES",
    "EpochDataset",
    "EpochSampler",
    "SEEMTestMapper",
    "SEEMTrainMapper",
    "build_train_loader",
    "lsj_transforms",
    "mask_boxes",
    "sample_rng",
    "stable_hash",
    "trivial_batch_collator",
]

#: Templates for class-mode grounding texts.
CLASS_TEMPLATES = (
    "{}",
    "a {}",
    "the {}",
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
)
_MASK64 = (1 << 64) - 1
_LEFT_RIGHT = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_LR_RE = re.compile(r"\b(leftmost|rightmost|left|right)\b", re.IGNORECASE)


def sample_rng(seed: int, epoch: int, image_id: int) -> np.random.RandomState:
    """The per-sample random stream: a function of ``(seed, epoch, image_id)`` only."""
    entropy = [int(seed) & _MASK64, int(epoch) & _MASK64, int(image_id) & _MASK64]
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(entropy)))


def lsj_transforms(
    height: int,
    width: int,
    rng: np.random.RandomState,
    *,
    image_size: int,
    min_scale: float,
    max_scale: float,
    flip: bool = True,
) -> T.TransformList:
    """Large-scale jitter as detectron2 transforms, drawing from ``rng`` exactly as detectron2's augmentations draw.

    ``RandomFlip`` (one uniform, even when it does not flip), ``ResizeScale`` (one uniform scale; fit the scaled
    target box, keep the aspect), ``FixedSizeCrop`` (one uniform offset fraction for both axes; pad right/bottom with
    128 for the image and 255 for segmentation).
    """
    tfms: list[T.Transform] = []
    if flip:
        do_flip = rng.uniform(0.0, 1.0) < 0.5
        tfms.append(T.HFlipTransform(width) if do_flip else T.NoOpTransform())
    scale = rng.uniform(min_scale, max_scale)
    out_scale = min(image_size * scale / height, image_size * scale / width)
    new_h, new_w = np.round(np.multiply((height, width), out_scale)).astype(int)
    tfms.append(T.ResizeTransform(height, width, int(new_h), int(new_w), PILImage.BILINEAR))
    max_offset = np.maximum(np.subtract((new_h, new_w), (image_size, image_size)), 0)
    offset = np.round(np.multiply(max_offset, rng.uniform(0.0, 1.0))).astype(int)
    tfms.append(
        T.CropTransform(int(offset[1]), int(offset[0]), image_size, image_size, int(new_w), int(new_h))
    )
    pad_h, pad_w = max(image_size - int(new_h), 0), max(image_size - int(new_w), 0)
    orig_h, orig_w = min(int(new_h), image_size), min(int(new_w), image_size)
    tfms.append(T.PadTransform(0, 0, pad_w, pad_h, orig_w, orig_h, pad_value=128, seg_pad_value=IGNORE_LABEL))
    return T.TransformList(tfms)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """XYXY float32 boxes of ``[N, H, W]`` bool masks, as ``BitMasks.get_bounding_boxes`` (max + 1; empty -> 0)
    but in NumPy, which is an order of magnitude faster on CPU than ``torch.any`` over bool tensors."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    if len(masks) == 0:
        return boxes
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    present = rows.any(axis=1)
    h, w = masks.shape[1:]
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = w - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = h - rows[:, ::-1].argmax(axis=1)
    boxes[~present] = 0
    return boxes


def _apply_ids(tfms: T.TransformList, rgb: np.ndarray) -> np.ndarray:
    """Transform an RGB panoptic PNG with nearest interpolation, padding with void (0) instead of 255."""
    for t in tfms.transforms:
        if isinstance(t, T.PadTransform):
            rgb = np.pad(rgb, ((t.y0, t.y1), (t.x0, t.x1), (0, 0)), mode="constant", constant_values=0)
        else:
            rgb = t.apply_segmentation(rgb)
    return rgb


def _read_rgb(path: str) -> np.ndarray:
    with PILImage.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _swap_left_right(text: str) -> str:
    def repl(m: re.Match) -> str:
        word = _LEFT_RIGHT[m.group(0).lower()]
        return word.capitalize() if m.group(0)[0].isupper() else word

    return _LR_RE.sub(repl, text)


class SEEMTrainMapper:
    """Registered dict -> SEEM training input (see the module docstring for the output).

    Args:
        image_size: S, the square training size (SEEM official 1024, the thesis 256).
        min_scale, max_scale: the LSJ scale range.
        flip: random horizontal flip (left/right words in sentences are swapped when flipped).
        max_grounding: the most grounding targets per image (SEEM's ``GROUNDING.MAX_LEN - 1`` = 4).
        class_names: class names in contiguous order (``MetadataCatalog.get(name).stuff_classes``); needed for
            class-mode grounding texts and returned with every sample.
        seed: the base seed; with ``epoch`` and ``image_id`` it fixes every random draw.
        templates: format strings for class-mode texts.
    """

    def __init__(
        self,
        image_size: int = 256,
        min_scale: float = 0.1,
        max_scale: float = 2.0,
        flip: bool = True,
        max_grounding: int = 4,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        templates: Sequence[str] = CLASS_TEMPLATES,
    ) -> None:
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}.")
        if not 0 < min_scale <= max_scale:
            raise ValueError(
                f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, max_scale={max_scale}."
            )
        if not isinstance(max_grounding, int) or max_grounding < 1:
            raise ValueError(f"max_grounding must be an int >= 1, got {max_grounding!r}.")
        if isinstance(class_names, str):
            raise TypeError("class_names must be a list of names, not one str.")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("templates must be non-empty format strings with one '{}' for the class name.")
        self.image_size = image_size
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.flip = bool(flip)
        self.max_grounding = max_grounding
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = int(seed)
        self.templates = tuple(templates)
        self.epoch = 0

    @classmethod
    def from_dataset(cls, name: str, **kwargs: Any) -> SEEMTrainMapper:
        """A mapper whose ``class_names`` are the registered dataset's (``stuff_classes``)."""
        return cls(class_names=MetadataCatalog.get(name).stuff_classes, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """Default epoch for dicts without an ``epoch`` key (see :class:`EpochDataset` for worker-safe epochs)."""
        self.epoch = int(epoch)

    def __call__(self, record: dict, epoch: int | None = None) -> dict:
        epoch = int(epoch if epoch is not None else record.get("epoch", self.epoch))
        rng = sample_rng(self.seed, epoch, int(record["image_id"]))
        image = _read_rgb(record["file_name"])
        h, w = image.shape[:2]
        tfms = lsj_transforms(
            h,
            w,
            rng,
            image_size=self.image_size,
            min_scale=self.min_scale,
            max_scale=self.max_scale,
            flip=self.flip,
        )
        flipped = any(isinstance(t, T.HFlipTransform) for t in tfms.transforms)
        image = tfms.apply_image(image)
        ids = rgb2id(_apply_ids(tfms, _read_rgb(record["pan_seg_file_name"])))
        size = self.image_size
        sem = np.full((size, size), IGNORE_LABEL, dtype=np.uint8)
        masks: dict[int, np.ndarray] = {}
        classes, inst_masks, is_things = [], [], []
        for seg in record["segments_info"]:
            mask = ids == seg["id"]
            if not mask.any():
                continue
            masks[seg["id"]] = mask
            sem[mask] = seg["category_id"]
            if not seg.get("iscrowd", 0):
                classes.append(int(seg["category_id"]))
                inst_masks.append(mask)
                is_things.append(bool(seg["isthing"]))
        stacked = np.stack(inst_masks) if inst_masks else np.zeros((0, size, size), dtype=bool)
        instances = Instances((size, size))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = BitMasks(torch.from_numpy(stacked))
        instances.gt_boxes = Boxes(torch.from_numpy(mask_boxes(stacked)))
        instances.is_things = torch.tensor(is_things, dtype=torch.bool)
        groundings = self._groundings(record, masks, classes, inst_masks, rng, flipped)
        return {
            "file_name": record["file_name"],
            "image_id": record["image_id"],
            "source": record.get("source", ""),
            "epoch": epoch,
            "height": size,
            "width": size,
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "instances": instances,
            "sem_seg": torch.from_numpy(sem.astype(np.int64)),
            "groundings": groundings,
            "class_names": self.class_names,
        }

    def _groundings(
        self,
        record: dict,
        masks: dict[int, np.ndarray],
        classes: list[int],
        inst_masks: list[np.ndarray],
        rng: np.random.RandomState,
        flipped: bool,
    ) -> dict:
        size = self.image_size
        n = int(rng.randint(1, self.max_grounding + 1))
        candidates = [
            g for g in record.get("grounding_info") or [] if g.get("sentences") and g["segment_id"] in masks
        ]
        if candidates:
            order = rng.permutation(len(candidates))[:n]
            texts, chosen = [], []
            for i in order:
                g = candidates[int(i)]
                text = g["sentences"][int(rng.randint(len(g["sentences"])))].strip().lower()
                texts.append(_swap_left_right(text) if flipped else text)
                chosen.append(masks[g["segment_id"]])
            return {
                "masks": torch.from_numpy(np.stack(chosen)),
                "texts": texts,
                "mode": "text",
                "hash": [stable_hash(t) for t in texts],
            }
        if not classes:
            return {
                "masks": torch.zeros((0, size, size), dtype=torch.bool),
                "texts": ["none"],
                "mode": "class",
                "hash": [stable_hash("none")],
            }
        if self.class_names is None:
            raise ValueError(
                "class-mode grounding needs class names: build the mapper with class_names=... or "
                "SEEMTrainMapper.from_dataset(name)."
            )
        unique = sorted(set(classes))
        picked = {unique[int(i)] for i in rng.permutation(len(unique))[:n]}
        texts, chosen, hashes = [], [], []
        for c, m in zip(classes, inst_masks):
            if c in picked:
                name = self.class_names[c]
                texts.append(self.templates[int(rng.randint(len(self.templates)))].format(name))
                chosen.append(m)
                hashes.append(stable_hash(name))
        return {"masks": torch.from_numpy(np.stack(chosen)), "texts": texts, "mode": "class", "hash": hashes}


class SEEMTestMapper:
    """Registered dict -> SEEM evaluation input: the resized image plus the original size for post-processing.

    Args:
        shortest_edge, max_size: detectron2 ``ResizeShortestEdge`` (SEEM: 800/1333 panoptic, 512/1024 grounding).
        square: resize to ``square x square`` instead (the thesis's semantic evaluation, 256, bicubic).
        interp: ``"bilinear"`` or ``"bicubic"``; ``None`` = bicubic for ``square``, bilinear otherwise.

    Output: the record's keys (file paths, ``segments_info``, ``grounding_info`` ... for the evaluators) plus
    ``image`` uint8 ``[3, h', w']`` and ``height``/``width`` = the original size.
    """

    def __init__(
        self,
        shortest_edge: int = 512,
        max_size: int = 1024,
        square: int | None = None,
        interp: str | None = None,
    ) -> None:
        if square is not None and (not isinstance(square, int) or square < 8):
            raise ValueError(f"square must be None or an int >= 8, got {square!r}.")
        if shortest_edge < 8 or max_size < shortest_edge:
            raise ValueError(f"need 8 <= shortest_edge <= max_size, got {shortest_edge}, {max_size}.")
        modes = {"bilinear": PILImage.BILINEAR, "bicubic": PILImage.BICUBIC}
        interp = interp or ("bicubic" if square is not None else "bilinear")
        if interp not in modes:
            raise ValueError(f"interp must be 'bilinear' or 'bicubic', got {interp!r}.")
        self.shortest_edge, self.max_size, self.square = shortest_edge, max_size, square
        self._interp = modes[interp]

    def __call__(self, record: dict) -> dict:
        image = _read_rgb(record["file_name"])
        h, w = image.shape[:2]
        if self.square is not None:
            new_h = new_w = self.square
        else:
            new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, self.shortest_edge, self.max_size)
        image = T.ResizeTransform(h, w, new_h, new_w, self._interp).apply_image(image)
        out = dict(record)
        out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["height"], out["width"] = h, w
        return out


# --------------------------------------------------------------------------------------------- sampling


class EpochDataset(torch.utils.data.Dataset):
    """Registered dicts where index ``k`` means record ``k % N`` at epoch ``k // N``.

    With :class:`EpochSampler` the epoch travels inside the index, so every worker knows it without shared state
    (``set_epoch`` on a worker copy would be lost) and augmentations differ per epoch yet stay reproducible.
    Records are serialised once (detectron2's ``DatasetFromList``), so workers do not copy-on-read Python objects.
    """

    def __init__(self, records: Sequence[dict]) -> None:
        if len(records) == 0:
            raise ValueError("EpochDataset needs at least one record.")
        self._records = DatasetFromList(list(records), copy=True, serialize=True)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        n = len(self._records)
        record = self._records[index % n]
        record["epoch"] = index // n
        return record


class EpochSampler(torch.utils.data.Sampler):
    """Infinite sampler: epoch ``e`` yields ``e * N + i`` over a permutation seeded by ``(seed, e)``.

    Each rank (``torch.distributed``) takes every ``world_size``-th index of each epoch's permutation, so ranks see
    disjoint samples and the stream depends only on ``seed``.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        start_epoch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}.")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = (
            world_size if world_size is not None else (torch.distributed.get_world_size() if dist else 1)
        )
        self.size, self.seed, self.shuffle, self.start_epoch = size, int(seed), shuffle, int(start_epoch)

    def __iter__(self):
        epoch = self.start_epoch
        while True:
            if self.shuffle:
                order = sample_rng(self.seed, epoch, -1).permutation(self.size)
            else:
                order = np.arange(self.size)
            for i in order[self.rank :: self.world_size]:
                yield epoch * self.size + int(i)
            epoch += 1


def trivial_batch_collator(batch: list) -> list:
    """Keep a batch as a list of per-image dicts (no stacking), as detectron2 does."""
    return batch


def build_train_loader(
    dataset: str | Sequence[dict],
    mapper: SEEMTrainMapper,
    *,
    total_batch_size: int,
    num_workers: int = 0,
    seed: int | None = None,
    start_epoch: int = 0,
):
    """detectron2's ``build_detection_train_loader`` with epoch-carrying indices.

    An infinite iterator of batches (lists of mapper outputs, ``total_batch_size / world_size`` each). Every sample
    maps to the same output for any ``num_workers``; as in detectron2, a batch holds samples of one worker, so the
    grouping of samples into batches depends on ``num_workers``.
    """
    records = DatasetCatalog.get(dataset) if isinstance(dataset, str) else list(dataset)
    sampler = EpochSampler(len(records), seed=mapper.seed if seed is None else seed, start_epoch=start_epoch)
    return build_detection_train_loader(
        dataset=EpochDataset(records),
        mapper=mapper,
        sampler=sampler,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
        aspect_ratio_grouping=False,
    )
