"""Sources into the contract: in-memory, save_to_disk, Hub-style folders, Hub ids (local only), converters, mixing."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from seemadapt.data import (
    ContractError,
    from_coco_panoptic,
    from_masks,
    load_source,
    mix,
    read_categories,
    rgb2id,
    validate,
)
from seemadapt.data import sources as sources_module
from seemadapt.testing import make_contract_dataset


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEEMADAPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def shapes():
    return make_contract_dataset(num_images=3, size=(40, 32), seed=2)


def _decode(value) -> np.ndarray:
    return np.asarray(value)


def _names(ds, key="semantic"):
    """Per row, the class *name* of every pixel (None = ignore): comparable across different class orders."""
    names = read_categories(ds)
    out = []
    for row in ds:
        sem = _decode(row[key])
        lut = np.array([c.name for c in names] + [None] * (256 - len(names)), dtype=object)
        out.append(lut[sem])
    return out


# ------------------------------------------------------------------------------------------ simple sources


def test_dataset_and_datasetdict(shapes):
    assert load_source(shapes) is shapes
    dd = datasets.DatasetDict(train=shapes, validation=shapes.select([0]))
    assert len(load_source(dd, split="validation")) == 1
    with pytest.raises(ContractError, match=r"no split 'test'; it has \['train', 'validation'\]"):
        load_source(dd, split="test")
    with pytest.raises(ContractError, match="pass split"):
        load_source(dd, split=None)


def test_save_to_disk_folders_keep_categories(shapes, tmp_path):
    shapes.save_to_disk(tmp_path / "single")
    datasets.DatasetDict(train=shapes, test=shapes.select([1])).save_to_disk(tmp_path / "dict")
    single = load_source(tmp_path / "single")
    assert len(single) == 3 and read_categories(single) == read_categories(shapes)
    test = load_source(str(tmp_path / "dict"), split="test")
    assert len(test) == 1 and test[0]["image_id"] == 1
    validate(test)


def _hub_folder(ds: datasets.Dataset, folder: Path, categories: list | None) -> Path:
    (folder / "data").mkdir(parents=True)
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n# toy\n"
    )
    if categories is not None:
        (folder / "categories.json").write_text(json.dumps(categories))
    return folder


_CATEGORIES_JSON = [
    {"id": 0, "name": "square", "isthing": True, "color": [200, 10, 10]},
    {"id": 1, "name": "disc", "isthing": True, "color": [10, 200, 10]},
    {"id": 2, "name": "background", "isthing": False, "color": [10, 10, 200]},
]


def test_hub_style_local_folder_and_categories_json(shapes, tmp_path):
    folder = _hub_folder(shapes, tmp_path / "repo", _CATEGORIES_JSON)
    ds = load_source(folder)
    assert len(ds) == 3
    cats = read_categories(ds)
    assert [c.color for c in cats] == [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    assert [c.isthing for c in cats] == [True, True, False]
    validate(ds)
    # a parquet file on its own loads too, and finds the categories.json beside its folder only if there
    single = load_source(folder / "data" / "train-00000-of-00001.parquet")
    assert single["image_id"] == [0, 1, 2]


def test_hub_repo_id_goes_through_load_dataset(shapes, tmp_path, monkeypatch):
    folder = _hub_folder(shapes, tmp_path / "repo", None)
    calls = []
    real_load = datasets.load_dataset

    def fake_load(path, *args, **kwargs):
        calls.append((path, kwargs))
        assert path == "me/shapes"  # the repo id is passed through untouched
        return real_load(str(folder), *args, **kwargs)

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load)
    ds = load_source("me/shapes", split="train", revision="main")
    assert calls == [("me/shapes", {"split": "train", "revision": "main"})]
    assert len(ds) == 3 and [c.isthing for c in read_categories(ds)] == [True, True, False]


def test_unknown_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        load_source(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContractError, match="not a dataset folder"):
        load_source(tmp_path / "empty")
    with pytest.raises(TypeError, match="unsupported dataset source"):
        load_source(42)


# ------------------------------------------------------------------------------------------ from_masks


def _kvasir(root: Path, n: int = 3, size=(48, 40)) -> Path:
    """Kvasir-SEG layout: images/*.jpg and JPEG-compressed binary masks/*.jpg (0 / 255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[4:14, 4:16] = 255  # two separate polyps
        mask[22:34, 26 + i : 40 + i] = 255
        Image.fromarray(image).save(root / "images" / f"cju{i:04d}.jpg", quality=90)
        Image.fromarray(mask).save(root / "masks" / f"cju{i:04d}.jpg", quality=75)
    return root


def test_from_masks_kvasir_layout(tmp_path):
    root = _kvasir(tmp_path / "kvasir")
    ds = from_masks(root / "images", root / "masks", "polyp")
    cats = validate(ds)
    assert [(c.name, c.isthing) for c in cats] == [("polyp", True), ("background", False)]
    assert ds["source"] == ["real"] * 3 and ds["seed"] == [-1] * 3
    for row in ds:
        original = (root / "images" / row["file_name"]).read_bytes()
        assert (
            ds.with_format("arrow")[row["image_id"] : row["image_id"] + 1]["image"][0]["bytes"].as_py()
            == original
        )
        decoded_mask = np.asarray(Image.open(root / "masks" / row["file_name"]).convert("L"))
        sem = _decode(row["semantic"])
        np.testing.assert_array_equal(sem, np.where(decoded_mask > 127, 0, 1))  # documented cut: > 127
        things = [s for s in row["segments_info"] if s["isthing"]]
        assert len(things) == 2  # connected components are instances
        assert sum(s["area"] for s in row["segments_info"]) == sem.size  # no void in a binary mask


def test_from_masks_zero_one_pngs_and_values_mode(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lbl").mkdir()
    values = np.zeros((16, 20), np.uint8)
    values[2:6, 2:6] = 1
    values[8:14, :] = 2
    values[0, :] = 255
    Image.fromarray(np.full((16, 20, 3), 90, np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(values).save(tmp_path / "lbl" / "a_mask.png")
    ds = from_masks(
        tmp_path / "img",
        tmp_path / "lbl",
        ["liver", "tumor"],
        mode="values",
        things={"tumor"},
        mask_suffix="_mask",
    )
    cats = validate(ds)
    assert [(c.name, c.isthing) for c in cats] == [("liver", False), ("tumor", True), ("background", False)]
    sem = _decode(ds[0]["semantic"])
    expected = np.select([values == 1, values == 2, values == 255], [0, 1, 255], default=2)
    np.testing.assert_array_equal(sem, expected)
    ids = rgb2id(_decode(ds[0]["panoptic"]))
    assert np.all(ids[0] == 0)  # 255 = void
    # a 0/1 binary PNG mask: threshold falls to 0 automatically
    Image.fromarray((values == 1).astype(np.uint8)).save(tmp_path / "lbl" / "a_mask.png")
    binary = from_masks(tmp_path / "img", tmp_path / "lbl", "liver", mask_suffix="_mask")
    assert (_decode(binary[0]["semantic"]) == 0).sum() == 16
    with pytest.raises(ContractError, match=r"mask value\(s\) \[1\] map to no class"):
        from_masks(tmp_path / "img", tmp_path / "lbl", {2: "tumor"}, mode="values", mask_suffix="_mask")


def test_from_masks_errors(tmp_path):
    root = _kvasir(tmp_path / "k", n=2)
    (root / "masks" / "cju0001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) have no mask.*cju0001.jpg"):
        from_masks(root / "images", root / "masks", "polyp")
    with pytest.raises(ValueError, match="exactly one class"):
        from_masks(root / "images", root / "masks", ["a", "b"])
    with pytest.raises(ContractError, match=r"needs class names.*from_masks"):
        load_source(root)


# ------------------------------------------------------------------------------------------ from_coco_panoptic


def _coco_folder(ds: datasets.Dataset, root: Path, split: str = "train", extras: bool = True) -> dict:
    """A COCO-panoptic folder with non-contiguous category ids and a RefCOCO-style grounding JSON."""
    from pycocotools import mask as mask_utils

    dataset_ids = [
        12,
        3,
        40,
    ]  # category index i -> COCO id; sorted order is disc(3), square(12), background(40)
    for sub in ("images", "panoptic"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cats = read_categories(ds)
    coco = {"images": [], "annotations": [], "categories": []}
    grounding = {"images": [], "annotations": []}
    for c in cats:
        coco["categories"].append(
            {"id": dataset_ids[c.id], "name": c.name, "isthing": int(c.isthing), "color": list(c.color)}
        )
    ann_id = 1000
    for row in ds:
        stem = f"img{row['image_id']:03d}"
        row["image"].convert("RGB").save(root / "images" / f"{stem}.jpg", quality=95)
        row["panoptic"].save(root / "panoptic" / f"{stem}.png")
        coco["images"].append(
            {
                "id": row["image_id"],
                "file_name": f"{stem}.jpg",
                "width": row["width"],
                "height": row["height"],
                **({"prompt": row["prompt"], "seed": row["seed"], "source": row["source"]} if extras else {}),
            }
        )
        coco["annotations"].append(
            {
                "image_id": row["image_id"],
                "file_name": f"{stem}.png",
                "segments_info": [
                    {
                        "id": s["id"],
                        "category_id": dataset_ids[s["category_id"]],
                        "iscrowd": 0,
                        "bbox": s["bbox"],
                        "area": s["area"],
                    }
                    for s in row["segments_info"]
                ],
            }
        )
        gid = 500 + row["image_id"]  # grounding JSON uses its own image ids: linked by file name
        grounding["images"].append({"id": gid, "file_name": f"{stem}.jpg"})
        ids = rgb2id(np.asarray(row["panoptic"]))
        for k, g in enumerate(row["grounding"]):
            mask = ids == g["segment_id"]
            if k % 2 == 0:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                seg = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                ys, xs = np.nonzero(mask)
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                seg = [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]]
            grounding["annotations"].append(
                {
                    "id": ann_id,
                    "image_id": gid,
                    "category_id": 0,
                    "segmentation": seg,
                    "sentences": [
                        {"raw": t, "sent": t.lower(), "tokens": t.split(), "sent_id": j}
                        for j, t in enumerate(g["sentences"])
                    ],
                }
            )
            ann_id += 1
    (root / f"panoptic_{split}.json").write_text(json.dumps(coco))
    (root / f"grounding_{split}.json").write_text(json.dumps(grounding))
    return {"dataset_ids": dataset_ids}


def test_from_coco_panoptic_folder(shapes, tmp_path):
    root = tmp_path / "coco"
    _coco_folder(shapes, root)
    ds = from_coco_panoptic(root, split="train")
    cats = validate(ds)
    assert [c.name for c in cats] == ["disc", "square", "background"]  # COCO ids sorted: 3, 12, 40
    assert [c.isthing for c in cats] == [True, True, False]
    assert (
        ds["source"] == ["synthetic"] * 3
    )  # read from the images entries, as diffsynth's export writes them
    assert ds["prompt"] == shapes["prompt"] and ds["seed"] == shapes["seed"]
    assert from_coco_panoptic(root, source="real")["source"] == ["real"] * 3
    for orig, conv in zip(shapes, ds):
        assert conv["file_name"] == f"img{orig['image_id']:03d}.jpg"
        np.testing.assert_array_equal(rgb2id(_decode(conv["panoptic"])), rgb2id(_decode(orig["panoptic"])))
        assert {s["id"] for s in conv["segments_info"]} == {s["id"] for s in orig["segments_info"]}
        # same pixels, same class names, despite the new class order
        names_orig = np.array(["square", "disc", "background", *[None] * 253], dtype=object)[
            _decode(orig["semantic"])
        ]
        names_conv = np.array(["disc", "square", "background", *[None] * 253], dtype=object)[
            _decode(conv["semantic"])
        ]
        assert (names_orig == names_conv).all()
        # grounding linked back to the right segments (RLE and box polygons, via IoU)
        assert {g["segment_id"]: g["sentences"] for g in conv["grounding"]} == {
            g["segment_id"]: g["sentences"] for g in orig["grounding"]
        }
    assert len(load_source(root)) == 3  # folder detection
    no_grounding = from_coco_panoptic(root, grounding_json=False)
    assert all(g == [] for g in no_grounding["grounding"])


def test_from_coco_panoptic_original_coco_names(shapes, tmp_path):
    root = tmp_path / "coco2017"
    _coco_folder(shapes, root, split="val2017", extras=False)
    (root / "annotations").mkdir()
    (root / "panoptic_val2017.json").rename(root / "annotations" / "panoptic_val2017.json")
    (root / "images").rename(root / "val2017")
    (root / "panoptic").rename(root / "panoptic_val2017")
    ds = from_coco_panoptic(root, split="val2017", grounding_json=False)
    assert len(ds) == 3 and ds["source"] == ["real"] * 3 and ds["seed"] == [-1] * 3
    with pytest.raises(FileNotFoundError, match="panoptic JSON for split 'train'"):
        from_coco_panoptic(root, split="train")


# ------------------------------------------------------------------------------------------ mixing


def test_mix_aligns_categories_by_name(shapes, tmp_path):
    root = _kvasir(tmp_path / "kvasir", n=2)
    polyps = from_masks(root / "images", root / "masks", "polyp")
    polyps.save_to_disk(tmp_path / "polyps_disk")  # a disk-backed source goes through the cache
    mixed = mix([shapes, tmp_path / "polyps_disk"])
    cats = validate(mixed)
    assert [c.name for c in cats] == ["square", "disc", "background", "polyp"]
    assert [c.isthing for c in cats] == [True, True, False, True]
    assert mixed["image_id"] == list(range(5))
    assert mixed["source"] == ["synthetic"] * 3 + ["real"] * 2
    before = _names(shapes) + _names(polyps)
    after = _names(mixed)
    for b, a in zip(before, after):
        assert (a == b).all()
    # segments carry the new contiguous ids
    row = mixed[3]
    assert {s["category_id"] for s in row["segments_info"]} == {3, 2}
    # explicit order; file names do not collide here so they are kept
    ordered = mix([polyps, shapes], classes=["background", "polyp", "disc", "square"])
    assert [c.name for c in read_categories(ordered)] == ["background", "polyp", "disc", "square"]
    assert ordered["file_name"][:2] == polyps["file_name"]
    after = _names(ordered)
    for b, a in zip(_names(polyps) + _names(shapes), after):
        assert (a == b).all()


def test_mix_cache_is_reused_for_the_same_source_and_not_for_another(shapes, tmp_path):
    make_contract_dataset(num_images=2, size=(40, 32), seed=3).save_to_disk(tmp_path / "a")
    make_contract_dataset(num_images=2, size=(40, 32), seed=4).save_to_disk(tmp_path / "b")

    def cache_file(folder):
        mixed = mix([shapes, datasets.load_from_disk(str(folder))])  # a fresh load of the folder each time
        return {Path(f["filename"]).name for f in mixed.cache_files if "mix" in Path(f["filename"]).parts}

    first = cache_file(tmp_path / "a")
    assert len(first) == 1
    assert cache_file(tmp_path / "a") == first  # same source: the aligned copy is found again
    assert cache_file(tmp_path / "b").isdisjoint(first)  # other content: another cache file
    assert len(list((tmp_path / "cache" / "mix").glob("*.arrow"))) == 2


def test_mix_renames_colliding_files_and_rejects_conflicts(shapes, tmp_path):
    twice = mix([shapes, shapes])
    assert twice["file_name"][0] == "s0_000000.png" and twice["file_name"][3] == "s1_000000.png"
    assert len(set(twice["image_id"])) == 6
    as_thing = make_contract_dataset(num_images=1, classes=("square", "background"), stuff=())
    with pytest.raises(ContractError, match=r"'background' is stuff in source 0.*a thing in source 1"):
        mix([shapes, as_thing])
    with pytest.raises(ContractError, match="has class 'disc' which is not in classes"):
        mix([shapes], classes=["square", "background"])


def test_load_source_of_a_list_mixes(shapes):
    other = make_contract_dataset(
        num_images=2, classes=("disc", "background"), seed=5, source="real", image_id_start=100
    )
    ds = load_source([shapes, other])
    assert len(ds) == 5 and ds["source"][-1] == "real"
    assert [c.name for c in read_categories(ds)] == ["square", "disc", "background"]
