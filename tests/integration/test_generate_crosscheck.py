"""generate() on the tiny pipeline, checked by code no one here wrote: detectron2's loader, panopticapi's
pq_compute and pycocotools, plus the storage round trips of the contract."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from datasets import Dataset, load_dataset, load_from_disk
from panopticapi.evaluation import pq_compute
from panopticapi.utils import rgb2id
from PIL import Image
from pycocotools.coco import COCO

from diffsynth import categories_of, export_coco, generate, settings_of, stage_repo, validate

pytest.importorskip("detectron2")
d2 = pytest.importorskip("seemadapt.detectron2_compat")


@pytest.fixture(scope="module")
def generated():
    return generate(["cat", "dog"], num_images=4, model="tiny", num_inference_steps=2, progress=False)


def test_export_passes_detectron2_panopticapi_and_pycocotools(generated, tmp_path):
    ds = generated
    folder = export_coco(ds, tmp_path / "export")
    cats = categories_of(ds)

    meta = {
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i, c in enumerate(cats) if c.isthing},
        "stuff_dataset_id_to_contiguous_id": {i + 1: i for i, c in enumerate(cats) if not c.isthing},
    }
    records = d2.load_coco_panoptic_json(
        str(folder / "panoptic_train.json"), str(folder / "images"), str(folder / "panoptic"), meta
    )
    assert [r["image_id"] for r in records] == ds["image_id"]
    for record, row in zip(records, ds, strict=True):
        assert os.path.exists(record["file_name"])
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        assert [(s["id"], s["category_id"], s["area"]) for s in record["segments_info"]] == [
            (s["id"], s["category_id"], s["area"]) for s in row["segments_info"]
        ]
        for segment in record["segments_info"]:
            assert (ids == segment["id"]).sum() == segment["area"]

    gt_json = str(folder / "panoptic_train.json")
    result = pq_compute(
        gt_json, gt_json, gt_folder=str(folder / "panoptic"), pred_folder=str(folder / "panoptic")
    )
    assert result["All"]["pq"] == pytest.approx(1.0)

    coco = COCO(str(folder / "grounding_train.json"))
    panoptic = {
        a["image_id"]: a for a in json.loads((folder / "panoptic_train.json").read_text())["annotations"]
    }
    annotations = coco.loadAnns(coco.getAnnIds())
    assert len(annotations) == sum(len(s) for s in ds["segments_info"])
    for ann in annotations:
        ids = rgb2id(np.asarray(Image.open(folder / "panoptic" / panoptic[ann["image_id"]]["file_name"])))
        assert np.array_equal(coco.annToMask(ann).astype(bool), ids == ann["segment_id"])
        assert ann["sentences"] and all(s["sent"] for s in ann["sentences"])


def test_round_trips_keep_features_categories_and_settings(generated, tmp_path):
    ds = generated
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    stage_repo(ds, tmp_path / "repo")
    copies = {
        "save_to_disk": load_from_disk(str(tmp_path / "disk")),
        "parquet": Dataset.from_parquet(str(tmp_path / "data.parquet")),
        "hub folder": load_dataset(str(tmp_path / "repo"), split="train"),
    }
    for name, copy in copies.items():
        validate(copy)
        assert copy.features == ds.features, name
        assert categories_of(copy) == categories_of(ds), name
        assert settings_of(copy) == settings_of(ds), name
        assert copy["segments_info"] == ds["segments_info"], name
        assert (tmp_path / "repo" / "categories.json").is_file()
