"""COCO-panoptic export, cross-checked with code no one here wrote (panopticapi, pycocotools), and load_coco."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from panopticapi.evaluation import pq_compute
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import diffsynth.export as export_module
from diffsynth.categories import Category, resolve_categories
from diffsynth.coco_reader import load_coco
from diffsynth.dataset import Sample, categories_of, settings_of, to_dataset, validate
from diffsynth.export import export_coco

SETTINGS = {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "steps": 20}


def make_dataset(cats, n=3, first_id=1, size=(40, 56), soft=False):
    rng = np.random.default_rng(first_id)
    samples = []
    for i in range(n):
        lm = np.full(size, len(cats) - 1, np.uint8)
        lm[3:12, 3 + i : 15 + i] = 0
        lm[20:30, 30:45] = 0
        lm[14:18, 20:26] = 2
        lm[32:, :] = 1
        lm[0:2, 40:] = 255
        image = PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        soft_maps = rng.random((3, 10, 14)).astype(np.float32) if soft else None
        samples.append(
            Sample.from_label_map(
                image,
                lm,
                cats,
                image_id=first_id + i,
                prompt=f"mold and a pipe on a wall {i}",
                seed=10 + i,
                min_area=4,
                soft_maps=soft_maps,
            )
        )
    return to_dataset(samples, cats, SETTINGS)


@pytest.fixture
def cats():
    return resolve_categories(["mold", Category("wall", isthing=False), Category("pipe", synonyms=("tube",))])


@pytest.fixture
def ds(cats):
    return make_dataset(cats)


def test_layout_and_panoptic_json(tmp_path, cats, ds):
    folder = export_coco(ds, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == [
        "categories.json",
        "grounding_train.json",
        "id2label.json",
        "images",
        "panoptic",
        "panoptic_train.json",
        "semantic",
    ]
    data = json.loads((folder / "panoptic_train.json").read_text())
    assert set(data) >= {"images", "annotations", "categories"}
    assert [(c["id"], c["name"], c["isthing"], c["color"]) for c in data["categories"]] == [
        (i + 1, c.name, int(c.isthing), list(c.color)) for i, c in enumerate(cats)
    ]
    assert [im["file_name"] for im in data["images"]] == ds["file_name"]
    for row, ann in zip(ds, data["annotations"]):
        assert ann["image_id"] == row["image_id"]
        png = np.asarray(PILImage.open(folder / "panoptic" / ann["file_name"]))
        assert np.array_equal(png, np.asarray(row["panoptic"]))
        semantic = np.asarray(PILImage.open(folder / "semantic" / ann["file_name"]))
        assert np.array_equal(semantic, np.asarray(row["semantic"]))
        assert [(s["id"], s["category_id"], s["area"]) for s in ann["segments_info"]] == [
            (s["id"], s["category_id"] + 1, s["area"]) for s in row["segments_info"]
        ]
        with PILImage.open(folder / "images" / row["file_name"]) as image:
            assert image.format == "JPEG" and image.size == (row["width"], row["height"])
    assert not list(tmp_path.glob(".out*"))  # no temporary folder left behind


def test_pq_of_the_export_against_itself_is_100_and_drops_when_perturbed(tmp_path, ds):
    folder = export_coco(ds, tmp_path / "out")
    gt_json = str(folder / "panoptic_train.json")
    result = pq_compute(
        gt_json, gt_json, gt_folder=str(folder / "panoptic"), pred_folder=str(folder / "panoptic")
    )
    assert result["All"]["pq"] == pytest.approx(1.0)
    assert result["Things"]["n"] == 2 and result["Stuff"]["n"] == 2

    # Negative control: relabel one thing segment in a copy of the predictions.
    pred = json.loads((folder / "panoptic_train.json").read_text())
    seg = next(s for s in pred["annotations"][0]["segments_info"] if s["category_id"] == 1)
    seg["category_id"] = 3
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    worse = pq_compute(
        gt_json, str(tmp_path / "pred.json"), str(folder / "panoptic"), str(folder / "panoptic")
    )
    assert worse["All"]["pq"] < 0.999


def test_pycocotools_reads_grounding_and_masks_match_panoptic(tmp_path, cats, ds):
    folder = export_coco(ds, tmp_path / "out")
    coco = COCO(str(folder / "grounding_train.json"))
    assert sorted(coco.getCatIds()) == [1, 2, 3, 4]
    pan = json.loads((folder / "panoptic_train.json").read_text())
    by_image = {a["image_id"]: a for a in pan["annotations"]}
    sent_ids = []
    total = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        ids = rgb2id(np.asarray(PILImage.open(folder / "panoptic" / by_image[ann["image_id"]]["file_name"])))
        expected = ids == ann["segment_id"]
        assert np.array_equal(coco.annToMask(ann).astype(bool), expected)
        assert ann["area"] == int(expected.sum()) == int(mask_utils.area(ann["segmentation"]))
        assert ann["bbox"] == pytest.approx(mask_utils.toBbox(ann["segmentation"]).tolist())
        seg = next(s for s in by_image[ann["image_id"]]["segments_info"] if s["id"] == ann["segment_id"])
        assert ann["category_id"] == seg["category_id"]
        assert 2 <= len(ann["sentences"]) <= 3
        for sent in ann["sentences"]:
            assert set(sent) == {"tokens", "raw", "sent_id", "sent"}
            assert sent["sent"] == " ".join(sent["tokens"]) and sent["tokens"]
            sent_ids.append(sent["sent_id"])
        assert ann["sent_ids"] == [s["sent_id"] for s in ann["sentences"]]
        total += 1
    assert total == sum(len(r) for r in ds["segments_info"])
    assert len(set(sent_ids)) == len(sent_ids)


def test_load_coco_round_trips_our_export(tmp_path, cats):
    ds = make_dataset(cats, soft=True)
    folder = export_coco(ds, tmp_path / "out")
    back = load_coco(folder, cache_dir=str(tmp_path / "cache"))
    assert "attention" not in back.column_names
    original = ds.remove_columns(["attention"])
    assert back.features == original.features
    assert categories_of(back) == cats and settings_of(back) == SETTINGS
    for x, y in zip(original, back):
        for key in (
            "image_id",
            "file_name",
            "width",
            "height",
            "segments_info",
            "grounding",
            "prompt",
            "seed",
            "source",
        ):
            assert x[key] == y[key], key
        for key in ("image", "panoptic", "semantic"):
            assert np.array_equal(np.asarray(x[key]), np.asarray(y[key])), key
    validate(back)


def _write_foreign_coco(root):
    """An official-COCO-style folder: annotations/panoptic_val.json + PNG dir, val/ images, sparse category ids."""
    (root / "annotations" / "panoptic_val").mkdir(parents=True)
    (root / "val").mkdir()
    categories = [
        {"id": 7, "name": "person", "supercategory": "person", "isthing": 1, "color": [220, 20, 60]},
        {"id": 42, "name": "sky", "supercategory": "sky", "isthing": 0, "color": [70, 130, 180]},
    ]
    ids = np.zeros((20, 30), np.int64)
    ids[:8, :] = 5000  # sky
    ids[10:18, 2:8] = 300  # person
    ids[10:18, 20:28] = 301  # crowd of people
    PILImage.fromarray(id2rgb(ids)).save(root / "annotations" / "panoptic_val" / "000000000001.png")
    PILImage.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(root / "val" / "000000000001.jpg")
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 30, "height": 20}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "000000000001.png",
                "segments_info": [
                    {"id": 5000, "category_id": 42, "iscrowd": 0, "bbox": [0, 0, 30, 8], "area": 240},
                    {"id": 300, "category_id": 7, "iscrowd": 0, "bbox": [2, 10, 6, 8], "area": 48},
                    {"id": 301, "category_id": 7, "iscrowd": 1, "bbox": [20, 10, 8, 8], "area": 64},
                ],
            }
        ],
        "categories": categories,
    }
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    return ids


def test_load_coco_reads_a_foreign_layout_and_derives_semantic(tmp_path):
    ids = _write_foreign_coco(tmp_path / "coco")
    ds = load_coco(tmp_path / "coco", split="val", cache_dir=str(tmp_path / "cache"))
    validate(ds)
    cats = categories_of(ds)
    assert [(c.name, c.isthing, c.color) for c in cats] == [
        ("person", True, (220, 20, 60)),
        ("sky", False, (70, 130, 180)),
    ]
    row = ds[0]
    assert row["source"] == "real" and row["seed"] == -1 and row["prompt"] == "" and row["grounding"] == []
    assert [(s["id"], s["category_id"], s["iscrowd"], s["area"]) for s in row["segments_info"]] == [
        (5000, 1, 0, 240),
        (300, 0, 0, 48),
        (301, 0, 1, 64),
    ]
    expected = np.full(ids.shape, 255, np.uint8)
    expected[ids == 5000] = 1
    expected[(ids == 300) | (ids == 301)] = 0
    assert np.array_equal(np.asarray(row["semantic"]), expected)
    assert np.array_equal(rgb2id(np.asarray(row["panoptic"])), ids)


def test_load_coco_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="panoptic_json"):
        load_coco(tmp_path, split="val")
    ids = _write_foreign_coco(tmp_path / "coco")
    extra = ids.copy()
    extra[0, 0] = 999
    PILImage.fromarray(id2rgb(extra)).save(
        tmp_path / "coco" / "annotations" / "panoptic_val" / "000000000001.png"
    )
    with pytest.raises(ValueError, match="999"):
        load_coco(tmp_path / "coco", split="val", cache_dir=str(tmp_path / "cache"))


def test_failed_export_leaves_nothing_behind(tmp_path, ds, monkeypatch):
    calls = {"n": 0}
    real = export_module._png_bytes

    def flaky(value, mode):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk full")
        return real(value, mode)

    monkeypatch.setattr(export_module, "_png_bytes", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        export_coco(ds, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_split_needs_overwrite_and_other_splits_merge(tmp_path, cats, ds):
    folder = export_coco(ds, tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_coco(ds, folder)
    export_coco(ds.select([0]), folder, overwrite=True)
    assert len(json.loads((folder / "panoptic_train.json").read_text())["images"]) == 1
    val = make_dataset(cats, n=2, first_id=50)
    export_coco(val, folder, split="val")
    assert (folder / "panoptic_val.json").exists() and (folder / "panoptic_train.json").exists()
    assert len(list((folder / "images").iterdir())) == 3
    with pytest.raises(FileExistsError, match="already holds"):
        export_coco(ds.select([0]), folder, split="test")  # same file names as train
    assert not (folder / "panoptic_test.json").exists()
    shutil.rmtree(folder)
