"""evaluate(): the bookkeeping against hand-counted ground truth (stand-in models), then the tiny SEEM end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from seemadapt.evaluation import TASKS, EvalResult, evaluate
from seemadapt.testing import make_contract_dataset
from seemadapt.train.config import TrainConfig
from segcontract import rgb2id

CLASSES = ["square", "disc", "background"]


@pytest.fixture(scope="module")
def dataset():
    return make_contract_dataset(5, size=(40, 32), classes=CLASSES, seed=3)


def _truth(dataset):
    """Ground truth per image content, decoded independently of seemadapt.evaluate."""
    table = {}
    for row in dataset.with_format(None):
        image = np.asarray(row["image"].convert("RGB"))
        table[image.tobytes()] = {
            "semantic": np.asarray(row["semantic"]).astype(np.int64),
            "ids": rgb2id(np.asarray(row["panoptic"].convert("RGB"))),
            "segments": row["segments_info"],
        }
    return table


class Oracle:
    """Predicts the ground truth (in the class order it is asked for); ``drop_crowd`` leaves crowd regions empty."""

    def __init__(self, dataset, drop_crowd: bool = False):
        self.truth = _truth(dataset)
        self.names = dataset.features["segments_info"].feature["category_id"].names
        self.drop_crowd = drop_crowd
        self.calls = []

    def predict(self, images, classes, task="semantic", thing_classes=None, **kwargs):
        self.calls.append((task, len(images), list(classes), thing_classes, kwargs))
        out = []
        for image in images:
            gt = self.truth[image.permute(1, 2, 0).numpy().tobytes()]
            lookup = np.zeros(256, dtype=np.int64)  # ignored and unasked pixels: any class will do
            for k, name in enumerate(self.names):
                if name in classes:
                    lookup[k] = classes.index(name)
            if task == "semantic":
                out.append({"labels": torch.from_numpy(lookup[gt["semantic"]])})
                continue
            if task == "instance":
                out.append(self._instances(gt, classes, thing_classes))
                continue
            ids = gt["ids"].copy()
            segments = []
            for seg in gt["segments"]:
                name = self.names[seg["category_id"]]
                if name not in classes or (self.drop_crowd and seg["iscrowd"]):
                    ids[ids == seg["id"]] = 0
                    continue
                segments.append(
                    {"id": seg["id"], "category_id": classes.index(name), "isthing": seg["isthing"]}
                )
            out.append({"panoptic_seg": torch.from_numpy(ids.astype(np.int32)), "segments_info": segments})
        return out

    def _instances(self, gt, classes, thing_classes):
        """Every asked thing segment as one instance (crowd ones too, unless ``drop_crowd``), score 1."""
        kept = [
            seg
            for seg in gt["segments"]
            if self.names[seg["category_id"]] in (thing_classes or [])
            and not (self.drop_crowd and seg["iscrowd"])
        ]
        masks = (
            np.stack([gt["ids"] == seg["id"] for seg in kept])
            if kept
            else np.zeros((0, *gt["ids"].shape), bool)
        )
        return {
            "masks": torch.from_numpy(masks),
            "scores": torch.ones(len(kept)),
            "labels": torch.tensor([classes.index(self.names[seg["category_id"]]) for seg in kept]),
        }


class Constant:
    """Predicts class 0 everywhere, no panoptic segment and no instance."""

    def predict(self, images, classes, task="semantic", thing_classes=None, **kwargs):
        if task == "semantic":
            return [{"labels": torch.zeros(img.shape[-2:], dtype=torch.int64)} for img in images]
        if task == "instance":
            return [
                {"masks": torch.zeros(0, *img.shape[-2:], dtype=torch.bool), "scores": [], "labels": []}
                for img in images
            ]
        return [
            {"panoptic_seg": torch.zeros(img.shape[-2:], dtype=torch.int32), "segments_info": []}
            for img in images
        ]


def test_ground_truth_predictions_score_perfectly(dataset):
    oracle = Oracle(dataset)
    result = evaluate(oracle, dataset, batch_size=2, progress=False)
    assert isinstance(result, EvalResult)
    assert result.num_images == 5
    assert result.classes == tuple(CLASSES)
    metrics = result.metrics
    for key in ("miou", "mean_precision", "mean_recall", "pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert metrics[key] == pytest.approx(1.0), key
    for name in CLASSES:
        assert metrics[f"iou/{name}"] == pytest.approx(1.0)
        assert metrics[f"pq/{name}"] == pytest.approx(1.0)
    # batches of 2, 2, 1 per task; things from the dataset's categories; no resize unless asked
    assert [c[1] for c in oracle.calls if c[0] == "semantic"] == [2, 2, 1]
    assert all(c[3] == ["square", "disc"] for c in oracle.calls if c[0] == "panoptic")
    assert all(c[4] == {} for c in oracle.calls)
    # ignored pixels are not scored: the confusion matrix counts exactly the labelled pixels
    labelled = sum(int((t["semantic"] != 255).sum()) for t in _truth(dataset).values())
    assert result.semantic.confusion.sum() == labelled


def test_instance_ground_truth_predictions_score_perfectly(dataset):
    oracle = Oracle(dataset)
    result = evaluate(oracle, dataset, tasks=["instance"], batch_size=2, progress=False)
    assert result.semantic is None and result.panoptic is None
    assert [c[0] for c in oracle.calls] == ["instance"] * 3
    assert all(c[3] == ["square", "disc"] for c in oracle.calls)
    for key in ("ap", "ap50", "ap75", "ap/square", "ap/disc"):
        assert result.metrics[key] == pytest.approx(1.0), key
    assert [c.name for c in result.instance.per_class] == ["square", "disc"]  # things only
    truth = _truth(dataset).values()
    for k, row in enumerate(result.instance.per_class):
        assert row.num_gt == sum(
            s["category_id"] == k and not s["iscrowd"] for t in truth for s in t["segments"]
        )
    # the constant model finds nothing: AP 0 where there are instances
    assert evaluate(Constant(), dataset, tasks=["instance"], progress=False).metrics["ap"] == 0.0


def test_constant_prediction_matches_hand_counts(dataset):
    result = evaluate(Constant(), dataset, progress=False)
    truth = _truth(dataset).values()
    gt = np.concatenate([t["semantic"].ravel() for t in truth])
    gt = gt[gt != 255]
    counts = np.bincount(gt, minlength=3)
    # class 0 predicted on every scored pixel: IoU_0 = |gt 0| / |scored|, others 0 (present in the ground truth)
    expected_iou = [counts[0] / counts.sum(), 0.0, 0.0]
    assert result.metrics["miou"] == pytest.approx(np.mean(expected_iou))
    assert result.metrics["precision/square"] == pytest.approx(counts[0] / counts.sum())
    assert result.metrics["recall/square"] == pytest.approx(1.0)
    assert result.metrics["recall/disc"] == 0.0
    # no predicted segment: every ground-truth segment is a false negative, PQ 0
    segments = [s for t in truth for s in t["segments"]]
    for k, row in enumerate(result.panoptic.per_class):
        assert row.fn == sum(s["category_id"] == k for s in segments)
        assert row.tp == row.fp == 0
    assert result.metrics["pq"] == 0.0


def test_class_subset_and_order_remap_the_ground_truth(dataset):
    classes = ["disc", "square"]  # reordered, background left out
    oracle = Oracle(dataset)
    result = evaluate(oracle, dataset, classes=classes, progress=False)
    assert result.classes == ("disc", "square")
    assert all(c[2] == classes for c in oracle.calls)
    assert result.metrics["miou"] == pytest.approx(1.0)
    assert result.metrics["pq"] == pytest.approx(1.0)
    assert "iou/background" not in result.metrics
    truth = list(_truth(dataset).values())
    disc_pixels = sum(int((t["semantic"] == 1).sum()) for t in truth)
    assert result.semantic.confusion[0, 0] == disc_pixels  # disc is class 0 now
    # a mapping prompts with other words, still scoring the dataset's classes
    renamed = evaluate(Constant(), dataset, classes={"disc": "round thing", "square": "box"}, progress=False)
    assert renamed.classes == ("round thing", "box")


def test_crowd_segments_are_neither_missed_nor_false_positives(dataset):
    def crowd_first_thing(row):
        segments = [dict(s) for s in row["segments_info"]]
        for s in segments:
            if s["isthing"]:
                s["iscrowd"] = 1
                break
        return {"segments_info": segments}

    crowded = dataset.map(crowd_first_thing)
    assert sum(s["iscrowd"] for row in crowded for s in row["segments_info"]) == 5
    result = evaluate(
        Oracle(crowded, drop_crowd=True), crowded, tasks=["panoptic", "instance"], progress=False
    )
    assert result.semantic is None
    assert result.metrics["pq"] == pytest.approx(1.0)
    assert sum(row.fn for row in result.panoptic.per_class) == 0
    # a crowd is no instance to find, and a detection on it is no false positive
    assert result.metrics["ap"] == pytest.approx(1.0)
    with_crowd = evaluate(Oracle(crowded), crowded, tasks=["instance"], progress=False)
    assert with_crowd.metrics["ap"] == pytest.approx(1.0)
    uncrowded = evaluate(Oracle(crowded), dataset, tasks=["instance"], progress=False)
    assert sum(r.num_gt for r in uncrowded.instance.per_class) == 5 + sum(
        r.num_gt for r in result.instance.per_class
    )


def test_table_json_and_save(dataset, tmp_path):
    result = evaluate(Oracle(dataset), dataset, tasks=TASKS, progress=False, num_examples=2)
    table = result.table()
    assert "mIoU" in table and "PQ" in table and "AP50" in table and "| square |" in table
    folder = result.save(tmp_path / "eval")
    payload = json.loads((folder / "results.json").read_text())
    assert payload["metrics"]["miou"] == pytest.approx(1.0)
    assert payload["semantic"]["per_class"]["disc"]["iou"] == pytest.approx(1.0)
    assert payload["num_images"] == 5
    assert payload["metrics"]["ap"] == pytest.approx(1.0)
    assert payload["instance"]["per_class"]["disc"]["ap"] == pytest.approx(1.0)
    assert (folder / "results.md").read_text().count(
        "| square |"
    ) == 3  # semantic, panoptic and instance rows
    for name in ("per_class_semantic.png", "per_class_panoptic.png", "per_class_instance.png"):
        assert (folder / name).stat().st_size > 1000
    overlays = sorted(p.name for p in (folder / "overlays").iterdir())
    assert len(overlays) == 6  # 2 examples x (ground truth, semantic, panoptic)


def test_undefined_scores_are_nan_in_metrics_and_null_in_json(tmp_path):
    ds = make_contract_dataset(1, size=(24, 24), classes=CLASSES, seed=1, max_shapes=1)
    present = {CLASSES[s["category_id"]] for s in ds[0]["segments_info"]}
    absent = next(c for c in CLASSES if c not in present)
    order = [c for c in CLASSES if c != absent]
    order.insert(1, absent)  # Constant predicts class 0, so the absent class is never predicted either
    result = evaluate(Constant(), ds, classes=order, tasks=["semantic"], progress=False)
    assert math.isnan(result.metrics[f"iou/{absent}"])
    assert result.metrics["miou"] == pytest.approx(np.nanmean(result.semantic.iou))
    text = (result.save(tmp_path) / "results.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["metrics"][f"iou/{absent}"] is None


def test_bad_arguments_name_the_field(dataset):
    with pytest.raises(ValueError, match="lamp"):
        evaluate(Constant(), dataset, classes=["square", "lamp"], progress=False)
    with pytest.raises(ValueError, match="tasks"):
        evaluate(Constant(), dataset, tasks=["depth"], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(Constant(), dataset, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        evaluate(Constant(), dataset, image_size=(64, 32), progress=False)
    with pytest.raises(TypeError, match="predict"):
        evaluate(object(), dataset, progress=False)
    with pytest.raises(TypeError, match="ground"):
        evaluate(Constant(), dataset, grounding=True, progress=False)


def test_image_size_reaches_predict(dataset):
    oracle = Oracle(dataset)
    evaluate(oracle, dataset, image_size=64, max_images=1, progress=False)
    assert oracle.calls[0][4] == {"short_edge": 64, "max_size": round(64 * 1333 / 800)}
    oracle.calls.clear()
    evaluate(oracle, dataset, image_size=(48, 96), max_images=1, progress=False)
    assert oracle.calls[0][4] == {"short_edge": 48, "max_size": 96}


def test_tiny_seem_end_to_end_with_grounding(tmp_path):
    from seemadapt.model import SEEM

    ds = make_contract_dataset(2, size=(32, 32), seed=5)
    ds.save_to_disk(str(tmp_path / "data"))
    model = SEEM.from_config("tiny").eval()
    result = evaluate(
        model, str(tmp_path / "data"), tasks=TASKS, grounding=True, batch_size=2, progress=False
    )
    assert result.num_images == 2
    metrics = result.metrics
    expected = {"miou", "mean_precision", "mean_recall", "pq", "sq", "rq", "ap", "ap50", "ap75"}
    expected |= {"grounding_miou", "grounding_ciou"}
    assert expected <= set(metrics)
    assert {f"iou/{c}" for c in CLASSES} <= set(metrics)
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in metrics.values())
    # every grounded segment (things, one first sentence each) was scored once
    grounded = sum(len(row["grounding"]) for row in ds)
    assert result.grounding.count == grounded
    assert result.semantic.confusion.sum() > 0
    folder = result.save(tmp_path / "out")
    assert (folder / "overlays" / "000000_semantic.png").is_file()


@pytest.mark.slow
def test_two_processes_split_rows_and_sum_counts(tmp_path, dataset):
    """Under a 2-process gloo group each process scores half the rows; the all-reduced result equals one process."""
    dataset.save_to_disk(str(tmp_path / "data"))
    single = evaluate(Constant(), dataset, progress=False)
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys, torch, torch.distributed as dist
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            from test_evaluate import Constant
            from seemadapt.evaluation import evaluate
            dist.init_process_group("gloo", init_method="file://{tmp_path / "rendezvous"}",
                                    rank=int(sys.argv[1]), world_size=2)
            result = evaluate(Constant(), {str(tmp_path / "data")!r}, progress=False, distributed=True)
            json.dump({{"n": result.num_images, "confusion": result.semantic.confusion.tolist(),
                       "fn": [r.fn for r in result.panoptic.per_class]}}, open(sys.argv[2], "w"))
            dist.destroy_process_group()
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(rank), str(tmp_path / f"out{rank}.json")], env=env)
        for rank in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    for rank in range(2):
        out = json.loads((tmp_path / f"out{rank}.json").read_text())
        assert out["n"] == 5
        assert out["confusion"] == single.semantic.confusion.tolist()
        assert out["fn"] == [r.fn for r in single.panoptic.per_class]


def test_training_evaluation_can_score_instances():
    config = TrainConfig(eval_tasks=["semantic", "instance"], best_metric="ap")
    assert config.eval_tasks == ("semantic", "instance")
