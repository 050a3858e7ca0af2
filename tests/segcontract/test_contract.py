"""The dataset contract: features, categories, rows, and validation errors that name row, column and fix."""

from __future__ import annotations

import io
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from segcontract import (
    Category,
    ContractError,
    attach_categories,
    check_features,
    contract_features,
    id2rgb,
    iter_raw_rows,
    make_row,
    read_categories,
    rgb2id,
    validate,
)
from segcontract.testing import make_contract_dataset


def _rows(ds):
    return [row for _, row in iter_raw_rows(ds)]


def _rebuild(ds, rows, features=None, keep_description=True):
    features = features or ds.features
    info = datasets.DatasetInfo(
        features=features, description=ds.info.description if keep_description else None
    )
    return datasets.Dataset.from_list(rows, features=features, info=info)


@pytest.fixture(scope="module")
def toy():
    return make_contract_dataset(num_images=3, size=(48, 40), seed=1)


def test_make_contract_dataset_is_valid_and_carries_categories(toy):
    assert toy.features == contract_features(["square", "disc", "background"])
    cats = validate(toy)
    assert [(c.name, c.isthing) for c in cats] == [("square", True), ("disc", True), ("background", False)]
    row = toy[0]
    assert row["image"].size == (48, 40) and (row["width"], row["height"]) == (48, 40)
    ids = rgb2id(np.asarray(row["panoptic"]))
    semantic = np.asarray(row["semantic"])
    assert row["semantic"].mode == "L"
    for s in row["segments_info"]:
        mask = ids == s["id"]
        assert mask.sum() == s["area"]
        assert np.all(semantic[mask] == s["category_id"])
    assert np.all(semantic[ids == 0] == 255)  # void is ignore
    assert {g["segment_id"] for g in row["grounding"]} <= {s["id"] for s in row["segments_info"]}


def test_make_contract_dataset_is_deterministic():
    a = make_contract_dataset(num_images=2, seed=3)
    b = make_contract_dataset(num_images=2, seed=3)
    c = make_contract_dataset(num_images=2, seed=4)
    assert _rows(a) == _rows(b)
    assert _rows(a) != _rows(c)


def test_make_row_computes_bbox_area_and_semantic():
    ids = np.zeros((4, 5), dtype=np.int32)
    ids[1:3, 2:5] = 7  # 2 rows x 3 cols at x=2, y=1
    ids[0, 0] = 3
    row = make_row(
        image=np.zeros((4, 5, 3), dtype=np.uint8),
        panoptic_ids=ids,
        segments=[
            {"id": 7, "category_id": 1, "isthing": True},
            {"id": 3, "category_id": 0, "isthing": False},
        ],
        image_id=5,
        file_name="a.png",
    )
    seg7, seg3 = row["segments_info"]
    assert seg7["bbox"] == [2.0, 1.0, 3.0, 2.0] and seg7["area"] == 6
    assert seg3["bbox"] == [0.0, 0.0, 1.0, 1.0] and seg3["area"] == 1
    sem = np.asarray(Image.open(io.BytesIO(row["semantic"]["bytes"])))
    expected = np.full((4, 5), 255)
    expected[1:3, 2:5] = 1
    expected[0, 0] = 0
    np.testing.assert_array_equal(sem, expected)
    pan = np.asarray(Image.open(io.BytesIO(row["panoptic"]["bytes"])))
    np.testing.assert_array_equal(rgb2id(pan), ids)
    with pytest.raises(ValueError, match="does not occur"):
        make_row(
            image=np.zeros((4, 5, 3), np.uint8),
            panoptic_ids=ids,
            segments=[{"id": 9, "category_id": 0, "isthing": True}],
            image_id=0,
            file_name="b.png",
        )


def test_id_encoding_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536 + 3, 256**3 - 1]])
    rgb = id2rgb(ids)
    assert rgb[1, 1].tolist() == [3, 0, 1]
    np.testing.assert_array_equal(rgb2id(rgb), ids)


def test_missing_columns_are_named_with_the_fix(toy):
    with pytest.raises(ContractError) as err:
        validate(toy.remove_columns(["semantic", "source"]))
    assert "missing column(s) ['semantic', 'source']" in str(err.value)
    assert "Fix" in str(err.value)


