"""The contract Features, samples -> Dataset, and what survives each storage path (datasets 5.2)."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image, List, Value, load_dataset, load_from_disk
from PIL import Image as PILImage

from diffsynth.categories import Category, resolve_categories
from diffsynth.dataset import (
    ContractError,
    Sample,
    categories_of,
    save_to_disk,
    settings_of,
    to_dataset,
    validate,
    with_metadata,
)
from diffsynth.hub import stage_repo
from diffsynth.schema import COLUMNS, decode_attention, features

SETTINGS = {
    "model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "steps": 20,
    "tau": 4,
    "thresholds": [0.5, 0.6],
}
PNG = b"\x89PNG\r\n\x1a\n"


def make_samples(cats, n=3, size=(48, 64), soft=False, ext="jpg"):
    rng = np.random.default_rng(0)
    bg = len(cats) - 1
    samples = []
    for i in range(n):
        lm = np.full(size, bg, np.uint8)
        lm[5:15, 5 + i : 20 + i] = 0
        lm[25:40, 30:50] = 0
        lm[30:, :10] = 1
        lm[0:2, :] = 255
        image = PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        soft_maps = rng.random((bg, size[0] // 4, size[1] // 4)).astype(np.float32) if soft else None
        samples.append(
            Sample.from_label_map(
                image,
                lm,
                cats,
                image_id=100 + i,
                file_name=f"{100 + i:06d}.{ext}",
                prompt="a photo of mold on a wall",
                seed=i,
                min_area=4,
                soft_maps=soft_maps,
            )
        )
    return samples


@pytest.fixture
def cats():
    return resolve_categories([Category("mold", synonyms=("fungus",)), Category("wall", isthing=False)])


@pytest.fixture
def ds(cats):
    return to_dataset(make_samples(cats), cats, SETTINGS)


def _stored_bytes(dataset, column, row=0):
    return dataset.data.table.column(column)[row].as_py()["bytes"]


def _assert_same_dataset(a, b, cats):
    assert b.features == a.features  # Features equality includes the ClassLabel id (our metadata blob)
    assert categories_of(b) == cats
    assert settings_of(b) == SETTINGS
    assert len(b) == len(a)
    for x, y in zip(a, b):
        for key in (
            "image_id",
            "file_name",
            "width",
            "height",
            "segments_info",
            "grounding",
            "prompt",
            "seed",
        ):
            assert x[key] == y[key]
        for key in ("image", "panoptic", "semantic"):
            assert np.array_equal(np.asarray(x[key]), np.asarray(y[key]))


# ------------------------------------------------------------------------------------------------- features
def test_features_follow_the_contract(cats):
    f = features(cats)
    assert tuple(f) == COLUMNS
    seg = f["segments_info"]
    assert isinstance(seg, List) and isinstance(seg.feature, dict)
    label = seg.feature["category_id"]
    assert isinstance(label, ClassLabel) and label.names == ["mold", "wall", "background"]
    assert seg.feature["bbox"] == List(Value("float32"), length=4)
    assert seg.feature["id"] == Value("int64") and seg.feature["iscrowd"] == Value("int8")
    assert seg.feature["area"] == Value("int64") and seg.feature["isthing"] == Value("bool")
    assert f["grounding"] == List({"segment_id": Value("int64"), "sentences": List(Value("string"))})
    for column in ("image", "panoptic", "semantic"):
        assert isinstance(f[column], Image)
    assert f["width"] == Value("int32") and f["image_id"] == Value("int64") and f["seed"] == Value("int64")
    assert "attention" not in f and isinstance(features(cats, with_attention=True)["attention"], List)


def test_rows_hold_the_annotation(cats):
    samples = make_samples(cats)
    ds = to_dataset(samples, cats, SETTINGS)
    assert ds.column_names == list(COLUMNS)
    for sample, row in zip(samples, ds):
        ann = sample.annotation
        assert row["image"].mode == "RGB" and row["image"].size == sample.image.size
        assert np.array_equal(np.asarray(row["panoptic"]), ann.panoptic)
        assert np.array_equal(np.asarray(row["semantic"]), ann.semantic)
        assert row["segments_info"] == ann.segments_info
        assert row["grounding"] == ann.grounding
        assert (row["prompt"], row["seed"], row["source"]) == (sample.prompt, sample.seed, "synthetic")
        assert (row["width"], row["height"]) == sample.image.size


def test_masks_are_stored_as_png_and_image_in_its_file_format(cats, ds):
    for column, mode in (("panoptic", "RGB"), ("semantic", "L")):
        data = _stored_bytes(ds, column)
        assert data.startswith(PNG)
        assert PILImage.open(io.BytesIO(data)).mode == mode
    assert PILImage.open(io.BytesIO(_stored_bytes(ds, "image"))).format == "JPEG"
    png_ds = to_dataset(make_samples(cats, n=1, ext="png"), cats)
    assert _stored_bytes(png_ds, "image").startswith(PNG)
    # lossless: the PNG image decodes to the exact pixels
    assert np.array_equal(np.asarray(png_ds[0]["image"]), np.asarray(make_samples(cats, n=1)[0].image))


def test_attention_round_trips_quantised(cats):
    samples = make_samples(cats, n=2, soft=True)
    ds = to_dataset(samples, cats, SETTINGS)
    assert "attention" in ds.column_names
    cell = ds.data.table.column("attention")[0].as_py()
    assert all(item["bytes"].startswith(PNG) for item in cell)
    maps = decode_attention(ds[0]["attention"])
    assert maps.shape == samples[0].soft_maps.shape and maps.dtype == np.float32
    assert np.abs(maps - samples[0].soft_maps).max() <= 0.5 / 255 + 1e-6


def test_sample_and_to_dataset_errors(cats):
    good = make_samples(cats, n=2)
    with pytest.raises(ValueError, match="label_map"):
        Sample(good[0].image, np.zeros((3, 3), np.uint8), good[0].annotation, image_id=1, file_name="a.jpg")
    with pytest.raises(ValueError, match="file_name"):
        Sample(good[0].image, good[0].label_map, good[0].annotation, image_id=1, file_name="a.tiff")
    with pytest.raises(ValueError, match="source"):
        Sample(
            good[0].image, good[0].label_map, good[0].annotation, image_id=1, file_name="a.jpg", source="x"
        )
    with pytest.raises(ValueError, match="image_id"):
        to_dataset([good[0], good[0]], cats)
    mixed = make_samples(cats, n=1, soft=True) + make_samples(cats, n=2)[1:]
    with pytest.raises(ValueError, match="soft_maps"):
        to_dataset(mixed, cats)
    with pytest.raises(ValueError, match="samples"):
        to_dataset([], cats)
    too_many = make_samples(cats, n=1)[0]
    too_many.soft_maps = np.zeros((5, 4, 4), np.float32)
    with pytest.raises(ValueError, match="soft_maps"):
        to_dataset([too_many], cats)


# ----------------------------------------------------------------------------------------------- round trips
def test_save_to_disk_round_trip(tmp_path, cats, ds):
    save_to_disk(ds, tmp_path / "disk")
    assert json.loads((tmp_path / "disk" / "id2label.json").read_text()) == {
        "0": "mold",
        "1": "wall",
        "2": "background",
    }
    assert [
        c["name"] for c in json.loads((tmp_path / "disk" / "categories.json").read_text())["categories"]
    ] == [
        "mold",
        "wall",
        "background",
    ]
    _assert_same_dataset(ds, load_from_disk(str(tmp_path / "disk")), cats)


def test_parquet_round_trip(tmp_path, cats, ds):
    ds.to_parquet(str(tmp_path / "train.parquet"))
    back = Dataset.from_parquet(str(tmp_path / "train.parquet"), cache_dir=str(tmp_path / "cache"))
    _assert_same_dataset(ds, back, cats)
    # description does not survive parquet, which is why the metadata rides in the Features
    assert back.info.description == ""
    via_loader = load_dataset(
        "parquet",
        data_files=str(tmp_path / "train.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache2"),
    )
    _assert_same_dataset(ds, via_loader, cats)


def test_staged_repo_round_trip_with_load_dataset(tmp_path, cats, ds):
    folder = stage_repo(ds, tmp_path / "repo", preview_rows=2)
    back = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    _assert_same_dataset(ds, back, cats)
    # The README's dataset_info alone must also carry the Features: strip the parquet schema metadata.
    import pyarrow.parquet as pq

    shard = next((folder / "data").glob("train-*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata(None), shard)
    back = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache3"))
    assert categories_of(back) == cats and settings_of(back) == SETTINGS


def test_attention_survives_parquet(tmp_path, cats):
    samples = make_samples(cats, n=2, soft=True)
    ds = to_dataset(samples, cats, SETTINGS)
    ds.to_parquet(str(tmp_path / "a.parquet"))
    back = Dataset.from_parquet(str(tmp_path / "a.parquet"), cache_dir=str(tmp_path / "cache"))
    assert back.features == ds.features
    assert np.array_equal(decode_attention(back[1]["attention"]), decode_attention(ds[1]["attention"]))


# ------------------------------------------------------------------------------------------------- metadata
def test_settings_are_scrubbed_of_secrets(cats):
    ds = to_dataset(
        make_samples(cats, n=1), cats, {"model": "m", "hf_token": "hf_SECRET", "nested": {"api_key": 1}}
    )
    assert settings_of(ds) == {"model": "m", "nested": {}}
    assert "hf_SECRET" not in json.dumps(ds.features.to_dict())


def test_with_metadata_replaces_settings_and_colours(cats, ds):
    recoloured = [dataclasses.replace(cats[0], color=(1, 2, 3)), *cats[1:]]
    out = with_metadata(ds, categories=recoloured, settings={"model": "other"})
    assert settings_of(out) == {"model": "other"} and categories_of(out)[0].color == (1, 2, 3)
    assert out["segments_info"] == ds["segments_info"]
    with pytest.raises(ValueError, match="categories"):
        with_metadata(ds, categories=cats[:2])


def test_categories_of_a_foreign_contract_dataset_reads_names_and_isthing(ds):
    plain = ds.cast(
        Features(
            {
                **ds.features,
                "segments_info": List(
                    {
                        "id": Value("int64"),
                        "category_id": ClassLabel(names=["mold", "wall", "background"]),
                        "iscrowd": Value("int8"),
                        "bbox": List(Value("float32"), length=4),
                        "area": Value("int64"),
                        "isthing": Value("bool"),
                    }
                ),
            }
        )
    )
    cats = categories_of(plain)
    assert [(c.name, c.isthing) for c in cats] == [("mold", True), ("wall", False), ("background", False)]
    assert settings_of(plain) == {}
    validate(plain)


# ------------------------------------------------------------------------------------------------- validate
def test_validate_accepts_a_good_dataset(ds):
    validate(ds)


def _tamper(ds, fn):
    """A copy of ``ds`` with row 0 changed by ``fn`` (images handled as stored bytes)."""
    raw = ds
    for column in ("image", "panoptic", "semantic"):
        raw = raw.cast_column(column, Image(decode=False))
    rows = raw.to_list()
    fn(rows[0])
    return Dataset.from_list(rows, features=ds.features)


def test_validate_names_row_and_problem(ds):
    with pytest.raises(ContractError, match="Missing contract columns"):
        validate(ds.remove_columns(["grounding"]))

    def bad_id(row):
        row["segments_info"][0]["id"] = 999

    with pytest.raises(ContractError, match=r"row 0 .*segment id 999 .*not in the panoptic PNG"):
        validate(_tamper(ds, bad_id))

    def bad_area(row):
        row["segments_info"][0]["area"] += 1

    with pytest.raises(ContractError, match="area"):
        validate(_tamper(ds, bad_area))

    def bad_bbox(row):
        row["segments_info"][0]["bbox"] = [-1.0, 0.0, 5.0, 5.0]

    with pytest.raises(ContractError, match="bbox"):
        validate(_tamper(ds, bad_bbox))

    def bad_semantic(row):
        sem = np.asarray(PILImage.open(io.BytesIO(row["semantic"]["bytes"]))).copy()
        sem[0, 0] = 9
        buf = io.BytesIO()
        PILImage.fromarray(sem).save(buf, format="PNG")
        row["semantic"] = {"bytes": buf.getvalue(), "path": None}

    with pytest.raises(ContractError, match=r"semantic.*\[9\]"):
        validate(_tamper(ds, bad_semantic))

    def bad_grounding(row):
        row["grounding"][0]["segment_id"] = 12345

    with pytest.raises(ContractError, match="grounding"):
        validate(_tamper(ds, bad_grounding))

    def dup_id(row):
        row["image_id"] = 101

    with pytest.raises(ContractError, match="image_id"):
        validate(_tamper(ds, dup_id))

    wrong_type = ds.cast_column("seed", Value("string"))
    with pytest.raises(ContractError, match="seed"):
        validate(wrong_type)
