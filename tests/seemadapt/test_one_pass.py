"""One forward pass for every task: ``predict(task=[...])`` and the vectorised post-processing give exactly the
per-task results (the loop implementations below are the former per-query code, kept here as the reference)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from seemadapt.evaluation import evaluate
from seemadapt.model import predictor
from seemadapt.model.postprocess import (
    instance_inference,
    match_grounding,
    panoptic_inference,
    resize_mask_logits,
)
from seemadapt.model.predictor import evaluating
from seemadapt.model.seem import SEEM
from seemadapt.testing import make_contract_dataset

CLASSES = ["cat", "dog", "grass", "sky"]
TASKS = ["semantic", "panoptic", "instance"]


def reference_panoptic(class_logits, mask_logits, thing_ids, object_mask_threshold, overlap_threshold):
    """Mask2Former's per-query merge loop (the implementation before vectorisation)."""
    num_classes = class_logits.shape[1] - 1
    scores, labels = class_logits.float().softmax(dim=-1).max(dim=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels, probs = scores[keep], labels[keep], mask_logits.float().sigmoid()[keep]
    panoptic_seg = torch.zeros(mask_logits.shape[-2:], dtype=torch.int32)
    segments: list[dict[str, Any]] = []
    if len(scores) == 0:
        return panoptic_seg, segments
    owner = (scores[:, None, None] * probs).argmax(dim=0)
    stuff_segment: dict[int, int] = {}
    for k in range(len(scores)):
        label = int(labels[k])
        is_thing = thing_ids is None or label in thing_ids
        won, own = owner == k, probs[k] >= 0.5
        won_area, own_area = int(won.sum()), int(own.sum())
        region = won & own
        if (
            won_area == 0
            or own_area == 0
            or not bool(region.any())
            or won_area / own_area < overlap_threshold
        ):
            continue
        if not is_thing and label in stuff_segment:
            panoptic_seg[region] = stuff_segment[label]
            continue
        segment_id = len(segments) + 1
        panoptic_seg[region] = segment_id
        if not is_thing:
            stuff_segment[label] = segment_id
        segments.append(
            {"id": segment_id, "category_id": label, "isthing": is_thing, "score": float(scores[k])}
        )
    areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(segments) + 1)
    for segment in segments:
        segment["area"] = int(areas[segment["id"]])
    return panoptic_seg, segments


def reference_instance(class_logits, mask_logits, thing_ids, top_k):
    """Top-k pairs with one mask score per pair (the implementation before the per-query scores)."""
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    top_scores, flat = (
        class_logits.float().softmax(dim=-1)[:, :-1].flatten().topk(min(top_k, num_queries * num_classes))
    )
    labels, queries = flat % num_classes, flat // num_classes
    if thing_ids is not None:
        keep = torch.tensor([int(label) in thing_ids for label in labels], dtype=torch.bool)
        top_scores, labels, queries = top_scores[keep], labels[keep], queries[keep]
    logits = mask_logits.float()[queries]
    masks = logits > 0
    inside = masks.flatten(1).float()
    mask_scores = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = top_scores * mask_scores
    order = scores.argsort(descending=True)
    return {"masks": masks[order], "scores": scores[order], "labels": labels[order]}


def random_outputs(seed: int, queries: int = 24, classes: int = 4, size: tuple[int, int] = (40, 36)):
    generator = torch.Generator().manual_seed(seed)
    class_logits = 3 * torch.randn(queries, classes + 1, generator=generator)
    mask_logits = 4 * torch.randn(queries, 5, 5, generator=generator)  # smooth blobs after upsampling
    mask_logits = torch.nn.functional.interpolate(mask_logits[None], size=size, mode="bilinear")[0]
    return class_logits, mask_logits


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("things", [None, {0, 1}, set()])
@pytest.mark.parametrize(("object_threshold", "overlap"), [(0.0, 0.0), (0.3, 0.5), (0.8, 0.8)])
def test_vectorised_panoptic_equals_the_per_query_loop(seed, things, object_threshold, overlap):
    class_logits, mask_logits = random_outputs(seed)
    seg, segments = panoptic_inference(class_logits, mask_logits, things, object_threshold, overlap)
    ref_seg, ref_segments = reference_panoptic(class_logits, mask_logits, things, object_threshold, overlap)
    assert torch.equal(seg, ref_seg)
    assert segments == ref_segments


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("things", [None, {0, 2}])
@pytest.mark.parametrize("top_k", [1, 10, 100])
def test_per_query_mask_scores_equal_per_pair_scores(seed, things, top_k):
    class_logits, mask_logits = random_outputs(seed)
    result = instance_inference(class_logits, mask_logits, things, top_k)
    reference = reference_instance(class_logits, mask_logits, things, top_k)
    for key in ("masks", "scores", "labels"):
        assert torch.equal(result[key], reference[key]), key


@pytest.fixture(scope="module")
def model():
    return SEEM.from_config("tiny")


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=generator),
    ]


