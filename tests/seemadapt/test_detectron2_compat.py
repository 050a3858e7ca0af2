"""detectron2 0.6 (pb1-detectron2, built without its C++ extension) works through seemadapt.detectron2_compat.

Exercises the detectron2 APIs seemadapt relies on, on a small COCO-panoptic folder written here with
panopticapi's own id encoding, and checks the compat layer leaves NumPy untouched.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from panopticapi.utils import id2rgb
from PIL import Image

pytest.importorskip("detectron2")
d2 = pytest.importorskip("seemadapt.detectron2_compat")

# (contiguous id, dataset id, name, isthing)
CATEGORIES = [(0, 1, "cat", True), (1, 2, "wall", False)]


def _write_panoptic_folder(root, num_images: int = 2, size: int = 32):
    images, annotations = [], []
    (root / "images").mkdir()
    (root / "panoptic").mkdir()
    (root / "semantic").mkdir()
    for index in range(num_images):
        image = np.full((size, size, 3), 40 * (index + 1), np.uint8)
        ids = np.full((size, size), 7, np.int64)  # stuff "wall" everywhere, segment id 7
        ids[4 : 4 + 10 + index, 6:20] = 3  # one "cat" instance, segment id 3
        semantic = np.where(ids == 3, 0, 1).astype(np.uint8)
        name = f"{index:06d}"
        Image.fromarray(image).save(root / "images" / f"{name}.jpg")
        Image.fromarray(id2rgb(ids)).save(root / "panoptic" / f"{name}.png")
        Image.fromarray(semantic).save(root / "semantic" / f"{name}.png")
        segments = []
        for seg_id, cat in ((3, 1), (7, 2)):
            ys, xs = np.nonzero(ids == seg_id)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            segments.append({"id": seg_id, "category_id": cat, "iscrowd": 0, "bbox": bbox, "area": len(xs)})
        images.append({"id": index, "file_name": f"{name}.jpg", "width": size, "height": size})
        annotations.append({"image_id": index, "file_name": f"{name}.png", "segments_info": segments})
    categories = [
        {"id": did, "name": n, "isthing": int(t), "color": [10 * did, 20, 30]} for _, did, n, t in CATEGORIES
    ]
    json_path = root / "panoptic_train.json"
    json_path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return json_path


@pytest.fixture()
def panoptic_split(tmp_path):
    json_path = _write_panoptic_folder(tmp_path)
    meta = {
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "stuff_dataset_id_to_contiguous_id": {1: 0, 2: 1},
    }
    name = f"compat_test_{tmp_path.name}"
    dicts = d2.load_coco_panoptic_json(
        str(json_path), str(tmp_path / "images"), str(tmp_path / "panoptic"), meta
    )
    for record in dicts:
        record["sem_seg_file_name"] = str(
            tmp_path / "semantic" / (record["file_name"].rsplit("/", 1)[1][:-4] + ".png")
        )
    d2.DatasetCatalog.register(name, lambda: dicts)
    d2.MetadataCatalog.get(name).set(
        thing_classes=["cat"],
        stuff_classes=["cat", "wall"],
        ignore_label=255,
        label_divisor=1000,
        panoptic_root=str(tmp_path / "panoptic"),
        panoptic_json=str(json_path),
        evaluator_type="coco_panoptic_seg",
        **meta,
    )
    yield name, tmp_path
    d2.DatasetCatalog.remove(name)
    d2.MetadataCatalog.remove(name)


def test_numpy_is_not_patched_globally():
    assert not hasattr(np, "int") or np.int is not int  # the removed alias stays removed
    from detectron2.evaluation import sem_seg_evaluation

    assert sem_seg_evaluation.np.int is int  # ...but detectron2's own module sees it
    assert sem_seg_evaluation.np.zeros is np.zeros


def test_load_coco_panoptic_json_and_catalog(panoptic_split):
    name, _ = panoptic_split
    dicts = d2.DatasetCatalog.get(name)
    assert len(dicts) == 2
    segments = dicts[1]["segments_info"]
    assert {s["category_id"] for s in segments} == {0, 1}
    assert [s["isthing"] for s in sorted(segments, key=lambda s: s["id"])] == [True, False]
    assert d2.MetadataCatalog.get(name).thing_classes == ["cat"]


def test_train_loader_instances_and_bitmasks(panoptic_split):
    name, _ = panoptic_split
    from panopticapi.utils import rgb2id

    augs = [d2.T.ResizeShortestEdge(32), d2.T.RandomFlip(prob=1.0)]

    def mapper(record):
        image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        aug_input = d2.T.AugInput(image, sem_seg=pan.astype(np.float64))
        transforms = d2.T.AugmentationList(augs)(aug_input)
        pan = aug_input.sem_seg.astype(np.int64)
        masks = [pan == s["id"] for s in record["segments_info"]]
        instances = d2.Instances(aug_input.image.shape[:2])
        instances.gt_classes = torch.tensor([s["category_id"] for s in record["segments_info"]])
        bitmasks = d2.BitMasks(torch.from_numpy(np.stack(masks)))
        instances.gt_masks = bitmasks
        instances.gt_boxes = bitmasks.get_bounding_boxes()
        height, width = aug_input.image.shape[:2]
        return {
            "image": torch.from_numpy(aug_input.image.copy()).permute(2, 0, 1),
            "height": height,
            "width": width,
            "instances": instances,
            "flipped": any(isinstance(t, d2.T.HFlipTransform) for t in transforms),
        }

    loader = d2.build_detection_train_loader(
        dataset=d2.DatasetCatalog.get(name), mapper=mapper, total_batch_size=2, num_workers=0
    )
    batch = next(iter(loader))
    assert len(batch) == 2
    for item in batch:
        assert item["flipped"]
        boxes = item["instances"].gt_boxes.tensor
        cat_box = boxes[item["instances"].gt_classes == 0][0]
        # The cat spans columns 6..19 before the flip; after a horizontal flip of width 32: 12..25.
        assert cat_box[0].item() == pytest.approx(12) and cat_box[2].item() == pytest.approx(26)


def test_semseg_and_panoptic_evaluators(panoptic_split):
    name, _root = panoptic_split
    from panopticapi.utils import rgb2id

    dicts = d2.DatasetCatalog.get(name)
    sem_eval = d2.SemSegEvaluator(name, distributed=False, output_dir=None)
    pan_eval = d2.COCOPanopticEvaluator(name, output_dir=None)
    sem_eval.reset()
    pan_eval.reset()
    for record in dicts:
        gt = np.asarray(Image.open(record["sem_seg_file_name"]), dtype=np.int64)
        logits = torch.nn.functional.one_hot(torch.from_numpy(gt), 2).permute(2, 0, 1).float()
        pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        info = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in record["segments_info"]
        ]
        inputs = [
            {
                "file_name": record["file_name"],
                "image_id": record["image_id"],
                "sem_seg_file_name": record["sem_seg_file_name"],
            }
        ]
        sem_eval.process(inputs, [{"sem_seg": logits}])
        pan_eval.process(inputs, [{"panoptic_seg": (torch.from_numpy(pan).int(), info)}])
    assert sem_eval.evaluate()["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert pan_eval.evaluate()["panoptic_seg"]["PQ"] == pytest.approx(100.0)
