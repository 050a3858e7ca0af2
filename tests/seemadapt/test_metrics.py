"""seemadapt.metrics against hand-computed cases and against code written elsewhere, on the same inputs:
detectron2's SemSegEvaluator and torchmetrics (semantic), panopticapi's pq_compute on files (panoptic),
detectron2's COCOEvaluator (instance)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from seemadapt.metrics import (
    GroundingMetrics,
    InstanceMetrics,
    PanopticMetrics,
    SemanticMetrics,
    format_table,
    to_json,
)
from seemadapt.metrics import instance as instance_metrics

# ----------------------------------------------------------------------------------------------- semantic


def _random_semantic(rng, shape, classes, ignore_fraction=0.15, keep=0.6, pred_classes=None):
    """GT over ``classes`` with ignore pixels; predictions right with probability ``keep``."""
    gt = rng.choice(classes, size=shape)
    wrong = rng.choice(pred_classes if pred_classes is not None else classes, size=shape)
    pred = np.where(rng.random(shape) < keep, gt, wrong)
    gt = np.where(rng.random(shape) < ignore_fraction, 255, gt)
    return pred.astype(np.int64), gt.astype(np.uint8)


def test_semantic_hand_computed():
    # 3 classes; class 2 never appears in GT nor prediction. One ignored pixel predicted as class 1.
    gt = np.array([[0, 0, 0, 1], [1, 1, 255, 1]])
    pred = np.array([[0, 0, 1, 1], [1, 0, 1, 1]])
    m = SemanticMetrics(3, ["a", "b", "c"])
    m.update(pred, gt)
    r = m.compute()
    # class a: TP 2 (0,0),(0,1); FP 1 (1,1); FN 1 (0,2)  -> IoU 2/4, precision 2/3, recall 2/3
    # class b: TP 3; FP 1 (0,2); FN 1 (1,1)              -> IoU 3/5, precision 3/4, recall 3/4
    np.testing.assert_allclose(r.iou[:2], [2 / 4, 3 / 5])
    np.testing.assert_allclose(r.precision[:2], [2 / 3, 3 / 4])
    np.testing.assert_allclose(r.recall[:2], [2 / 3, 3 / 4])
    assert np.isnan(r.iou[2]) and np.isnan(r.precision[2]) and np.isnan(r.recall[2])
    assert r.miou == pytest.approx((2 / 4 + 3 / 5) / 2)
    assert r.mean_precision == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert r.pixel_accuracy == pytest.approx(5 / 7)
    assert r.fwiou == pytest.approx(3 / 7 * 2 / 4 + 4 / 7 * 3 / 5)
    assert r.confusion.tolist() == [[2, 1, 0], [1, 3, 0], [0, 0, 0]]  # rows GT, columns prediction


def test_semantic_zero_division_rules():
    # class 1 only in GT (never predicted) -> precision 0; class 2 only predicted -> recall 0, IoU 0.
    gt = np.array([[0, 1, 0, 0]])
    pred = np.array([[0, 0, 2, 0]])
    m = SemanticMetrics(4)
    m.update(pred, gt)
    r = m.compute()
    assert r.precision[1] == 0 and r.recall[1] == 0 and r.iou[1] == 0
    assert r.recall[2] == 0 and r.precision[2] == 0 and r.iou[2] == 0
    assert np.isnan(r.iou[3])
    assert r.miou == pytest.approx((2 / 4 + 0 + 0) / 3)


def test_semantic_batched_torch_equals_per_image_numpy():
    rng = np.random.default_rng(0)
    pred, gt = _random_semantic(rng, (3, 17, 23), np.arange(5))
    batched, single = SemanticMetrics(5), SemanticMetrics(5)
    batched.update(torch.from_numpy(pred), torch.from_numpy(gt))
    for p, g in zip(pred, gt):
        single.update(p, g)
    assert torch.equal(batched.confusion, single.confusion)
    assert int(batched.confusion.sum()) == int((gt != 255).sum())


@pytest.mark.slow  # importing torchmetrics pulls in torchvision and torch._dynamo: 5-20 s on a busy CPU
def test_semantic_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex, MulticlassPrecision, MulticlassRecall

    k = 6
    rng = np.random.default_rng(1)
    ours = SemanticMetrics(k)
    kinds = {"iou": MulticlassJaccardIndex, "precision": MulticlassPrecision, "recall": MulticlassRecall}
    theirs = {
        f"{name}_{average}": cls(num_classes=k, average=average, ignore_index=255)
        for name, cls in kinds.items()
        for average in (None, "macro")
    }
    # class 5 appears nowhere; class 4 is only ever predicted; images of different sizes.
    for shape in ((2, 31, 40), (1, 64, 48), (4, 9, 13)):
        pred, gt = _random_semantic(rng, shape, np.arange(4), pred_classes=np.arange(5))
        ours.update(pred, gt)
        for metric in theirs.values():
            metric.update(torch.from_numpy(pred), torch.from_numpy(gt.astype(np.int64)))
    r = ours.compute()
    seen = ~np.isnan(r.iou)
    assert seen.tolist() == [True] * 5 + [False]
    for name, values in (("iou", r.iou), ("precision", r.precision), ("recall", r.recall)):
        per_class = theirs[f"{name}_None"].compute().double().numpy()
        np.testing.assert_allclose(values[seen], per_class[seen], rtol=1e-6)
        assert per_class[5] == 0  # torchmetrics gives 0 where we report NaN
    assert r.miou == pytest.approx(float(theirs["iou_macro"].compute()), rel=1e-6)
    assert r.mean_precision == pytest.approx(float(theirs["precision_macro"].compute()), rel=1e-6)
    assert r.mean_recall == pytest.approx(float(theirs["recall_macro"].compute()), rel=1e-6)


def test_semantic_matches_detectron2_sem_seg_evaluator(tmp_path):
    pytest.importorskip("detectron2")
    d2 = pytest.importorskip("seemadapt.detectron2_compat")
    names = ["background", "mold", "stain", "pipe", "peeling"]
    k = len(names)
    rng = np.random.default_rng(2)
    # GT uses classes 0..2 (+255); predictions also produce class 3; class 4 appears nowhere.
    samples = []
    for i, (h, w) in enumerate(((24, 32), (40, 20), (16, 16))):
        pred, gt = _random_semantic(rng, (h, w), np.arange(3), pred_classes=np.arange(4))
        path = tmp_path / f"{i}.png"
        Image.fromarray(gt, mode="L").save(path)
        samples.append((f"image_{i}.jpg", str(path), pred, gt))

    dataset = f"seemadapt_metrics_semseg_{tmp_path.name}"
    d2.DatasetCatalog.register(
        dataset, lambda: [{"file_name": f, "sem_seg_file_name": s} for f, s, _, _ in samples]
    )
    d2.MetadataCatalog.get(dataset).set(stuff_classes=names, ignore_label=255)
    try:
        evaluator = d2.SemSegEvaluator(dataset, distributed=False)
        evaluator.reset()
        ours = SemanticMetrics(k, names)
        for file_name, _, pred, gt in samples:
            logits = torch.nn.functional.one_hot(torch.from_numpy(pred), k).permute(2, 0, 1).float()
            evaluator.process([{"file_name": file_name}], [{"sem_seg": logits}])
            ours.update(pred, gt)
        d2_res = evaluator.evaluate()["sem_seg"]
    finally:
        d2.DatasetCatalog.remove(dataset)
        d2.MetadataCatalog.remove(dataset)

    r = ours.compute()
    assert 100 * r.miou == pytest.approx(d2_res["mIoU"], rel=1e-9)
    assert 100 * r.pixel_accuracy == pytest.approx(d2_res["pACC"], rel=1e-9)
    assert 100 * r.fwiou == pytest.approx(d2_res["fwIoU"], rel=1e-9)
    for c in range(3):  # classes in the ground truth: IoU and ACC (= recall) agree
        assert 100 * r.iou[c] == pytest.approx(d2_res[f"IoU-{names[c]}"], rel=1e-9)
        assert 100 * r.recall[c] == pytest.approx(d2_res[f"ACC-{names[c]}"], rel=1e-9)
    assert 100 * np.nanmean(r.recall[:3]) == pytest.approx(d2_res["mACC"], rel=1e-9)
    # detectron2 prints NaN for a class that is only predicted, yet counts it as 0 in mIoU; we report the 0.
    assert math.isnan(d2_res["IoU-pipe"]) and r.iou[3] == 0
    assert math.isnan(d2_res["IoU-peeling"]) and math.isnan(r.iou[4])


def test_semantic_torch_device_path_equals_numpy_path():
    # Tensors on an accelerator are counted with torch on their device; no accelerator here, so the
    # torch counting path is driven directly with CPU tensors and compared with the numpy path.
    rng = np.random.default_rng(7)
    pred, gt = _random_semantic(rng, (2, 15, 21), np.arange(4))
    by_numpy, by_torch = SemanticMetrics(4), SemanticMetrics(4)
    by_numpy.update(pred, gt)
    by_torch._accumulate(torch.from_numpy(pred).reshape(-1), torch.from_numpy(gt).reshape(-1))
    assert torch.equal(by_numpy.confusion, by_torch.confusion)
    with pytest.raises(ValueError, match=r"\[7\]"):
        by_torch._accumulate(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_semantic_and_grounding_on_cuda_match_cpu():
    rng = np.random.default_rng(8)
    pred, gt = _random_semantic(rng, (2, 33, 17), np.arange(5))
    on_cpu, on_gpu = SemanticMetrics(5), SemanticMetrics(5)
    on_cpu.update(pred, gt)
    on_gpu.update(torch.from_numpy(pred).to("cuda"), gt)
    assert torch.equal(on_cpu.confusion, on_gpu.confusion)
    masks_pred, masks_gt = _grounding_pairs()
    g_cpu, g_gpu = GroundingMetrics(), GroundingMetrics()
    g_cpu.update(masks_pred, masks_gt)
    g_gpu.update(torch.from_numpy(masks_pred).to("cuda"), torch.from_numpy(masks_gt).to("cuda"))
    assert torch.equal(g_cpu.state, g_gpu.state)


def test_semantic_other_ignore_values_and_dtypes():
    rng = np.random.default_rng(9)
    pred, gt = _random_semantic(rng, (3, 11, 9), np.arange(3))
    reference = SemanticMetrics(3)
    reference.update(pred, gt)
    negative = SemanticMetrics(3, ignore_index=-100)
    negative.update(pred.astype(np.uint16), np.where(gt == 255, -100, gt.astype(np.int16)))
    assert torch.equal(negative.confusion, reference.confusion)
    with pytest.raises(ValueError, match=r"\[3\]"):  # a value between the classes and ignore_index
        reference.update(pred[:1], np.where(gt[:1] == 255, 3, gt[:1]))


def test_semantic_merge_equals_single_pass():
    rng = np.random.default_rng(3)
    pred, gt = _random_semantic(rng, (4, 12, 12), np.arange(3))
    whole, a, b = SemanticMetrics(3), SemanticMetrics(3), SemanticMetrics(3)
    whole.update(pred, gt)
    a.update(pred[:2], gt[:2])
    b.update(pred[2:], gt[2:])
    assert torch.equal(a.merge(b).confusion, whole.confusion)
    assert torch.equal(whole.all_reduce().confusion, whole.confusion)  # not distributed: a copy


@pytest.mark.parametrize(
    ("kwargs", "pred", "gt", "match"),
    [
        ({}, np.zeros((2, 2), np.int64), np.zeros((2, 3), np.int64), "resize the prediction"),
        ({}, np.zeros((2, 2), np.int64), np.full((2, 2), 7), r"outside 0\.\.2"),
        ({}, np.full((2, 2), 3), np.zeros((2, 2), np.int64), "class indices"),
        ({}, np.zeros((2, 2), np.float32), np.zeros((2, 2), np.int64), "argmax"),
        ({"ignore_index": None}, np.zeros((2, 2), np.int64), np.full((2, 2), 255), "ignore_index=None"),
    ],
)
def test_semantic_rejects_bad_inputs(kwargs, pred, gt, match):
    m = SemanticMetrics(3, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        m.update(pred, gt)


def test_semantic_rejects_bad_config():
    with pytest.raises(ValueError, match="class_names has 2"):
        SemanticMetrics(3, ["a", "b"])
    with pytest.raises(ValueError, match="ignore_index=1"):
        SemanticMetrics(3, ignore_index=1)
    with pytest.raises(ValueError, match="num_classes"):
        SemanticMetrics(0)


# ----------------------------------------------------------------------------------------------- panoptic

THINGS_AND_STUFF = [
    {"id": 1, "name": "cat", "isthing": 1},
    {"id": 2, "name": "wall", "isthing": 0},
]


def _rect(ids, value, rows, cols):
    ids[rows[0] : rows[1], cols[0] : cols[1]] = value


def _hand_case():
    """One cat matched with IoU 0.6, one cat missed, one cat false positive, wall partly eaten by it."""
    gt = np.full((20, 20), 3, np.int64)  # wall
    _rect(gt, 1, (0, 10), (0, 10))  # cat, 100 px
    _rect(gt, 2, (12, 16), (12, 16))  # cat, 16 px
    gt_segs = [
        {"id": 1, "category_id": 1, "iscrowd": 0},
        {"id": 2, "category_id": 1, "iscrowd": 0},
        {"id": 3, "category_id": 2, "iscrowd": 0},
    ]
    pred = np.full((20, 20), 12, np.int64)  # wall
    _rect(pred, 0, (0, 10), (6, 10))  # no prediction on the rest of cat 1
    _rect(pred, 10, (0, 10), (0, 6))  # cat, 60 px inside GT cat 1 -> IoU 0.6
    _rect(pred, 0, (12, 16), (12, 16))  # GT cat 2 missed
    _rect(pred, 11, (16, 20), (0, 5))  # cat, 20 px on the wall: false positive
    pred_segs = [
        {"id": 10, "category_id": 1, "isthing": True},
        {"id": 11, "category_id": 1, "isthing": True},
        {"id": 12, "category_id": 2, "isthing": False},
    ]
    return pred, pred_segs, gt, gt_segs


def _void_and_crowd_case():
    categories = [
        {"id": 1, "name": "person", "isthing": 1},
        {"id": 2, "name": "car", "isthing": 1},
        {"id": 3, "name": "wall", "isthing": 0},
    ]
    gt = np.full((20, 30), 9, np.int64)  # wall: 300 px in the end
    _rect(gt, 1, (0, 10), (0, 10))  # person, 100 px
    _rect(gt, 0, (0, 10), (10, 20))  # void, 100 px
    _rect(gt, 2, (10, 20), (0, 10))  # crowd of persons, 100 px
    gt_segs = [
        {"id": 1, "category_id": 1, "iscrowd": 0},
        {"id": 2, "category_id": 1, "iscrowd": 1},
        {"id": 9, "category_id": 3, "iscrowd": 0},
    ]
    pred = np.where(gt == 0, 0, 7)  # wall everywhere GT is not void
    _rect(pred, 1, (0, 10), (0, 15))  # person, 150 px, 50 of them on void -> IoU 100/100
    _rect(pred, 2, (0, 10), (15, 18))  # car entirely on void -> ignored
    _rect(pred, 3, (10, 20), (0, 5))  # person inside the person crowd -> ignored
    _rect(pred, 4, (10, 20), (5, 10))  # car inside the person crowd -> false positive
    _rect(pred, 5, (0, 4), (18, 22))  # car, half void, half wall -> not more than half: false positive
    pred_segs = [
        {"id": 1, "category_id": 1},
        {"id": 2, "category_id": 2},
        {"id": 3, "category_id": 1},
        {"id": 4, "category_id": 2},
        {"id": 5, "category_id": 2},
        {"id": 7, "category_id": 3},
    ]
    return categories, pred, pred_segs, gt, gt_segs


def test_panoptic_ground_truth_against_itself_is_perfect():
    categories, _, _, gt, gt_segs = _void_and_crowd_case()
    m = PanopticMetrics(categories)
    m.update(gt, gt_segs, gt, gt_segs)
    _, _, gt2, gt2_segs = _hand_case()
    m2 = PanopticMetrics(THINGS_AND_STUFF)
    m2.update(gt2, gt2_segs, gt2, gt2_segs)
    for r in (m.compute(), m2.compute()):
        for score in (r.all, r.things, r.stuff):
            assert (score.pq, score.sq, score.rq) == (1.0, 1.0, 1.0)
    r = m.compute()
    assert r.all.n == 2  # car has no TP, FP or FN: no score, not averaged
    assert math.isnan(r.per_class[1].pq)
    assert "100.00" in format_table(r)


def test_panoptic_hand_computed():
    pred, pred_segs, gt, gt_segs = _hand_case()
    m = PanopticMetrics(THINGS_AND_STUFF)
    m.update(pred, pred_segs, gt, gt_segs)
    r = m.compute()
    cat, wall = r.per_class
    assert (cat.tp, cat.fp, cat.fn) == (1, 1, 1)
    assert cat.pq == pytest.approx(0.6 / (1 + 0.5 + 0.5))
    assert cat.sq == pytest.approx(0.6)
    assert cat.rq == pytest.approx(0.5)
    wall_iou = (284 - 20) / 284
    assert (wall.tp, wall.fp, wall.fn) == (1, 0, 0)
    assert wall.pq == pytest.approx(wall_iou) and wall.rq == 1.0
    assert r.all.pq == pytest.approx((0.3 + wall_iou) / 2)
    assert r.all.sq == pytest.approx((0.6 + wall_iou) / 2)
    assert r.all.rq == pytest.approx(0.75)
    assert r.things.pq == pytest.approx(0.3) and r.stuff.pq == pytest.approx(wall_iou)


def test_panoptic_void_and_crowd_rules():
    categories, pred, pred_segs, gt, gt_segs = _void_and_crowd_case()
    m = PanopticMetrics(categories)
    m.update(pred, pred_segs, gt, gt_segs)
    person, car, wall = m.compute().per_class
    assert (person.tp, person.fp, person.fn, person.pq) == (1, 0, 0, 1.0)
    assert (car.tp, car.fp, car.fn, car.pq) == (0, 2, 0, 0.0)
    assert (wall.tp, wall.fp, wall.fn) == (1, 0, 0)
    assert wall.pq == pytest.approx((300 - 8) / 300)


def test_panoptic_accepts_rgb_encoded_maps_and_tensors():
    from panopticapi.utils import id2rgb

    pred, pred_segs, gt, gt_segs = _hand_case()
    pred, gt = pred + 70000, gt + 70000 * (gt > 0)  # ids that use the G and B channels
    for seg in pred_segs:
        seg["id"] += 70000
    for seg in gt_segs:
        seg["id"] += 70000
    by_ids, by_rgb = PanopticMetrics(THINGS_AND_STUFF), PanopticMetrics(THINGS_AND_STUFF)
    by_ids.update(torch.from_numpy(np.where(pred == 70000, 0, pred)), pred_segs, gt, gt_segs)
    by_rgb.update(id2rgb(np.where(pred == 70000, 0, pred)), pred_segs, id2rgb(gt), gt_segs)
    assert torch.equal(by_ids.stats, by_rgb.stats)
    assert by_ids.compute().all.pq == pytest.approx((0.3 + 264 / 284) / 2)


def _random_panoptic_scene(rng, h=40, w=56):
    """GT and a perturbed prediction over categories 1 (thing), 3 (thing), 5 (stuff), 7 (stuff)."""
    gt = np.full((h, w), 500, np.int64)
    gt[h // 2 :] = 501
    gt_segs = [{"id": 500, "category_id": 5, "iscrowd": 0}, {"id": 501, "category_id": 7, "iscrowd": 0}]
    pred = gt + 100  # stuff ids 600, 601, the boundary moved up a little
    _rect(pred, 601, (h // 2 - rng.integers(0, 6), h // 2), (0, w))
    pred_segs = [{"id": 600, "category_id": 5}, {"id": 601, "category_id": 7}]
    crowded: set[int] = set()
    for i in range(1, rng.integers(3, 7)):
        cat = int(rng.choice([1, 3]))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        hh, ww = int(rng.integers(4, 12)), int(rng.integers(4, 12))
        crowd = int(cat not in crowded and rng.random() < 0.25)
        crowded |= {cat} if crowd else set()
        _rect(gt, i, (y, y + hh), (x, x + ww))
        gt_segs.append({"id": i, "category_id": cat, "iscrowd": crowd})
        if rng.random() < 0.8:  # detected, shifted a little, sometimes with the wrong class
            dy, dx = (int(v) for v in rng.integers(-3, 4, 2))
            pcat = cat if rng.random() < 0.85 else 4 - cat
            _rect(pred, 20 + i, (max(y + dy, 0), y + dy + hh), (max(x + dx, 0), x + dx + ww))
            pred_segs.append({"id": 20 + i, "category_id": pcat})
    for j in range(int(rng.integers(0, 3))):  # false positives
        y, x = int(rng.integers(0, h - 5)), int(rng.integers(0, w - 5))
        _rect(pred, 90 + j, (y, y + 5), (x, x + 5))
        pred_segs.append({"id": 90 + j, "category_id": int(rng.choice([1, 3]))})
    _rect(gt, 0, (0, 3), (0, w))  # void band
    _rect(pred, 0, (h - 2, h), (0, w // 3))  # unpredicted band
    present_gt, present_pred = set(np.unique(gt).tolist()), set(np.unique(pred).tolist())
    gt_segs = [s for s in gt_segs if s["id"] in present_gt]
    pred_segs = [s for s in pred_segs if s["id"] in present_pred]
    return pred, pred_segs, gt, gt_segs


def _write_coco_panoptic(root: Path, name: str, images, categories, with_area: bool) -> Path:
    from panopticapi.utils import id2rgb

    folder = root / name
    folder.mkdir(parents=True)
    annotations = []
    for image_id, (ids, segments) in enumerate(images):
        file_name = f"{image_id:04d}.png"
        Image.fromarray(id2rgb(ids)).save(folder / file_name)
        segs = []
        for seg in segments:
            seg = {"iscrowd": 0, **seg}
            if with_area:
                seg["area"] = int((ids == seg["id"]).sum())
            segs.append(seg)
        annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segs})
    json_path = root / f"{name}.json"
    json_path.write_text(
        json.dumps(
            {
                "images": [{"id": i, "file_name": f"{i:04d}.jpg"} for i in range(len(images))],
                "annotations": annotations,
                "categories": categories,
            }
        )
    )
    return json_path


def _pq_compute_on_files(tmp_path, categories, cases):
    from panopticapi.evaluation import pq_compute

    gt_json = _write_coco_panoptic(tmp_path, "gt", [(g, gs) for _, _, g, gs in cases], categories, True)
    pred_json = _write_coco_panoptic(tmp_path, "pred", [(p, ps) for p, ps, _, _ in cases], categories, False)
    return pq_compute(str(gt_json), str(pred_json), str(tmp_path / "gt"), str(tmp_path / "pred"))


def _assert_same_as_panopticapi(ours, theirs, categories):
    for name, score in (("All", ours.all), ("Things", ours.things), ("Stuff", ours.stuff)):
        assert theirs[name]["n"] == score.n
        for key in ("pq", "sq", "rq"):
            assert getattr(score, key) == pytest.approx(theirs[name][key], abs=1e-12), (name, key)
    for cat, row in zip(categories, ours.per_class):
        if row.tp + row.fp + row.fn:
            for key in ("pq", "sq", "rq"):
                assert getattr(row, key) == pytest.approx(theirs["per_class"][cat["id"]][key], abs=1e-12)


def test_panoptic_hand_cases_match_pq_compute_on_files(tmp_path):
    categories, *case = _void_and_crowd_case()
    ours = PanopticMetrics(categories)
    ours.update(*case)
    _assert_same_as_panopticapi(
        ours.compute(), _pq_compute_on_files(tmp_path / "a", categories, [case]), categories
    )

    case = _hand_case()
    ours = PanopticMetrics(THINGS_AND_STUFF)
    ours.update(*case)
    theirs = _pq_compute_on_files(tmp_path / "b", THINGS_AND_STUFF, [case])
    assert theirs["All"]["pq"] == pytest.approx(
        (0.3 + 264 / 284) / 2
    )  # panopticapi agrees with the hand value
    _assert_same_as_panopticapi(ours.compute(), theirs, THINGS_AND_STUFF)


def test_panoptic_random_scenes_match_pq_compute_on_files(tmp_path):
    categories = [
        {"id": 1, "name": "person", "isthing": 1},
        {"id": 3, "name": "car", "isthing": 1},
        {"id": 5, "name": "sky", "isthing": 0},
        {"id": 7, "name": "road", "isthing": 0},
    ]
    rng = np.random.default_rng(4)
    cases = [_random_panoptic_scene(rng) for _ in range(8)]
    ours = PanopticMetrics(categories)
    for case in cases:
        ours.update(*case)
    result = ours.compute()
    assert 0.2 < result.all.pq < 0.95  # an informative comparison: neither perfect nor empty
    assert sum(r.fp for r in result.per_class) > 0 and sum(r.fn for r in result.per_class) > 0
    _assert_same_as_panopticapi(result, _pq_compute_on_files(tmp_path, categories, cases), categories)


def test_panoptic_rejects_inconsistent_inputs():
    pred, pred_segs, gt, gt_segs = _hand_case()
    m = PanopticMetrics(THINGS_AND_STUFF)
    with pytest.raises(ValueError, match=r"segment ids \[12\]"):
        m.update(pred, pred_segs[:2], gt, gt_segs)
    with pytest.raises(ValueError, match="category_id 9"):
        m.update(pred, [*pred_segs[:2], {"id": 12, "category_id": 9}], gt, gt_segs)
    with pytest.raises(ValueError, match="resize"):
        m.update(pred[:10], pred_segs, gt, gt_segs)
    with pytest.raises(ValueError, match="duplicate ids"):
        PanopticMetrics([*THINGS_AND_STUFF, {"id": 1, "name": "dog", "isthing": 1}])
    assert float(m.stats.abs().sum()) == 0  # nothing half-counted


def test_panoptic_merge_equals_single_pass():
    rng = np.random.default_rng(5)
    cases = [_random_panoptic_scene(rng) for _ in range(4)]
    cats = [{"id": c, "name": str(c), "isthing": c < 4} for c in (1, 3, 5, 7)]
    whole, a, b = PanopticMetrics(cats), PanopticMetrics(cats), PanopticMetrics(cats)
    for i, case in enumerate(cases):
        whole.update(*case)
        (a if i % 2 else b).update(*case)
    merged = a.merge(b).stats
    assert torch.equal(merged[:, 1:], whole.stats[:, 1:])  # TP, FP, FN
    torch.testing.assert_close(merged[:, 0], whole.stats[:, 0])  # IoU sums, summed in another order


# ---------------------------------------------------------------------------------------------- grounding


def _grounding_pairs():
    gt = np.zeros((4, 6, 6), bool)
    pred = np.zeros((4, 6, 6), bool)
    gt[0, :2, :2] = pred[0, :2, :2] = True  # IoU 1 (I 4, U 4)
    gt[1, :2, :2] = True
    pred[1, :1, :2] = True  # IoU 0.5 (I 2, U 4)
    gt[2, :2, :2] = True
    pred[2, 4:, 4:] = True  # IoU 0 (I 0, U 8)
    return pred, gt  # pair 3: both empty -> IoU 1, adds nothing to I or U


def test_grounding_hand_computed():
    pred, gt = _grounding_pairs()
    m = GroundingMetrics()
    m.update(torch.from_numpy(pred), torch.from_numpy(gt))
    r = m.compute()
    assert r.count == 4
    assert r.miou == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert r.ciou == pytest.approx((4 + 2 + 0) / (4 + 4 + 8))
    assert r.precision[0.5] == pytest.approx(3 / 4)  # IoU exactly 0.5 counts
    assert r.precision[0.6] == pytest.approx(2 / 4)
    assert r.precision[0.9] == pytest.approx(2 / 4)


def test_grounding_torch_path_equals_numpy_path():
    pred, gt = _grounding_pairs()
    by_numpy, by_torch = GroundingMetrics(), GroundingMetrics()
    by_numpy.update(pred, gt)
    by_torch._accumulate(torch.from_numpy(pred), torch.from_numpy(gt))
    assert torch.equal(by_numpy.state, by_torch.state)


def test_grounding_pairwise_equals_batched_and_merges():
    pred, gt = _grounding_pairs()
    batched, a, b = GroundingMetrics(), GroundingMetrics(), GroundingMetrics()
    batched.update(pred, gt)
    for i, (p, g) in enumerate(zip(pred, gt)):
        (a if i < 2 else b).update(p.astype(np.uint8), g)
    assert torch.equal(a.merge(b).state, batched.state)
    with pytest.raises(TypeError, match="threshold"):
        a.update(pred.astype(np.float32), gt)
    with pytest.raises(ValueError, match="binary"):
        a.update(pred.astype(np.int64) * 2, gt)


# ------------------------------------------------------------------------------------------------ reports


def test_format_table_and_json():
    sem = SemanticMetrics(3, ["a", "b", "c"])
    sem.update(np.array([[0, 0, 1, 1]]), np.array([[0, 1, 1, 255]]))
    pan = PanopticMetrics(THINGS_AND_STUFF)
    pan.update(*_hand_case())
    grd = GroundingMetrics(thresholds=(0.5,))
    grd.update(*_grounding_pairs())
    results = {"semantic": sem.compute(), "panoptic": pan.compute(), "grounding": grd.compute()}

    table = format_table(results)
    assert "### semantic" in table and "### panoptic" in table and "### grounding" in table
    assert "| a | 50.00 | 50.00 | 100.00 | 1 |" in table  # IoU 1/2, precision 1/2, recall 1/1
    assert "| c | n/a | n/a | n/a | 0 |" in table
    assert "| cat | thing | 30.00 | 60.00 | 50.00 | 1 | 1 | 1 |" in table
    assert "| 62.50 | 37.50 | 75.00 | 4 |" in table
    assert format_table(results["grounding"]).count("\n") == 2

    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    payload = json.loads(to_json(results), parse_constant=refuse)
    assert payload["semantic"]["per_class"]["c"]["iou"] is None
    assert payload["semantic"]["miou"] == pytest.approx(results["semantic"].miou)
    assert payload["panoptic"]["per_class"]["cat"]["tp"] == 1
    assert payload["grounding"]["precision@0.5"] == pytest.approx(0.75)
    with pytest.raises(TypeError):
        format_table({"x": 1})


def test_to_json_writes_file(tmp_path):
    grd = GroundingMetrics()
    grd.update(*_grounding_pairs())
    path = tmp_path / "out" / "metrics.json"
    path.parent.mkdir()
    text = to_json(grd.compute(), path)
    assert json.loads(path.read_text()) == json.loads(text)


# ------------------------------------------------------------------------------------------- distributed


def _distributed_worker(rank, world_size, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sem, pan, grd = _all_metrics_on_shard(rank, world_size)
        reduced = (sem.all_reduce(), pan.all_reduce(), grd.all_reduce())
        torch.save(
            {
                "semantic": reduced[0].confusion,
                "panoptic": reduced[1].stats,
                "grounding": reduced[2].state,
                # encoded in the background: all_reduce must wait for the encodings before it gathers them
                "instance": _instance_numbers(
                    _instances_on_shard(rank, world_size, background=True).all_reduce()
                ),
                "local": sem.confusion,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _all_metrics_on_shard(rank, world_size):
    rng = np.random.default_rng(6)
    pred, gt = _random_semantic(rng, (6, 10, 10), np.arange(4))
    scenes = [_random_panoptic_scene(rng) for _ in range(4)]
    masks_pred, masks_gt = _grounding_pairs()
    cats = [{"id": c, "name": str(c), "isthing": c < 4} for c in (1, 3, 5, 7)]
    sem, pan, grd = SemanticMetrics(4), PanopticMetrics(cats), GroundingMetrics()
    sem.update(pred[rank::world_size], gt[rank::world_size])
    for scene in scenes[rank::world_size]:
        pan.update(*scene)
    grd.update(masks_pred[rank::world_size], masks_gt[rank::world_size])
    return sem, pan, grd


def _instances_on_shard(rank, world_size, background=False):
    rng = np.random.default_rng(8)
    metrics = InstanceMetrics(INSTANCE_CATEGORIES, encode_in_background=background)
    for scene in [_random_instance_scene(rng) for _ in range(4)][rank::world_size]:
        metrics.update(*scene)
    return metrics


def _instance_numbers(metrics):
    r = metrics.compute()
    return torch.tensor(
        [r.ap, r.ap50, r.ap75, r.num_images, *(c.ap for c in r.per_class)], dtype=torch.float64
    )


@pytest.mark.slow  # two spawned interpreters import torch
def test_all_reduce_across_two_gloo_processes(tmp_path, monkeypatch):
    from pathlib import Path

    import torch.multiprocessing as mp

    # Spawned children unpickle the worker by its module name (tests.seemadapt.test_metrics under pytest's
    # importlib mode): the repository root must be importable there.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # spawn passes sys.path on
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    sem, pan, grd = _all_metrics_on_shard(0, 1)  # everything in one process
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["semantic"], sem.confusion)
        assert torch.equal(got["panoptic"][:, 1:], pan.stats[:, 1:])
        torch.testing.assert_close(got["panoptic"], pan.stats)
        assert torch.equal(got["grounding"], grd.state)
        torch.testing.assert_close(
            got["instance"], _instance_numbers(_instances_on_shard(0, 1)), equal_nan=True
        )
        assert not torch.equal(got["local"], sem.confusion)  # each rank really held only its shard


# ----------------------------------------------------------------------------------------------- instance

INSTANCE_CATEGORIES = [
    {"id": 0, "name": "cat", "isthing": True},
    {"id": 1, "name": "dog", "isthing": True},
    {"id": 2, "name": "sky", "isthing": False},
]


def _box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def test_instance_hand_computed_with_crowd_and_stuff():
    shape = (20, 20)
    gt1 = np.full(shape, 3, dtype=np.int64)  # sky everywhere else
    gt1[_box(shape, (0, 10), (0, 10))] = 1  # a cat, 100 px
    gt1[_box(shape, (10, 20), (10, 20))] = 2  # a crowd of dogs
    segments1 = [
        {"id": 1, "category_id": 0},
        {"id": 2, "category_id": 1, "iscrowd": 1},
        {"id": 3, "category_id": 2},
    ]
    # 72 px inside the cat: IoU 0.72; a dog on the crowd (ignored); a sky detection (stuff: dropped)
    masks1 = np.stack(
        [_box(shape, (0, 9), (0, 8)), _box(shape, (10, 20), (10, 20)), _box(shape, (0, 5), (15, 20))]
    )
    gt2 = np.zeros(shape, dtype=np.int64)
    gt2[_box(shape, (5, 15), (5, 15))] = 7
    # a false cat (score 0.8) before the exact one (score 0.4)
    masks2 = np.stack([_box(shape, (0, 4), (0, 4)), gt2 == 7])
    metrics = InstanceMetrics(INSTANCE_CATEGORIES)
    metrics.update(masks1, [0.9, 0.95, 0.99], [0, 1, 2], gt1, segments1)
    metrics.update(
        torch.from_numpy(masks2),
        torch.tensor([0.8, 0.4]),
        torch.tensor([0, 0]),
        gt2,
        [{"id": 7, "category_id": 0}],
    )
    r = metrics.compute()
    # cat, by score: TP (IoU .72), FP, TP (IoU 1), 2 instances. COCO's 101-point interpolated precision:
    # t <= .72 (5 of 10 thresholds): recall .5 at precision 1, recall 1 at 2/3; t > .72: FP, FP, TP -> recall .5 at 1/3
    low, high = (51 + 50 * 2 / 3) / 101, (51 / 3) / 101
    cat = r.per_class[0]
    assert (cat.name, cat.num_gt, cat.num_detections) == ("cat", 2, 3)
    assert cat.ap50 == pytest.approx(low) and cat.ap75 == pytest.approx(high)
    assert cat.ap == pytest.approx((5 * low + 5 * high) / 10)
    dog = r.per_class[1]  # only a crowd: no instance to find, so no AP; its detection is not a false positive
    assert (dog.num_gt, dog.num_detections) == (0, 1) and math.isnan(dog.ap)
    assert [c.name for c in r.per_class] == ["cat", "dog"]  # stuff is not scored
    assert (r.ap, r.ap50, r.ap75) == (cat.ap, cat.ap50, cat.ap75)  # the mean over the classes with instances
    assert r.num_images == 2
    assert "| cat |" in format_table(r) and json.loads(to_json(r))["per_class"]["dog"]["ap"] is None


def test_instance_perfect_predictions_and_empty_cases():
    shape = (16, 12)
    gt = np.zeros(shape, dtype=np.int64)
    gt[_box(shape, (0, 8), (0, 6))] = 4
    gt[_box(shape, (8, 16), (6, 12))] = 5
    segments = [{"id": 4, "category_id": 0}, {"id": 5, "category_id": 1}]
    metrics = InstanceMetrics(INSTANCE_CATEGORIES)
    metrics.update(np.stack([gt == 4, gt == 5]), [0.3, 0.2], [0, 1], gt, segments)
    r = metrics.compute()
    assert (r.ap, r.ap50, r.ap75) == (pytest.approx(1.0),) * 3
    nothing = InstanceMetrics(INSTANCE_CATEGORIES)
    nothing.update(np.zeros((0, *shape), dtype=bool), [], [], gt, segments)
    assert nothing.compute().ap == 0.0  # instances, no detection
    assert math.isnan(InstanceMetrics(INSTANCE_CATEGORIES).compute().ap)  # no image at all
    with pytest.raises(ValueError, match="same N instances"):
        metrics.update(np.zeros((1, 4, 4), dtype=bool), [0.5], [0], gt, segments)


@pytest.mark.parametrize("background", [False, True])
def test_instance_merge_equals_single_pass(background):
    scenes = [_random_instance_scene(np.random.default_rng(seed)) for seed in range(4)]
    single = InstanceMetrics(INSTANCE_CATEGORIES)
    first, second = (InstanceMetrics(INSTANCE_CATEGORIES, encode_in_background=background) for _ in range(2))
    for k, scene in enumerate(scenes):
        single.update(*scene)
        (first if k < 2 else second).update(*scene)
    assert first.merge(second).compute() == single.compute()


def test_instance_masks_in_any_layout_score_alike():
    """Column-major tensors (``predict``'s masks, encoded without a copy), row-major tensors and arrays, with and
    without detections to drop: the same RLEs and the same AP."""
    scenes = [_random_instance_scene(np.random.default_rng(seed)) for seed in range(4)]
    results = []
    for layout in ("array", "row-major", "column-major"):
        for background in (False, True):  # encoded before update returns / on worker threads meanwhile
            metrics = InstanceMetrics(INSTANCE_CATEGORIES, encode_in_background=background)
            for masks, scores, labels, ids, segments in scenes:
                if layout != "array":
                    masks = torch.from_numpy(masks)
                if layout == "column-major":
                    masks = masks.transpose(1, 2).contiguous().transpose(1, 2)
                metrics.update(masks, scores, labels, ids, segments)
            computed = metrics.compute()
            results.append((metrics.images, computed))
    assert any(
        len(d) < len(s[2]) for (_, _, d), s in zip(results[0][0], scenes)
    )  # some stuff detections dropped
    assert all(result == results[0] for result in results[1:])


@pytest.mark.parametrize("background", [False, True])
def test_instance_precomputed_ious_give_cocoeval_its_own_results(background, monkeypatch):
    """The IoUs the encoder takes from the masks' C RLEs stand in for ``COCOeval.computeIoU``'s: the same matrices
    and the same precision, recall and scores, with ties in the scores and more detections of a category than
    ``maxDets`` keeps (which detections it keeps follows its stable sort)."""
    metrics = InstanceMetrics(INSTANCE_CATEGORIES, encode_in_background=background)
    for seed in range(6):
        masks, scores, labels, ids, segments = _random_instance_scene(np.random.default_rng(seed))
        metrics.update(masks, np.round(scores, 1), labels, ids, segments)  # rounded: ties
    rng = np.random.default_rng(9)
    masks, _, _, ids, segments = _random_instance_scene(rng)
    corners = rng.integers(0, 36, size=(130, 2))
    sides = rng.integers(2, 12, size=(130, 2))
    boxes = [_box(ids.shape, (y, y + h), (x, x + w)) for (y, x), (h, w) in zip(corners, sides)]
    many = np.concatenate([masks, np.stack(boxes)])
    label = next(
        s["category_id"] for s in segments if s["category_id"] in (0, 1)
    )  # a thing with ground truth
    labels = np.full(len(many), label, dtype=np.int64)
    metrics.update(many, np.round(rng.random(len(many)), 2), labels, ids, segments)
    ours = metrics.settled()._coco_eval()
    monkeypatch.setattr(instance_metrics, "_PrecomputedIoUs", COCOeval)
    theirs = metrics._coco_eval()
    assert type(theirs) is COCOeval and type(ours) is not COCOeval
    assert ours.ious.keys() == theirs.ious.keys()
    for key, expected in theirs.ious.items():
        assert np.array_equal(np.asarray(ours.ious[key]), np.asarray(expected)), key
    assert sum(np.asarray(v).shape[0] == 100 for v in theirs.ious.values()) == 1  # maxDets cut one category
    for name in ("precision", "recall", "scores"):
        assert np.array_equal(ours.eval[name], theirs.eval[name]), name


def _random_instance_scene(rng, shape=(48, 40)):
    """A panoptic map of random boxes (things 0/1, some crowd, sky behind) and detections: jittered copies of the
    instances, random boxes of every class, scores at random."""
    ids = np.full(shape, 1, dtype=np.int64)
    segments = [{"id": 1, "category_id": 2}]
    for k in range(int(rng.integers(1, 5))):
        y, x = rng.integers(0, shape[0] - 8), rng.integers(0, shape[1] - 8)
        h, w = rng.integers(4, 20), rng.integers(4, 20)
        ids[y : y + h, x : x + w] = k + 2
        segments.append(
            {"id": k + 2, "category_id": int(rng.integers(0, 2)), "iscrowd": int(rng.random() < 0.2)}
        )
    segments = [s for s in segments if (ids == s["id"]).any()]
    masks, labels = [], []
    for s in segments[1:]:
        mask = ids == s["id"]
        dy, dx = rng.integers(-2, 3, size=2)
        masks.append(np.roll(mask, (dy, dx), axis=(0, 1)))
        labels.append(s["category_id"] if rng.random() < 0.8 else int(rng.integers(0, 3)))
    for _ in range(int(rng.integers(0, 4))):
        y, x = rng.integers(0, shape[0] - 4, size=1)[0], rng.integers(0, shape[1] - 4, size=1)[0]
        masks.append(_box(shape, (y, y + int(rng.integers(2, 16))), (x, x + int(rng.integers(2, 16)))))
        labels.append(int(rng.integers(0, 3)))
    masks = np.stack(masks) if masks else np.zeros((0, *shape), dtype=bool)
    return masks, rng.random(len(labels)), np.array(labels, dtype=np.int64), ids, segments


def test_instance_matches_detectron2_coco_evaluator(tmp_path):
    """The same scenes through detectron2's COCOEvaluator (ground truth written as a COCO instances json, predictions
    as Instances): our conversion of panoptic ground truth and of predictions gives its AP numbers."""
    d2 = pytest.importorskip("seemadapt.detectron2_compat")
    rng = np.random.default_rng(11)
    scenes = [_random_instance_scene(rng) for _ in range(6)]
    ours = InstanceMetrics(INSTANCE_CATEGORIES)
    images, annotations = [], []
    for image_id, (masks, scores, labels, ids, segments) in enumerate(scenes, start=1):
        ours.update(masks, scores, labels, ids, segments)
        images.append(
            {"id": image_id, "height": ids.shape[0], "width": ids.shape[1], "file_name": f"{image_id}.jpg"}
        )
        for s in segments:
            if s["category_id"] == 2:
                continue
            rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": s["category_id"] + 1,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": s.get("iscrowd", 0),
                }
            )
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dataset = f"seemadapt_metrics_instances_{tmp_path.name}"
    d2.MetadataCatalog.get(dataset).set(
        json_file=str(json_file), thing_classes=["cat", "dog"], thing_dataset_id_to_contiguous_id={1: 0, 2: 1}
    )
    try:
        evaluator = d2.COCOEvaluator(dataset, tasks=("segm",), distributed=False, use_fast_impl=False)
        evaluator.reset()
        for image_id, (masks, scores, labels, ids, _) in enumerate(scenes, start=1):
            things = labels < 2
            instances = d2.Instances(ids.shape)
            instances.pred_masks = torch.from_numpy(masks[things])
            instances.pred_boxes = d2.Boxes(torch.zeros(int(things.sum()), 4))
            instances.scores = torch.from_numpy(scores[things]).float()
            instances.pred_classes = torch.from_numpy(labels[things])
            evaluator.process([{"image_id": image_id}], [{"instances": instances}])
        theirs = evaluator.evaluate()["segm"]
    finally:
        d2.MetadataCatalog.remove(dataset)
    r = ours.compute()
    assert 0 < r.ap < 1  # the scenes are neither trivial nor hopeless
    # detectron2 rounds nothing but converts to percent; scores pass through float32 on its side
    assert 100 * r.ap == pytest.approx(theirs["AP"], abs=1e-6)
    assert 100 * r.ap50 == pytest.approx(theirs["AP50"], abs=1e-6)
    assert 100 * r.ap75 == pytest.approx(theirs["AP75"], abs=1e-6)
    for key, value in (("APs", r.ap_small), ("APm", r.ap_medium), ("APl", r.ap_large)):
        assert (math.isnan(value) and math.isnan(theirs[key])) or 100 * value == pytest.approx(
            theirs[key], abs=1e-6
        )
    for c in r.per_class:
        assert 100 * c.ap == pytest.approx(theirs[f"AP-{c.name}"], abs=1e-6)