@pytest.mark.parametrize("thresholds", [{}, {"object_mask_threshold": 0.0, "overlap_threshold": 0.0}])
def test_one_pass_equals_one_call_per_task(model, images, thresholds):
    combined = model.predict(images, CLASSES, task=TASKS, thing_classes=["cat", "dog"], top_k=7, **thresholds)
    assert [sorted(result) for result in combined] == [sorted(TASKS)] * 2
    for task in TASKS:
        alone = model.predict(images, CLASSES, task=task, thing_classes=["cat", "dog"], top_k=7, **thresholds)
        for together, single in zip(combined, alone):
            assert together[task].keys() == single.keys()
            for key, value in single.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(together[task][key], value), (task, key)
                else:
                    assert together[task][key] == value, (task, key)


def test_each_image_keeps_its_results_though_the_batch_shares_one_workspace(model, monkeypatch):
    seen = []
    postprocess = predictor.postprocess_image

    def spy(class_logits, masks, options):  # what each image's post-processing was given, before it runs
        seen.append((class_logits.clone(), masks.clone(), options, masks.untyped_storage().data_ptr()))
        return postprocess(class_logits, masks, options)

    monkeypatch.setattr(predictor, "postprocess_image", spy)
    generator = torch.Generator().manual_seed(5)
    images = [torch.randint(0, 256, (3, 56, 56), dtype=torch.uint8, generator=generator) for _ in range(2)]
    thresholds = {"object_mask_threshold": 0.0, "overlap_threshold": 0.0}
    results = model.predict(images, CLASSES, task=TASKS, thing_classes=["cat", "dog"], top_k=7, **thresholds)
    assert len(seen) == 2 and seen[0][3] == seen[1][3]  # both images' logits were resized into one buffer
    for (class_logits, masks, options, _), result in zip(seen, results):
        assert masks.transpose(1, 2).is_contiguous()  # the clone kept predict's column-major layout
        with torch.inference_mode():  # on its own copy, after the whole batch ran
            expected = postprocess(class_logits, masks, options)
        assert result["panoptic"]["segments_info"] == expected["panoptic"]["segments_info"]
        for task in TASKS:
            for key, value in expected[task].items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(result[task][key], value), (task, key)


def test_one_pass_runs_the_network_once(model, images, monkeypatch):
    calls = []
    forward = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda *a, **k: calls.append(1) or forward(*a, **k))
    single = model.predict(images[0], CLASSES, task=["panoptic", "semantic", "panoptic"])
    assert calls == [1]
    assert list(single) == ["panoptic", "semantic"]  # a single image gives one dict, duplicates dropped


def test_task_list_is_validated(model, images):
    with pytest.raises(ValueError, match="task"):
        model.predict(images, CLASSES, task=["semantic", "depth"])
    with pytest.raises(ValueError, match="task"):
        model.predict(images, CLASSES, task=[])


class PerTask:
    """The same SEEM behind a plain ``predict``: ``evaluate`` then calls it once per task."""

    def __init__(self, model: SEEM):
        self.model = model
        self.tasks: list[object] = []

    def predict(self, images, classes, task="semantic", **kwargs):
        self.tasks.append(task)
        return self.model.predict(images, classes, task=task, **kwargs)


def test_evaluate_one_pass_equals_one_call_per_task(model):
    dataset = make_contract_dataset(3, size=(40, 32), classes=["square", "disc", "background"], seed=3)
    calls = []
    forward = model.encode_image
    model.encode_image = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        combined = evaluate(model, dataset, batch_size=2, progress=False)
    finally:
        del model.encode_image
    per_task = PerTask(model)
    separate = evaluate(per_task, dataset, batch_size=2, progress=False)
    assert calls == [1, 1]  # one forward pass per batch of 2 + 1 images, both tasks
    assert per_task.tasks == ["semantic", "panoptic"] * 2
    assert combined.to_dict() | {"seconds": 0} == separate.to_dict() | {"seconds": 0}


# ----------------------------------------------------------------------------------------------- grounding

SENTENCES = [["a red cat on the left", "dog"], None, ["the sky above everything", "grass", "a dog"]]
#: A batched backbone is not bit-identical to one image alone (kernels block the batch differently; about 2e-6 on
#: the tiny model's features), so grounding from the batch's features may differ from ground() by float rounding.
ROUNDING = 1e-4


def reference_ground(model, image, sentences):
    """``ground()`` before the one-pass work: its own forward, all sentences' tokens in one unpadded sequence."""
    lang = model.language_encoder
    with evaluating(model), torch.inference_mode():
        batch = model.preprocess([image])
        mask_features, multi_scale, _ = model.encode_image(batch)
        encoding = lang.encode(sentences, normalize=False, token_level=True)
        tokens = encoding.tokens[encoding.attention_mask.bool()][:, None]
        outputs = model.sem_seg_head.predictor(
            multi_scale, mask_features, None, grounding_tokens=tokens, task="grounding_eval"
        )
        indices, scores = match_grounding(outputs["pred_gtexts"][0], encoding.sentence, lang.logit_scale)
        logits = resize_mask_logits(
            outputs["pred_gmasks"][0][indices],
            batch.padded_size,
            batch.image_sizes[0],
            batch.original_sizes[0],
        )
    return {"masks": logits > 0, "mask_logits": logits, "scores": scores, "query_indices": indices}


