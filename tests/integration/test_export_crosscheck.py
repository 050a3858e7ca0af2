"""diffsynth's COCO-panoptic export read by detectron2's own loader (through seemadapt's compat module)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from panopticapi.utils import rgb2id
from PIL import Image as PILImage

from diffsynth.categories import Category, resolve_categories
from diffsynth.coco_reader import load_coco
from diffsynth.dataset import Sample, categories_of, to_dataset, validate
from diffsynth.export import export_coco

pytest.importorskip("detectron2")
d2 = pytest.importorskip("seemadapt.detectron2_compat")


def make_dataset(cats, n=3, size=(48, 64)):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        lm = np.full(size, len(cats) - 1, np.uint8)
        lm[4:14, 4 + i : 18 + i] = 0
        lm[20:30, 40:58] = 0
        lm[16:22, 20:30] = 2
        lm[36:, :] = 1
        lm[0:2, :] = 255
        image = PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        samples.append(
            Sample.from_label_map(
                image,
                lm,
                cats,
                image_id=i + 1,
                file_name=f"{i + 1:06d}.jpg",
                prompt="mold",
                seed=i,
                min_area=4,
            )
        )
    return to_dataset(samples, cats, {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5"})


def _meta(cats):
    """Our COCO ids are the contiguous index + 1 (see diffsynth.export)."""
    return {
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i, c in enumerate(cats) if c.isthing},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i, c in enumerate(cats) if not c.isthing},
    }


def _check_detectron2_reads(folder, ds, cats):
    records = d2.load_coco_panoptic_json(
        str(folder / "panoptic_train.json"), str(folder / "images"), str(folder / "panoptic"), _meta(cats)
    )
    assert len(records) == len(ds)
    for record, row in zip(records, ds):
        assert record["image_id"] == row["image_id"]
        assert os.path.basename(record["file_name"]) == row["file_name"] and os.path.exists(
            record["file_name"]
        )
        pan = rgb2id(np.asarray(PILImage.open(record["pan_seg_file_name"]).convert("RGB")))
        assert np.array_equal(pan, rgb2id(np.asarray(row["panoptic"])))
        got = [
            (s["id"], s["category_id"], s["isthing"], s["area"], s["iscrowd"])
            for s in record["segments_info"]
        ]
        want = [
            (s["id"], s["category_id"], s["isthing"], s["area"], s["iscrowd"]) for s in row["segments_info"]
        ]
        assert got == want
        for s in record["segments_info"]:
            assert (pan == s["id"]).sum() == s["area"]


def test_detectron2_reads_the_export_and_load_coco_round_trips(tmp_path):
    cats = resolve_categories(["mold", Category("wall", isthing=False), "pipe"])
    ds = make_dataset(cats)
    folder = export_coco(ds, tmp_path / "export")
    _check_detectron2_reads(folder, ds, cats)

    back = load_coco(folder, cache_dir=str(tmp_path / "cache"))
    validate(back)
    assert back.features == ds.features and categories_of(back) == cats
    assert back["segments_info"] == ds["segments_info"] and back["grounding"] == ds["grounding"]

    again = export_coco(back, tmp_path / "again")
    _check_detectron2_reads(again, ds, cats)
    for sub in ("panoptic", "semantic", "images"):
        for path in sorted((folder / sub).iterdir()):
            assert path.read_bytes() == (again / sub / path.name).read_bytes(), path
