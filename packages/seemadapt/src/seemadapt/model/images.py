"""Image input for SEEM: accept the usual image types, normalise, pad to a common size and remember the sizes.

This replaces detectron2's ``ImageList.from_tensors`` so the model itself needs no detectron2: images are
normalised with the ImageNet statistics in 0..255 RGB, padded right/bottom to the batch's largest height and width
rounded **up** to a multiple of the size divisibility, with 0 *after* normalisation (the mean colour), and every
image keeps its unpadded size so predictions can be cropped back and resized to the size the caller gave.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ImageInput = Any  # a torch tensor [3, H, W] / [B, 3, H, W], a numpy array [H, W, 3] / [H, W], a PIL image
Size = tuple[int, int]


@dataclass
class ImageBatch:
    """A normalised, padded batch.

    Attributes:
        tensor: ``[B, 3, Hp, Wp]`` normalised images, zero-padded on the right and bottom.
        image_sizes: ``(h, w)`` of each image inside ``tensor`` (after any resize, before padding).
        original_sizes: ``(h, w)`` of each image as the caller gave it; predictions are returned at this size.
    """

    tensor: Tensor
    image_sizes: list[Size]
    original_sizes: list[Size]

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def padded_size(self) -> Size:
        return (self.tensor.shape[-2], self.tensor.shape[-1])

    def to(self, *args: Any, **kwargs: Any) -> ImageBatch:
        return ImageBatch(self.tensor.to(*args, **kwargs), list(self.image_sizes), list(self.original_sizes))


def to_image_tensor(image: ImageInput) -> Tensor:
    """One image as a ``[3, H, W]`` tensor of 0..255 RGB values (dtype kept for tensors, uint8 otherwise).

    Tensors must be channel-first (``[3, H, W]``); numpy arrays and PIL images are channel-last, as they usually are.
    Grayscale numpy/PIL inputs are repeated to three channels.
    """
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"Image tensors must be [3, H, W] RGB with values 0..255, got shape {tuple(image.shape)}; "
                "convert channel-last arrays with tensor.permute(2, 0, 1)."
            )
        return image
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image.Image, without importing PIL here
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"Image arrays must be [H, W, 3] RGB (or [H, W] grayscale), got shape {image.shape}."
            )
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable memory
            image = image.copy()
        return torch.from_numpy(image).permute(2, 0, 1)
    raise TypeError(
        f"Unsupported image type {type(image).__name__}: pass a torch tensor [3, H, W], a numpy array [H, W, 3] "
        "or a PIL image (or a list of them)."
    )


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[Tensor], bool]:
    """``(list of [3, H, W] tensors, whether a single image was given)``."""
    if isinstance(images, Tensor) and images.dim() == 4:
        return list(images.unbind(0)), False
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("Got an empty list of images.")
        return [to_image_tensor(image) for image in images], False
    return [to_image_tensor(images)], True


def resized_size(size: Size, short_edge: int, max_size: int | None) -> Size:
    """detectron2's ``ResizeShortestEdge`` geometry: shortest edge to ``short_edge``, longest at most ``max_size``."""
    height, width = size
    scale = short_edge / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return (int(height * scale + 0.5), int(width * scale + 0.5))


def padded_size_of(size: Size, size_divisibility: int) -> Size:
    """``size`` rounded up to multiples of ``size_divisibility``: the padded size of a batch whose largest image
    height and width are ``size`` (of an image batched alone: its own size)."""
    return (
        math.ceil(size[0] / size_divisibility) * size_divisibility,
        math.ceil(size[1] / size_divisibility) * size_divisibility,
    )


def batch_images(
    images: Sequence[Tensor],
    pixel_mean: Tensor,
    pixel_std: Tensor,
    size_divisibility: int = 32,
    short_edge: int | None = None,
    max_size: int | None = None,
) -> ImageBatch:
    """Normalise, optionally resize (shortest edge), and pad ``images`` into one :class:`ImageBatch`.

    Args:
        images: ``[3, H, W]`` tensors with 0..255 RGB values (any dtype).
        pixel_mean, pixel_std: ``[3, 1, 1]``; their device and dtype are the batch's.
        size_divisibility: padded sizes are multiples of it.
        short_edge: if set, each image is first resized (bilinear, antialiased) so its shortest edge has this length
            and its longest at most ``max_size``; ``original_sizes`` keeps the size before the resize.
    """
    if short_edge is not None and short_edge < 1:
        raise ValueError(f"short_edge must be >= 1, got {short_edge}.")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}.")
    device, dtype = pixel_mean.device, pixel_mean.dtype
    prepared, sizes, originals = [], [], []
    for image in images:
        original = (int(image.shape[-2]), int(image.shape[-1]))
        if min(original) < 1:
            raise ValueError(f"Images must be at least 1x1 pixels, got {original}.")
        x = image.to(device=device, dtype=torch.float32)
        if short_edge is not None:
            target = resized_size(original, short_edge, max_size)
            if target != original:
                x = F.interpolate(x[None], size=target, mode="bilinear", align_corners=False, antialias=True)[
                    0
                ]
        x = ((x - pixel_mean.float()) / pixel_std.float()).to(dtype)
        prepared.append(x)
        sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        originals.append(original)
    height, width = padded_size_of((max(h for h, _ in sizes), max(w for _, w in sizes)), size_divisibility)
    tensor = torch.zeros(len(prepared), 3, height, width, device=device, dtype=dtype)
    for index, x in enumerate(prepared):
        tensor[index, :, : x.shape[-2], : x.shape[-1]] = x
    return ImageBatch(tensor, sizes, originals)
