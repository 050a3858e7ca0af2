"""segreview tests: Gradio must not phone home (no analytics, no version check); a dataset with attention maps."""

from __future__ import annotations

import io
import os

import datasets
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from diffsynth.schema import encode_attention
from segcontract.testing import make_contract_dataset

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_TELEMETRY_ENABLED", "False")


def _soft_maps(semantic_png: bytes, targets: int) -> np.ndarray:
    """Blurred class masks at 1/4 size: what diffsynth stores as attention, near enough for display."""
    semantic = np.asarray(Image.open(io.BytesIO(semantic_png)))
    maps = [
        ndimage.gaussian_filter((semantic == k).astype(np.float32), 3.0)[::4, ::4] for k in range(targets)
    ]
    return np.clip(np.stack(maps) * 1.2, 0.0, 1.0)


@pytest.fixture(scope="session")
def review_dataset():
    """A tiny contract dataset (classes square, disc, background) with diffsynth's ``attention`` column."""

    def make(num_images: int = 3, size: tuple[int, int] = (96, 96)) -> datasets.Dataset:
        ds = make_contract_dataset(num_images, size=size)
        semantic = ds.with_format("arrow")["semantic"].to_pylist()
        column = [encode_attention(_soft_maps(cell["bytes"], 2)) for cell in semantic]
        return ds.add_column("attention", column, feature=datasets.List(datasets.Image()))

    return make
