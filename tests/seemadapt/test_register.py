"""Detectron2 registration: cache, catalogs, names, workers, and detectron2's own tools on a registered split."""

from __future__ import annotations

import base64
import json
import pickle
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from seemadapt.data import (
    ContractError,
    DatasetSpec,
    SEEMTrainMapper,
    contract_features,
    dataset_names,
    ensure_registered,
    make_row,
    register,
    rgb2id,
    spec_of,
    unregister,
)
from seemadapt.detectron2_compat import (
    COCOPanopticEvaluator,
    DatasetCatalog,
    MetadataCatalog,
    SemSegEvaluator,
    Visualizer,
    build_detection_train_loader,
)
from seemadapt.testing import make_contract_dataset
from segcontract import iter_raw_rows


@pytest.fixture
def name():
    n = f"test_{uuid.uuid4().hex[:8]}"
    yield n
    unregister(n)


@pytest.fixture(scope="module")
def toy():
    return make_contract_dataset(num_images=3, size=(48, 40), seed=7)


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_register_writes_standard_dicts_and_metadata(toy, tmp_path, name):
    assert register(toy, name, cache_dir=tmp_path) == name
    records = DatasetCatalog.get(name)
    assert len(records) == 3
    for rec, row in zip(records, toy):
        assert set(rec) >= {
            "file_name",
            "image_id",
            "height",
            "width",
            "pan_seg_file_name",
            "sem_seg_file_name",
            "segments_info",
            "grounding_info",
        }
        assert rec["image_id"] == row["image_id"] and (rec["width"], rec["height"]) == (48, 40)
        np.testing.assert_array_equal(_read(rec["file_name"]), np.asarray(row["image"]))
        np.testing.assert_array_equal(_read(rec["sem_seg_file_name"]), np.asarray(row["semantic"]))
        ids = rgb2id(_read(rec["pan_seg_file_name"]))
        np.testing.assert_array_equal(ids, rgb2id(np.asarray(row["panoptic"])))
        for seg, orig in zip(rec["segments_info"], row["segments_info"]):
            assert seg["category_id"] == orig["category_id"]  # contiguous id == ClassLabel index
            assert seg["isthing"] == orig["isthing"] and seg["iscrowd"] == 0
            assert seg["area"] == (ids == seg["id"]).sum() and seg["bbox"] == orig["bbox"]
        assert rec["grounding_info"] == [
            {"segment_id": g["segment_id"], "sentences": g["sentences"]} for g in row["grounding"]
        ]
    meta = MetadataCatalog.get(name)
    names = ["square", "disc", "background"]
    assert meta.thing_classes == names and meta.stuff_classes == names
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert len(meta.thing_colors) == len(meta.stuff_colors) == 3
    assert meta.ignore_label == 255 and meta.label_divisor == 1000
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert (
        Path(meta.panoptic_root).is_dir()
        and Path(meta.sem_seg_root).is_dir()
        and Path(meta.image_root).is_dir()
    )
    pan = json.loads(Path(meta.panoptic_json).read_text())
    assert [c["id"] for c in pan["categories"]] == [1, 2, 3]
    assert [c["isthing"] for c in pan["categories"]] == [1, 1, 0]
    assert len(pan["annotations"]) == 3 and all(
        (Path(meta.panoptic_root) / a["file_name"]).is_file() for a in pan["annotations"]
    )
    assert [c["name"] for c in meta.categories] == names