def test_wrong_types_are_named(toy):
    features = toy.features.copy()
    features["panoptic"] = datasets.Value("binary")
    rows = _rows(toy)
    for r in rows:
        r["panoptic"] = r["panoptic"]["bytes"]
    with pytest.raises(ContractError, match=r"column 'panoptic' must be datasets.Image\(\).*cast_column"):
        validate(_rebuild(toy, rows, features))


def test_sequence_of_dict_trap_is_named(toy):
    features = toy.features.copy()
    features["segments_info"] = datasets.Sequence(dict(toy.features["segments_info"].feature))
    with pytest.raises(ContractError, match=r"dict of lists.*datasets.List"):
        check_features(features)


def test_category_id_must_be_a_classlabel(toy):
    features = toy.features.copy()
    inner = dict(features["segments_info"].feature)
    inner["category_id"] = datasets.Value("int64")
    features["segments_info"] = datasets.List(inner)
    with pytest.raises(ContractError, match="must be a ClassLabel"):
        validate(_rebuild(toy, _rows(toy), features))


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda r: r["segments_info"].append({**r["segments_info"][0], "id": 999}),
            r"row 1 .*id\(s\) \[999\] do not occur in the panoptic PNG",
        ),
        (
            lambda r: r.update(segments_info=r["segments_info"][1:]),
            r"row 1 .*panoptic PNG holds segment id\(s\) \[1\] with no segments_info record",
        ),
        (
            lambda r: r["segments_info"][0].update(category_id=-1),
            r"row 1 .*segments_info\[0\].category_id = -1 is out of range 0..2",
        ),
        (lambda r: r.update(width=r["width"] + 1), r"row 1 .*the image is 48x40 but width/height say 49x40"),
        (lambda r: r.update(source="generated"), r"row 1 .*column 'source' is 'generated'"),
        (
            lambda r: r["grounding"].append({"segment_id": 12345, "sentences": ["x"]}),
            r"row 1 .*grounding\[\d\].segment_id = 12345",
        ),
        (lambda r: r["segments_info"].append(dict(r["segments_info"][0])), r"row 1 .*is repeated"),
        (lambda r: r.update(image_id=0), r"row 1 .*image_id 0 repeats row 0"),
        (
            lambda r: r["segments_info"][1].update(isthing=not r["segments_info"][1]["isthing"]),
            r"row 1 .*isthing",
        ),
    ],
)
def test_row_errors_name_row_column_and_field(toy, edit, pattern):
    rows = _rows(toy)
    edit(rows[1])
    with pytest.raises(ContractError, match=pattern):
        validate(_rebuild(toy, rows))


def test_semantic_values_out_of_range(toy):
    rows = _rows(toy)
    sem = np.asarray(Image.open(io.BytesIO(rows[2]["semantic"]["bytes"]))).copy()
    sem[0, 0] = 7
    buf = io.BytesIO()
    Image.fromarray(sem, mode="L").save(buf, format="PNG")
    rows[2]["semantic"] = {"bytes": buf.getvalue(), "path": None}
    with pytest.raises(ContractError, match=r"row 2 .*column 'semantic' holds value\(s\) \[7\]"):
        validate(_rebuild(toy, rows))


def test_panoptic_must_be_rgb(toy):
    rows = _rows(toy)
    buf = io.BytesIO()
    Image.new("L", (48, 40)).save(buf, format="PNG")
    rows[0]["panoptic"] = {"bytes": buf.getvalue(), "path": None}
    with pytest.raises(ContractError, match=r"row 0 .*'panoptic' is a mode 'L' image.*id2rgb"):
        validate(_rebuild(toy, rows))