def test_ground_is_unchanged(model, images):
    for image in images:
        assert_same_grounding(
            model.ground(image, SENTENCES[2]), reference_ground(model, image, SENTENCES[2]), True
        )


def assert_same_grounding(got, reference, exact):
    assert torch.equal(got["query_indices"], reference["query_indices"])
    if exact:
        for key in reference:
            assert torch.equal(got[key], reference[key]), key
        return
    torch.testing.assert_close(got["mask_logits"], reference["mask_logits"], atol=ROUNDING, rtol=0)
    torch.testing.assert_close(got["scores"], reference["scores"], atol=ROUNDING, rtol=0)
    clear = reference["mask_logits"].abs() > ROUNDING
    assert torch.equal(got["masks"][clear], reference["masks"][clear])


def count_forwards(model, monkeypatch):
    calls = []
    forward = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda *a, **k: calls.append(1) or forward(*a, **k))
    return calls


def test_predict_grounds_from_the_batch_features(model, monkeypatch):
    generator = torch.Generator().manual_seed(1)
    same = [torch.randint(0, 256, (3, 64, 60), dtype=torch.uint8, generator=generator) for _ in range(3)]
    references = [model.ground(image, texts) if texts else None for image, texts in zip(same, SENTENCES)]
    plain = model.predict(same, CLASSES, task=TASKS, thing_classes=["cat"])
    calls = count_forwards(model, monkeypatch)
    combined = model.predict(same, CLASSES, task=TASKS, thing_classes=["cat"], grounding=SENTENCES)
    assert calls == [1]  # the tasks and the grounding of all three images: one backbone + pixel decoder run
    for result, alone, reference in zip(combined, plain, references):
        assert sorted(result) == sorted([*TASKS, "grounding"])
        for task in TASKS:  # the tasks come from the same decoder call as without grounding: identical
            for key, value in alone[task].items():
                assert (
                    torch.equal(result[task][key], value)
                    if torch.is_tensor(value)
                    else result[task][key] == value
                )
        if reference is None:
            assert result["grounding"] is None
        else:
            assert_same_grounding(result["grounding"], reference, exact=False)


def test_mixed_sizes_ground_the_differently_padded_images_alone(model, monkeypatch):
    generator = torch.Generator().manual_seed(2)
    sizes = [(64, 64), (60, 50), (96, 64)]  # padded alone to 64x64, 64x64 and 96x64; the batch to 96x64
    images = [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator) for size in sizes]
    references = [model.ground(image, texts) if texts else None for image, texts in zip(images, SENTENCES)]
    calls = count_forwards(model, monkeypatch)
    combined = model.predict(images, CLASSES, task=[], grounding=SENTENCES)
    assert calls == [1, 1]  # the batch, then ground() for the first image (the second has no sentence)
    assert list(combined[0]) == ["grounding"]
    assert_same_grounding(combined[0]["grounding"], references[0], exact=True)
    assert combined[1]["grounding"] is None
    assert_same_grounding(combined[2]["grounding"], references[2], exact=False)


def test_grounding_argument_is_validated(model, images):
    with pytest.raises(ValueError, match="one entry per image"):
        model.predict(images, CLASSES, grounding=["a cat"])
    with pytest.raises(ValueError, match="one entry per image"):
        model.predict(images, CLASSES, grounding="a cat")
    single = model.predict(images[0], CLASSES, task="semantic", grounding=[["a cat", "a dog"]])
    assert sorted(single) == ["grounding", "semantic"] and len(single["grounding"]["masks"]) == 2


class PerTaskAndGround(PerTask):
    """``PerTask`` plus ``ground``: the former evaluation path, one ``ground`` forward per image."""

    def ground(self, image, sentences, **kwargs):
        return self.model.ground(image, sentences, **kwargs)


def test_evaluate_grounding_in_the_same_forward_pass(model, monkeypatch):
    dataset = make_contract_dataset(3, size=(40, 32), classes=["square", "disc", "background"], seed=3)
    assert sum(len(row["grounding"]) for row in dataset) > 0
    tasks = ["semantic", "panoptic", "instance"]
    calls = count_forwards(model, monkeypatch)
    combined = evaluate(model, dataset, tasks=tasks, grounding=True, batch_size=2, progress=False)
    assert calls == [1, 1]  # one forward per batch for the three tasks and grounding
    monkeypatch.undo()
    separate = evaluate(
        PerTaskAndGround(model), dataset, tasks=tasks, grounding=True, batch_size=2, progress=False
    )
    for key in ("semantic", "panoptic", "instance"):
        assert combined.to_dict()[key] == separate.to_dict()[key], key
    ours, theirs = combined.grounding, separate.grounding
    assert ours.count == theirs.count > 0
    # masks agree up to pixels whose logit is within float rounding of the threshold
    assert ours.miou == pytest.approx(theirs.miou, abs=1e-3)
    assert ours.union == pytest.approx(theirs.union, rel=1e-3)