def test_reregistration_is_a_noop_and_conflicts_need_overwrite(toy, tmp_path, name):
    register(toy, name, cache_dir=tmp_path)
    root = Path(spec_of(name).root)
    stamp = (root / "meta.json").stat().st_mtime_ns
    register(toy, name, cache_dir=tmp_path)
    assert spec_of(name).root == str(root) and (root / "meta.json").stat().st_mtime_ns == stamp
    other = make_contract_dataset(num_images=2, size=(48, 40), seed=8)
    with pytest.raises(ValueError, match="already registered with different content; pass overwrite=True"):
        register(other, name, cache_dir=tmp_path)
    register(other, name, cache_dir=tmp_path, overwrite=True)
    assert len(DatasetCatalog.get(name)) == 2 and spec_of(name).root != str(root)
    # the same content under another name reuses the same files
    second = f"{name}_again"
    try:
        register(toy, second, cache_dir=tmp_path)
        assert spec_of(second).root == str(root)
    finally:
        unregister(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([root.name, Path(spec_of(name).root).name])


def test_reregistration_after_the_cache_folder_was_deleted_writes_it_again(toy, tmp_path, name):
    first = tmp_path / "first"
    register(toy, name, cache_dir=first)
    shutil.rmtree(first)  # e.g. a temporary cache_dir removed after the first run
    register(toy, name, cache_dir=tmp_path / "second")
    root = Path(spec_of(name).root)
    assert root.parent == tmp_path / "second" and len(DatasetCatalog.get(name)) == len(toy)
    assert all(Path(record["file_name"]).is_file() for record in DatasetCatalog.get(name))
    shutil.rmtree(root)  # the same folder deleted: registering rewrites it, no dead entry
    register(toy, name, cache_dir=tmp_path / "second")
    assert all(Path(record["file_name"]).is_file() for record in DatasetCatalog.get(name))


def test_names_are_validated(toy, tmp_path, name):
    with pytest.raises(TypeError, match=r"must be a str, got tuple \('x',\).*DATASETS.TRAIN = \('x'\)"):
        register(toy, ("x",), cache_dir=tmp_path)
    with pytest.raises(TypeError, match="non-empty str"):
        register(toy, "", cache_dir=tmp_path)
    register(toy, name, cache_dir=tmp_path)
    assert dataset_names(name) == (name,)
    assert dataset_names([name]) == (name,)
    with pytest.raises(KeyError, match=r"letters of .*iterated character by character"):
        dataset_names(tuple(name))
    with pytest.raises(KeyError, match="not registered"):
        dataset_names(("nope",))


def test_corrupt_data_fails_before_anything_is_registered(toy, tmp_path, name):
    rows = [r for _, r in iter_raw_rows(toy)]
    rows[2]["image"] = {"bytes": rows[2]["image"]["bytes"][:100], "path": None}
    bad = datasets.Dataset.from_list(rows, features=toy.features)
    with pytest.raises(ContractError, match=r"row 2 .*column 'image' holds corrupt or truncated image bytes"):
        register(bad, name, cache_dir=tmp_path)
    assert name not in DatasetCatalog.list()
    assert list(tmp_path.iterdir()) == []  # no half-written cache folder


def test_spec_pickles_and_reregisters(toy, tmp_path, name):
    register(toy, name, cache_dir=tmp_path)
    spec = pickle.loads(pickle.dumps(spec_of(name)))
    assert spec == DatasetSpec(name, spec_of(name).root)
    unregister(name)  # as in a fresh worker
    assert ensure_registered(spec) == name
    assert ensure_registered(spec) == name  # idempotent
    assert len(DatasetCatalog.get(name)) == 3
    with pytest.raises(FileNotFoundError, match="not a complete seemadapt dataset cache"):
        ensure_registered(DatasetSpec("x", str(tmp_path / "missing")))


_WORKER = """
import base64, json, pickle, sys
from seemadapt.detectron2_compat import DatasetCatalog, MetadataCatalog
from seemadapt.data import ensure_registered
spec = pickle.loads(base64.b64decode(sys.argv[1]))
assert spec.name not in DatasetCatalog.list()  # a fresh process starts with empty catalogs
ensure_registered(spec)
print(json.dumps([len(DatasetCatalog.get(spec.name)), MetadataCatalog.get(spec.name).stuff_classes]))
"""


@pytest.mark.slow
def test_ensure_registered_in_a_fresh_process(toy, tmp_path, name):
    register(toy, name, cache_dir=tmp_path)
    payload = base64.b64encode(pickle.dumps(spec_of(name))).decode()
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, payload], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    count, classes = json.loads(done.stdout.strip().splitlines()[-1])
    assert count == 3 and classes == ["square", "disc", "background"]


# ------------------------------------------------------------------------------------------ detectron2's tools