def test_corrupt_and_empty_images_are_caught_early(toy):
    rows = _rows(toy)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    rows[0]["image"] = {"bytes": buf.getvalue()[: len(buf.getvalue()) // 2], "path": None}  # truncated JPEG
    rows[1]["image"] = {"bytes": b"not an image at all", "path": None}
    rows[2]["semantic"] = {"bytes": b"", "path": None}
    with pytest.raises(ContractError) as err:
        validate(_rebuild(toy, rows))
    msg = str(err.value)
    assert "in 3 row(s)" in msg
    assert (
        "row 0 (image_id=0, file_name='000000.png'): column 'image' holds corrupt or truncated image bytes"
        in msg
    )
    assert "row 1 (image_id=1, file_name='000001.png'): column 'image' holds corrupt" in msg
    assert "row 2 (image_id=2, file_name='000002.png'): column 'semantic' is empty" in msg
    # a shallow check reads no image and so passes
    validate(_rebuild(toy, rows), deep=False)


def test_empty_dataset_and_datasetdict_are_rejected(toy):
    with pytest.raises(ContractError, match="no rows"):
        validate(toy.select([]))
    with pytest.raises(ContractError, match=r"DatasetDict with splits \['train'\]; pick one"):
        validate(datasets.DatasetDict(train=toy))


def test_categories_fall_back_to_segments_info_flags():
    ds = make_contract_dataset(
        num_images=2, classes=("square", "disc", "wall", "background"), stuff=("background", "wall")
    )
    plain = _rebuild(
        ds, _rows(ds), keep_description=False
    )  # no description: only ClassLabel names and segment flags remain
    assert plain.info.description in (None, "")
    cats = read_categories(plain)
    assert [c.name for c in cats] == ["square", "disc", "wall", "background"]
    assert [c.isthing for c in cats] == [True, True, False, False]
    assert all(len(c.color) == 3 for c in cats)


def test_conflicting_isthing_flags_are_an_error(toy):
    rows = _rows(toy)
    for r in rows:
        for s in r["segments_info"]:
            if s["category_id"] == 2 and r["image_id"] == 1:
                s["isthing"] = True
    with pytest.raises(
        ContractError, match=r"category 2 is marked isthing=False in some segments.*first in row 1"
    ):
        read_categories(_rebuild(toy, rows, keep_description=False))


def test_explicit_categories_and_categories_json(toy, tmp_path):
    path = tmp_path / "categories.json"
    path.write_text(
        json.dumps(
            [
                {"id": 0, "name": "square", "isthing": True, "color": [1, 2, 3]},
                {"id": 1, "name": "disc", "isthing": True, "color": [4, 5, 6]},
                {"id": 2, "name": "background", "isthing": False, "color": [7, 8, 9]},
            ]
        )
    )
    cats = read_categories(toy, path)
    assert [c.color for c in cats] == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    with pytest.raises(ContractError, match=r"categories name \['mold'\]"):
        read_categories(toy, [{"name": "mold", "isthing": True}])


def test_categories_in_the_classlabel_id_survive_parquet(toy, tmp_path):
    blob = {"diffsynth": {"format": 1, "categories": [
        {"name": "square", "isthing": True, "color": [1, 1, 1]},
        {"name": "disc", "isthing": False, "color": [2, 2, 2]},
        {"name": "background", "isthing": False, "color": [3, 3, 3]},
    ]}}  # fmt: skip
    features = toy.features.copy()
    inner = dict(features["segments_info"].feature)
    inner["category_id"] = datasets.ClassLabel(names=["square", "disc", "background"], id=json.dumps(blob))
    features["segments_info"] = datasets.List(inner)
    rows = _rows(toy)
    for r in rows:
        for s in r["segments_info"]:
            s["isthing"] = s["category_id"] == 0
    ds = _rebuild(toy, rows, features, keep_description=False)
    ds.to_parquet(str(tmp_path / "x.parquet"))
    back = datasets.Dataset.from_parquet(str(tmp_path / "x.parquet"))
    cats = read_categories(back)
    assert [(c.isthing, c.color) for c in cats] == [(True, (1, 1, 1)), (False, (2, 2, 2)), (False, (3, 3, 3))]
    validate(back)


def test_attach_categories_is_a_view(toy):
    cats = [Category(i, c.name, c.isthing, (10 * i + 1, 0, 0)) for i, c in enumerate(read_categories(toy))]
    view = attach_categories(toy, cats)
    assert [c.color for c in read_categories(view)] == [(1, 0, 0), (11, 0, 0), (21, 0, 0)]
    assert [c.color for c in read_categories(toy)] != [
        (1, 0, 0),
        (11, 0, 0),
        (21, 0, 0),
    ]  # original untouched
    assert len(view) == len(toy) and view[0]["image_id"] == toy[0]["image_id"]
    with pytest.raises(ContractError, match="do not match"):
        attach_categories(toy, cats[:2])


def test_category_record_validation():
    assert Category(0, "mold", True).color == Category(0, "x", False).color  # palette by index
    with pytest.raises(ValueError, match="name"):
        Category(0, " ", True)
    with pytest.raises(ValueError, match="color"):
        Category(0, "mold", True, (300, 0, 0))
    with pytest.raises(ValueError, match="id"):
        Category(-1, "mold", True)
