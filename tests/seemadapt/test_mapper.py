"""SEEM mappers: LSJ as detectron2 does it, targets aligned with pixels, grounding sampling, determinism."""

from __future__ import annotations

import itertools
import random
import uuid

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from seemadapt.data import (
    EpochDataset,
    EpochSampler,
    SEEMTestMapper,
    SEEMTrainMapper,
    build_train_loader,
    contract_features,
    make_row,
    register,
    rgb2id,
    unregister,
)
from seemadapt.data.mapper import CLASS_TEMPLATES, _swap_left_right, lsj_transforms, mask_boxes, stable_hash
from seemadapt.detectron2_compat import BitMasks, DatasetCatalog, T
from seemadapt.testing import make_contract_dataset

CLASSES = ["square", "disc", "background"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two registered splits of 48x40 images: with grounding sentences and without."""
    cache = tmp_path_factory.mktemp("cache")
    names = {}
    for key, grounding in (("text", True), ("class", False)):
        name = f"mapper_{key}_{uuid.uuid4().hex[:6]}"
        register(
            make_contract_dataset(num_images=4, size=(48, 40), seed=11, grounding=grounding),
            name,
            cache_dir=cache,
        )
        names[key] = name
    yield names
    for name in names.values():
        unregister(name)


def _ids(record) -> np.ndarray:
    return rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))


def _assert_same(a: dict, b: dict) -> None:
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["sem_seg"], b["sem_seg"])
    assert torch.equal(a["instances"].gt_masks.tensor, b["instances"].gt_masks.tensor)
    assert torch.equal(a["instances"].gt_classes, b["instances"].gt_classes)
    assert a["groundings"]["texts"] == b["groundings"]["texts"]
    assert torch.equal(a["groundings"]["masks"], b["groundings"]["masks"])


@pytest.mark.parametrize(("h", "w", "size"), [(40, 48, 64), (300, 200, 128), (50, 50, 32)])
def test_lsj_draws_the_transforms_detectron2_draws(h, w, size):
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    augs = T.AugmentationList(
        [
            T.RandomFlip(horizontal=True),
            T.ResizeScale(0.1, 2.0, size, size),
            T.FixedSizeCrop((size, size), pad_value=128),
        ]
    )
    for seed in range(6):
        np.random.seed(seed)
        aug_input = T.AugInput(image.copy())
        augs(aug_input)
        ours = lsj_transforms(
            h, w, np.random.RandomState(seed), image_size=size, min_scale=0.1, max_scale=2.0
        )
        np.testing.assert_array_equal(ours.apply_image(image.copy()), aug_input.image)


def test_output_format_and_padding(registered):
    record = DatasetCatalog.get(registered["text"])[0]
    # scale 0.5 of 64: the 48x40 image becomes 32x27 (w x h), then is padded to 64x64
    out = SEEMTrainMapper(image_size=64, min_scale=0.5, max_scale=0.5, flip=False, class_names=CLASSES)(
        record
    )
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (64, 64)
    assert out["sem_seg"].shape == (64, 64) and out["sem_seg"].dtype == torch.int64
    inst = out["instances"]
    assert inst.gt_classes.dtype == torch.int64 and inst.is_things.dtype == torch.bool
    assert inst.gt_masks.tensor.dtype == torch.bool and inst.gt_masks.tensor.shape[1:] == (64, 64)
    assert len(inst) == len(inst.is_things) == len(inst.gt_boxes)
    assert out["class_names"] == CLASSES
    pad = torch.zeros((64, 64), dtype=torch.bool)
    pad[27:, :] = True
    pad[:, 32:] = True
    assert (out["image"][:, pad] == 128).all()
    assert (out["sem_seg"][pad] == 255).all()
    assert not inst.gt_masks.tensor[:, pad].any()  # masks pad with 0, never 255
    assert not out["groundings"]["masks"][:, pad].any()
    assert (out["sem_seg"][~pad] != 255).any()


def test_identity_geometry_keeps_every_pixel(registered):
    # 48x40 into 96 at scale 0.5: factor exactly 1, no crop, pad right/bottom
    mapper = SEEMTrainMapper(image_size=96, min_scale=0.5, max_scale=0.5, flip=False, class_names=CLASSES)
    for record in DatasetCatalog.get(registered["text"]):
        out = mapper(record)
        image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        np.testing.assert_array_equal(out["image"][:, :40, :48].permute(1, 2, 0).numpy(), image)
        sem = np.asarray(Image.open(record["sem_seg_file_name"]))
        np.testing.assert_array_equal(out["sem_seg"][:40, :48].numpy(), sem)
        ids = _ids(record)
        expected = [s for s in record["segments_info"] if not s["iscrowd"]]
        assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in expected]
        assert out["instances"].is_things.tolist() == [s["isthing"] for s in expected]
        for mask, seg in zip(out["instances"].gt_masks.tensor, expected):
            np.testing.assert_array_equal(mask[:40, :48].numpy(), ids == seg["id"])
        g = out["groundings"]
        assert g["mode"] == "text" and 1 <= len(g["texts"]) <= 4
        sentences = {
            gi["segment_id"]: [t.lower() for t in gi["sentences"]] for gi in record["grounding_info"]
        }
        for text, mask in zip(g["texts"], g["masks"]):
            owners = [
                sid
                for sid, ss in sentences.items()
                if text in ss and np.array_equal(mask[:40, :48].numpy(), ids == sid)
            ]
            assert owners, f"grounding text {text!r} does not come with its segment's mask"
        assert g["hash"] == [stable_hash(t) for t in g["texts"]]


def test_same_seed_epoch_and_image_give_the_same_output(registered):
    records = DatasetCatalog.get(registered["text"])
    a = SEEMTrainMapper(image_size=64, class_names=CLASSES, seed=3)
    b = SEEMTrainMapper(image_size=64, class_names=CLASSES, seed=3)
    state = np.random.get_state()
    np.random.seed(1)
    random.seed(1)
    first = [a(r) for r in records]
    np.random.seed(2)  # global state is never read ...
    random.seed(2)
    torch.manual_seed(2)
    for r, f in zip(records, first):
        _assert_same(b(r), f)
    np.random.set_state(state)
    state_before = np.random.get_state()[1].copy()
    a(records[0])
    np.testing.assert_array_equal(np.random.get_state()[1], state_before)  # ... nor changed
    other_epoch = [a(r, epoch=1) for r in records]
    assert any(not torch.equal(x["image"], y["image"]) for x, y in zip(first, other_epoch))
    assert all(torch.equal(a(dict(r, epoch=1))["image"], o["image"]) for r, o in zip(records, other_epoch))
    other_seed = SEEMTrainMapper(image_size=64, class_names=CLASSES, seed=4)
    assert any(not torch.equal(other_seed(r)["image"], f["image"]) for r, f in zip(records, first))


def test_same_samples_with_any_number_of_workers(registered):
    mapper = SEEMTrainMapper.from_dataset(registered["text"], image_size=48, seed=5)
    streams = {}
    for workers in (0, 2):
        loader = build_train_loader(registered["text"], mapper, total_batch_size=2, num_workers=workers)
        samples = [s for batch in itertools.islice(iter(loader), 6) for s in batch]
        streams[workers] = {(s["image_id"], s["epoch"]): s for s in samples}
    assert set(streams[0]) == set(streams[2])  # 12 samples: 3 epochs of 4 images
    assert {e for _, e in streams[0]} == {0, 1, 2}
    for key, sample in streams[0].items():
        _assert_same(sample, streams[2][key])


def test_class_mode_grounding(registered):
    mapper = SEEMTrainMapper(image_size=96, min_scale=0.5, max_scale=0.5, flip=False, class_names=CLASSES)
    seen_counts = set()
    for epoch in range(4):
        for record in DatasetCatalog.get(registered["class"]):
            out = mapper(record, epoch=epoch)
            g = out["groundings"]
            assert g["mode"] == "class"
            classes = out["instances"].gt_classes.tolist()
            masks = out["instances"].gt_masks.tensor
            picked = []
            for text, mask, h in zip(g["texts"], g["masks"], g["hash"]):
                names = [n for n in CLASSES if any(t.format(n) == text for t in CLASS_TEMPLATES)]
                assert len(names) == 1
                assert h == stable_hash(names[0])  # same class, same hash
                idx = [
                    i for i, c in enumerate(classes) if CLASSES[c] == names[0] and torch.equal(masks[i], mask)
                ]
                assert idx
                picked.append(CLASSES.index(names[0]))
            chosen = set(picked)
            assert 1 <= len(chosen) <= 4
            assert len(picked) == sum(c in chosen for c in classes)  # all masks of a chosen class
            seen_counts.add(len(chosen))
    assert len(seen_counts) > 1  # the number of classes is drawn, not fixed


def test_max_grounding_and_empty_images(tmp_path):
    ids = np.zeros((16, 16), np.int32)
    empty = make_row(
        image=np.zeros((16, 16, 3), np.uint8), panoptic_ids=ids, segments=[], image_id=0, file_name="e.png"
    )
    ds = datasets.Dataset.from_list([empty], features=contract_features(["thing", "background"]))
    name = f"empty_{uuid.uuid4().hex[:6]}"
    register(ds, name, cache_dir=tmp_path)
    try:
        out = SEEMTrainMapper(image_size=32, class_names=["thing", "background"])(DatasetCatalog.get(name)[0])
    finally:
        unregister(name)
    assert out["groundings"]["texts"] == ["none"] and out["groundings"]["masks"].shape == (0, 32, 32)
    assert len(out["instances"]) == 0 and (out["sem_seg"] == 255).all()


def test_max_grounding_caps_the_count(registered):
    mapper = SEEMTrainMapper(image_size=48, max_grounding=1, class_names=CLASSES)
    for epoch in range(3):
        for record in DatasetCatalog.get(registered["text"]):
            assert len(mapper(record, epoch=epoch)["groundings"]["texts"]) == 1


def test_flipped_samples_swap_left_and_right(registered):
    assert (
        _swap_left_right("the leftmost disc, left of the Right square")
        == "the rightmost disc, right of the Left square"
    )
    record = next(
        r
        for r in DatasetCatalog.get(registered["text"])
        if any("left" in s for g in r["grounding_info"] for s in g["sentences"])
    )
    image = np.asarray(Image.open(record["file_name"]).convert("RGB"))
    mapper = SEEMTrainMapper(
        image_size=96, min_scale=0.5, max_scale=0.5, flip=True, max_grounding=4, class_names=CLASSES
    )
    flips = 0
    for epoch in range(12):
        out = mapper(record, epoch=epoch)
        flipped = np.array_equal(out["image"][:, :40, :48].permute(1, 2, 0).numpy(), image[:, ::-1])
        flips += flipped
        originals = {s.lower() for g in record["grounding_info"] for s in g["sentences"]}
        for text in out["groundings"]["texts"]:
            assert (_swap_left_right(text) if flipped else text) in originals
    assert 0 < flips < 12


def test_mask_boxes_match_detectron2():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 20, 30), dtype=bool)
    masks[0, 3:9, 5:6] = True
    masks[1] = rng.random((20, 30)) > 0.9
    masks[2, 19, 29] = True  # masks[3] stays empty
    expected = BitMasks(torch.from_numpy(masks)).get_bounding_boxes().tensor.numpy()
    np.testing.assert_array_equal(mask_boxes(masks), expected)
    assert mask_boxes(np.zeros((0, 5, 5), dtype=bool)).shape == (0, 4)


def test_mapper_argument_errors():
    with pytest.raises(ValueError, match="min_scale"):
        SEEMTrainMapper(min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="max_grounding"):
        SEEMTrainMapper(max_grounding=0)
    with pytest.raises(TypeError, match="class_names"):
        SEEMTrainMapper(class_names="polyp")
    with pytest.raises(ValueError, match="square"):
        SEEMTestMapper(square=3)


def test_class_mode_needs_class_names(registered):
    with pytest.raises(ValueError, match="class_names"):
        SEEMTrainMapper(image_size=32)(DatasetCatalog.get(registered["class"])[0])


def test_test_mapper(registered):
    record = DatasetCatalog.get(registered["text"])[0]
    out = SEEMTestMapper(shortest_edge=80, max_size=1000)(record)
    assert out["image"].shape == (3, 80, 96) and (out["height"], out["width"]) == (40, 48)
    assert (
        out["segments_info"] == record["segments_info"]
        and out["sem_seg_file_name"] == record["sem_seg_file_name"]
    )
    capped = SEEMTestMapper(shortest_edge=80, max_size=90)(record)
    assert capped["image"].shape == (3, 75, 90)
    square = SEEMTestMapper(square=64)(record)
    assert square["image"].shape == (3, 64, 64) and (square["height"], square["width"]) == (40, 48)


def test_epoch_sampler_and_dataset():
    sampler = EpochSampler(5, seed=1)
    first = list(itertools.islice(iter(sampler), 15))
    assert first == list(itertools.islice(iter(EpochSampler(5, seed=1)), 15))
    for e in range(3):
        assert sorted(first[5 * e : 5 * e + 5]) == list(
            range(5 * e, 5 * e + 5)
        )  # each epoch is a permutation
    ranks = [list(itertools.islice(iter(EpochSampler(6, seed=1, rank=r, world_size=2)), 3)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(6))
    data = EpochDataset([{"image_id": i} for i in range(5)])
    assert data[7] == {"image_id": 2, "epoch": 1}
    assert data[7] is not data[7]  # fresh copies: workers may mutate them