def test_detectron2_train_loader_and_visualizer(toy, tmp_path, name):
    register(toy, name, cache_dir=tmp_path)
    mapper = SEEMTrainMapper.from_dataset(name, image_size=64, seed=0)
    loader = build_detection_train_loader(
        dataset=DatasetCatalog.get(name), mapper=mapper, total_batch_size=2, num_workers=0
    )
    batch = next(iter(loader))
    assert len(batch) == 2
    for sample in batch:
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.uint8
        assert sample["instances"].gt_masks.tensor.shape[1:] == (64, 64)
    record = DatasetCatalog.get(name)[0]
    image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    drawn = Visualizer(image, metadata=MetadataCatalog.get(name)).draw_dataset_dict(record).get_image()
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)


def _perfect_outputs(record: dict, num_classes: int) -> dict:
    ids = rgb2id(_read(record["pan_seg_file_name"]))
    sem = _read(record["sem_seg_file_name"]).astype(np.int64)
    logits = torch.zeros((num_classes, *sem.shape))
    for c in range(num_classes):
        logits[c][torch.from_numpy(sem == c)] = 1.0
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
        for s in record["segments_info"]
    ]
    return {"panoptic_seg": (torch.from_numpy(ids), segments), "sem_seg": logits}


def _evaluate(name: str, outputs: list[dict]) -> tuple[dict, dict]:
    records = DatasetCatalog.get(name)
    pq = COCOPanopticEvaluator(name)
    sem = SemSegEvaluator(name, distributed=False)
    for ev in (pq, sem):
        ev.reset()
        for rec, out in zip(records, outputs):
            ev.process([{"file_name": rec["file_name"], "image_id": rec["image_id"]}], [out])
    return pq.evaluate()["panoptic_seg"], sem.evaluate()["sem_seg"]


def test_evaluators_score_perfect_predictions_100(toy, tmp_path, name):
    register(toy, name, cache_dir=tmp_path)
    outputs = [_perfect_outputs(r, 3) for r in DatasetCatalog.get(name)]
    pq, sem = _evaluate(name, outputs)
    assert (
        pq["PQ"] == pytest.approx(100.0)
        and pq["PQ_th"] == pytest.approx(100.0)
        and pq["PQ_st"] == pytest.approx(100.0)
    )
    assert sem["mIoU"] == pytest.approx(100.0) and sem["pACC"] == pytest.approx(100.0)


def test_evaluators_score_a_known_imperfect_prediction(tmp_path, name):
    # 8x8 image: background (stuff, 48 px) around a 4x4 square (thing, 16 px)
    ids = np.ones((8, 8), np.int32)
    ids[2:6, 2:6] = 2
    row = make_row(
        image=np.full((8, 8, 3), 100, np.uint8),
        panoptic_ids=ids,
        segments=[
            {"id": 1, "category_id": 1, "isthing": False},
            {"id": 2, "category_id": 0, "isthing": True},
        ],
        image_id=0,
        file_name="x.png",
    )
    ds = datasets.Dataset.from_list([row], features=contract_features(["square", "background"]))
    register(ds, name, cache_dir=tmp_path)
    # prediction: the square only on its top half (8 px), background everywhere else (56 px)
    pred = np.ones((8, 8), np.int32)
    pred[2:4, 2:6] = 2
    logits = torch.zeros((2, 8, 8))
    logits[0][torch.from_numpy(pred == 2)] = 1
    logits[1][torch.from_numpy(pred == 1)] = 1
    segments = [{"id": 1, "category_id": 1, "isthing": False}, {"id": 2, "category_id": 0, "isthing": True}]
    pq, sem = _evaluate(name, [{"panoptic_seg": (torch.from_numpy(pred), segments), "sem_seg": logits}])
    # semantic: IoU(square) = 8/16, IoU(background) = 48/56
    assert sem["mIoU"] == pytest.approx(100 * (8 / 16 + 48 / 56) / 2)
    assert sem["IoU-square"] == pytest.approx(50.0)
    # panoptic: the square's IoU is 0.5, not > 0.5, so it is a miss (FN + FP) -> PQ_th 0; background matches at 48/56
    assert pq["PQ_th"] == pytest.approx(0.0)
    assert pq["PQ_st"] == pytest.approx(100 * 48 / 56)
    assert pq["PQ"] == pytest.approx(100 * (0 + 48 / 56) / 2)
