"""SEEM post-processing on hand-made tensors: resize path, semantic einsum, panoptic rules, instances, grounding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seemadapt.model.postprocess import (
    ARGMAX_COPY_ROWS,
    BAND_ROWS,
    argmax_first_dim,
    band_blocks,
    instance_inference,
    match_grounding,
    panoptic_inference,
    resize_mask_logits,
    resize_matrix,
    semantic_inference,
    sigmoid_with_mask_stats,
)
from seemadapt.model.predictor import PostprocessOptions, postprocess_image

BIG = 30.0  # sigmoid(+-30) is 1 or 0 up to 1e-13


def class_logits(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (each row sums to 1)."""
    probs = torch.tensor(rows, dtype=torch.float64)
    assert torch.allclose(probs.sum(-1), torch.ones(len(rows), dtype=torch.float64))
    return probs.log().float()


def region(height: int, width: int, rows: slice, cols: slice, inside: float = BIG) -> torch.Tensor:
    mask = torch.full((height, width), -BIG)
    mask[rows, cols] = inside
    return mask


# ------------------------------------------------------------------------------------------------ resize


def test_resize_crops_padding_and_scales_to_output_size():
    # Logits already at the padded size (16x16, so the bilinear step is the identity); the image is the top-left
    # 12x8 block; its left half (4 columns) is positive. After the crop and a 2x resize the boundary sits at col 8.
    logits = torch.full((1, 16, 16), -5.0)
    logits[:, :, :4] = 5.0
    logits[:, 12:, :] = 100.0  # padding rows: must be cropped away
    out = resize_mask_logits(logits, padded_size=(16, 16), image_size=(12, 8), output_size=(24, 16))
    assert out.shape == (1, 24, 16)
    assert (out[:, :, :7] > 0).all() and (out[:, :, 9:] < 0).all()
    assert out.max() < 6.0  # nothing from the padding rows leaked in


def test_resize_upsamples_from_stride_four_and_keeps_constants():
    logits = torch.full((2, 4, 4), 3.0)
    logits[1] = -2.0
    out = resize_mask_logits(logits, padded_size=(16, 16), image_size=(13, 10), output_size=(40, 31))
    assert out.shape == (2, 40, 31)
    torch.testing.assert_close(out[0], torch.full((40, 31), 3.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.full((40, 31), -2.0), atol=1e-5, rtol=0)


def test_resize_downsampling_is_antialiased():
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0  # +-1 checkerboard
    out = resize_mask_logits(checker[None], padded_size=(32, 32), image_size=(32, 32), output_size=(8, 8))
    assert out.abs().max() < 0.3  # averaged away; a plain bicubic resize would keep +-1 values


def interpolate_chain(logits, padded_size, image_size, output_size):
    """SEEM's resize as ``F.interpolate`` calls: what :func:`resize_mask_logits` composes into two matrices."""
    x = F.interpolate(logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[..., : image_size[0], : image_size[1]]
    if output_size != image_size:
        x = F.interpolate(x, size=output_size, mode="bicubic", align_corners=False, antialias=True)
    return x[0]


def disc_logits(shape, scale):
    """Hand-made: a disc of positive logits with a sharp rim, values in [-scale, scale]."""
    yy, xx = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    radius = ((yy - shape[0] / 3) ** 2 + (xx - shape[1] / 2) ** 2).sqrt()
    return (scale * torch.tanh(3.0 - radius))[None]


@pytest.mark.parametrize(
    ("shape", "padded", "image", "output"),
    [
        ((88, 64), (352, 256), (341, 256), (640, 480)),  # the benchmark's 480x640 images at short edge 256
        ((9, 7), (36, 28), (33, 25), (61, 47)),  # odd sizes
        ((16, 16), (64, 64), (60, 40), (30, 20)),  # downscaling (antialiased)
        ((32, 32), (128, 128), (128, 96), (37, 29)),  # stronger downscaling
        ((8, 12), (32, 48), (32, 45), (32, 45)),  # output = image size: no bicubic step
        ((5, 6), (20, 24), (17, 24), (17, 50)),  # one axis unchanged
    ],
)
@pytest.mark.parametrize("column_major", [False, True])
def test_resize_equals_the_interpolate_chain_up_to_rounding(shape, padded, image, output, column_major):
    generator = torch.Generator().manual_seed(0)
    realistic = 5 * torch.randn(6, *shape, generator=generator)  # |logit| up to about 20
    for logits in (realistic, disc_logits(shape, 10.0)):
        torch.testing.assert_close(
            resize_mask_logits(logits, padded, image, output, column_major=column_major),
            interpolate_chain(logits, padded, image, output),
            atol=1e-5,
            rtol=0,
        )
    large = 100 * torch.randn(3, *shape, generator=generator)  # a few float32 ulps of the largest value
    expected = interpolate_chain(large, padded, image, output)
    got = resize_mask_logits(large, padded, image, output, column_major=column_major)
    torch.testing.assert_close(got, expected, atol=4e-7 * float(expected.abs().max()), rtol=0)
    # column-major: each mask's storage runs down the columns (COCO RLE's order); row-major: along the rows
    assert got.is_contiguous() != column_major and got.transpose(1, 2).is_contiguous() == column_major


@pytest.mark.parametrize(
    "axis",
    [
        (88, 352, 341, 640, True),  # the benchmark's height: upscaled 1.9x
        (64, 256, 256, 480, True),
        (32, 128, 96, 29, True),  # downscaled with antialiasing: wide bands
        (12, 48, 45, 45, False),  # no bicubic step
        (300, 1200, 1200, 2000, True),  # many blocks
    ],
)
def test_band_blocks_tile_the_rows_and_hold_every_weight(axis):
    matrix = resize_matrix(*axis, torch.device("cpu"))
    blocks = band_blocks(*axis)
    assert [b[0] for b in blocks] == list(range(0, len(matrix), BAND_ROWS))
    assert [b[1] for b in blocks] == [*[b[0] for b in blocks[1:]], len(matrix)]
    for start, stop, first, last in blocks:
        block = matrix[start:stop]
        outside = torch.cat([block[:, :first], block[:, last:]], dim=1)
        assert (outside == 0).all()  # the skipped columns hold no weight
        assert block[:, first].any() and block[:, last - 1].any()  # and the window is no wider than needed
    if len(blocks) >= 4 and axis[3] > 2 * axis[0]:  # upscaled in several blocks: most of the work is skipped
        assert sum((b[1] - b[0]) * (b[3] - b[2]) for b in blocks) < 0.5 * matrix.numel()


@pytest.mark.parametrize("column_major", [False, True])
def test_banded_resize_equals_the_dense_composed_product(column_major):
    generator = torch.Generator().manual_seed(6)
    logits = 5 * torch.randn(5, 88, 64, generator=generator)
    rows = resize_matrix(88, 352, 341, 640, True, torch.device("cpu")).double()
    cols = resize_matrix(64, 256, 256, 480, True, torch.device("cpu")).double()
    dense = rows @ logits.double() @ cols.t()  # float64: the composed product without float32 rounding
    got = resize_mask_logits(logits, (352, 256), (341, 256), (640, 480), column_major=column_major)
    torch.testing.assert_close(got.double(), dense, atol=2e-6 * float(dense.abs().max()), rtol=0)


@pytest.mark.parametrize("column_major", [False, True])
# both product orders of _resize_rows_cols
@pytest.mark.parametrize(("shape", "output"), [((9, 7), (61, 47)), ((8, 12), (17, 50))])
def test_resize_into_a_workspace_writes_the_same_values_into_its_storage(shape, output, column_major):
    generator = torch.Generator().manual_seed(4)
    logits = 5 * torch.randn(6, *shape, generator=generator)
    padded, image = (shape[0] * 4, shape[1] * 4), (shape[0] * 4 - 3, shape[1] * 4)
    # larger than needed: a prefix is used, the rest left alone
    workspace = torch.full((6 * output[0] * output[1] + 11,), float("nan"))
    expected = resize_mask_logits(logits, padded, image, output, column_major=column_major)
    got = resize_mask_logits(logits, padded, image, output, column_major=column_major, workspace=workspace)
    assert torch.equal(got, expected) and got.stride() == expected.stride()
    assert got.data_ptr() == workspace.data_ptr() and workspace[-11:].isnan().all()
    for bad in (torch.empty(10), torch.empty(6 * output[0] * output[1], dtype=torch.float64)):
        with pytest.raises(ValueError, match="workspace must be a contiguous float32 tensor"):
            resize_mask_logits(logits, padded, image, output, workspace=bad)


# ------------------------------------------------------------------------------------------------ semantic


def test_semantic_is_class_probability_times_mask_probability_summed_over_queries():
    logits = class_logits([0.7, 0.2, 0.1], [0.1, 0.6, 0.3])
    masks = torch.stack([torch.zeros(3, 4), region(3, 4, slice(None), slice(0, 1))])  # q0: p=0.5 everywhere
    sem = semantic_inference(logits, masks)
    assert sem.shape == (2, 3, 4)
    # left column: q1 mask is 1; elsewhere 0
    torch.testing.assert_close(sem[0, :, 0], torch.full((3,), 0.7 * 0.5 + 0.1), atol=1e-6, rtol=0)
    torch.testing.assert_close(sem[0, :, 1:], torch.full((3, 3), 0.7 * 0.5), atol=1e-6, rtol=0)
    torch.testing.assert_close(sem[1, :, 0], torch.full((3,), 0.2 * 0.5 + 0.6), atol=1e-6, rtol=0)
    torch.testing.assert_close(sem[1, :, 1:], torch.full((3, 3), 0.2 * 0.5), atol=1e-6, rtol=0)


def test_semantic_rejects_mismatched_queries():
    with pytest.raises(ValueError, match="same Q"):
        semantic_inference(torch.zeros(3, 3), torch.zeros(2, 4, 4))


# ------------------------------------------------------------------------------------------------ panoptic


def test_panoptic_drops_queries_at_or_below_the_object_threshold():
    logits = class_logits([0.79, 0.11, 0.10], [0.81, 0.09, 0.10])
    masks = torch.stack([region(4, 8, slice(None), slice(0, 4)), region(4, 8, slice(None), slice(4, 8))])
    seg, info = panoptic_inference(logits, masks, thing_ids={0, 1})
    assert seg.dtype == torch.int32 and seg.shape == (4, 8)
    assert [s["category_id"] for s in info] == [0]
    assert info[0]["score"] == pytest.approx(0.81, abs=1e-5)
    assert (seg[:, :4] == 0).all() and (seg[:, 4:] == info[0]["id"]).all()
    assert info[0]["area"] == 16
    seg_low, info_low = panoptic_inference(logits, masks, thing_ids={0, 1}, object_mask_threshold=0.5)
    assert len(info_low) == 2 and (seg_low > 0).all()


def test_panoptic_drops_background_queries():
    logits = class_logits([0.02, 0.03, 0.95])
    seg, info = panoptic_inference(
        logits, region(4, 4, slice(None), slice(None))[None], object_mask_threshold=0.0
    )
    assert info == [] and (seg == 0).all()


def test_panoptic_overlap_rule_drops_a_query_that_loses_most_of_its_mask():
    # q0 (score 0.90) covers the whole 10-column image; q1 (score 0.95) covers the left 7 columns and wins them.
    logits = class_logits([0.90, 0.05, 0.05], [0.04, 0.95, 0.01])
    masks = torch.stack([region(5, 10, slice(None), slice(None)), region(5, 10, slice(None), slice(0, 7))])
    seg, info = panoptic_inference(logits, masks, thing_ids={0, 1})
    assert [s["category_id"] for s in info] == [1]  # q0 keeps 3/10 of its mask < 0.8
    assert (seg[:, 7:] == 0).all() and (seg[:, :7] == info[0]["id"]).all()
    seg, info = panoptic_inference(logits, masks, thing_ids={0, 1}, overlap_threshold=0.25)
    by_class = {s["category_id"]: s for s in info}
    assert set(by_class) == {0, 1}
    assert (seg[:, 7:] == by_class[0]["id"]).all() and by_class[0]["area"] == 15


def test_panoptic_counts_only_pixels_where_the_query_mask_is_on():
    # q0 wins the argmax everywhere (the only query) but its mask is >= 0.5 only on the left half.
    logits = class_logits([0.9, 0.05, 0.05])
    seg, info = panoptic_inference(logits, region(4, 8, slice(None), slice(0, 4))[None])
    assert len(info) == 1 and (seg[:, :4] == 1).all() and (seg[:, 4:] == 0).all()


def test_panoptic_merges_stuff_per_class_and_keeps_thing_instances_apart():
    # class 0 = thing, class 1 = stuff. Two stuff queries (top / bottom half), two thing queries (two squares).
    logits = class_logits([0.05, 0.9, 0.05], [0.05, 0.85, 0.1], [0.95, 0.03, 0.02], [0.93, 0.05, 0.02])
    masks = torch.stack(
        [
            region(8, 8, slice(0, 4), slice(None)),
            region(8, 8, slice(4, 8), slice(None)),
            region(8, 8, slice(1, 3), slice(1, 3)),
            region(8, 8, slice(5, 7), slice(5, 7)),
        ]
    )
    seg, info = panoptic_inference(logits, masks, thing_ids={0})
    stuff = [s for s in info if not s["isthing"]]
    things = [s for s in info if s["isthing"]]
    assert len(stuff) == 1 and stuff[0]["category_id"] == 1
    assert len(things) == 2 and {s["category_id"] for s in things} == {0}
    assert stuff[0]["area"] == 64 - 8 and all(s["area"] == 4 for s in things)
    assert sorted(s["id"] for s in info) == [1, 2, 3]
    assert set(torch.unique(seg).tolist()) == {1, 2, 3}
    # Without a thing list every class is a thing: the two stuff halves become two segments.
    _, info_all_things = panoptic_inference(logits, masks, thing_ids=None)
    assert len(info_all_things) == 4 and all(s["isthing"] for s in info_all_things)


# ------------------------------------------------------------------------------------------------ instance


def test_instance_top_k_pairs_scores_and_thing_filter():
    logits = class_logits([0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8])
    masks = torch.stack(
        [
            region(4, 4, slice(0, 2), slice(None), inside=2.0),
            region(4, 4, slice(2, 4), slice(None), inside=BIG),
            torch.full((4, 4), -1.0),  # empty mask
        ]
    )
    out = instance_inference(logits, masks, top_k=2)
    # best pairs: (q1, class 1) 0.7 and (q0, class 0) 0.6
    assert out["labels"].tolist() == [1, 0]
    assert out["masks"].dtype == torch.bool and out["masks"].shape == (2, 4, 4)
    assert out["masks"][0, 2:].all() and not out["masks"][0, :2].any()
    sig2 = 1 / (1 + math.exp(-2.0))
    assert out["scores"].tolist() == pytest.approx([0.7 * 1.0, 0.6 * sig2], abs=1e-5)
    only_class0 = instance_inference(logits, masks, thing_ids={0}, top_k=6)
    assert set(only_class0["labels"].tolist()) == {0}
    assert len(only_class0["labels"]) == 3  # every query paired with class 0
    assert only_class0["scores"].min() == 0  # the empty mask scores 0


def test_instance_pairs_are_identical_whether_few_or_most_queries_are_used():
    # top_k=2 uses at most 2 of 12 queries (their masks are copied out); every pair uses all 12 (scored in place).
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator) * 3
    masks = torch.randn(12, 9, 7, generator=generator) * 4
    _, stats = sigmoid_with_mask_stats(masks.clone())
    few = instance_inference(logits, masks, top_k=2)
    every = instance_inference(logits, masks, top_k=12 * 3, stats=stats)
    assert torch.equal(every["scores"], instance_inference(logits, masks, top_k=12 * 3)["scores"])
    for mask, score, label in zip(few["masks"], few["scores"], few["labels"]):
        same = (every["labels"] == label) & (every["scores"] == score)
        assert any(torch.equal(mask, other) for other in every["masks"][same])


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 9 * 7 * 4, 5 * 9 * 7 * 4 - 1, None])  # 1 query, 3, 4, all
def test_sigmoid_with_mask_stats_is_each_query_alone_in_any_chunking(chunk_bytes):
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 9, 7, generator=generator) * 4
    logits[2] = -1.0  # an empty mask
    logits[0, 0, 0] = 0.0  # exactly on the threshold: outside
    logits[0, 0, 1] = 1e-30  # sigmoid 0.5 exactly, yet inside (the logit decides, not the probability)
    given = logits.clone()
    probs, stats = sigmoid_with_mask_stats(given, chunk_bytes)
    assert probs.data_ptr() == given.data_ptr()  # in place
    # torch's vectorised sigmoid and its scalar tail may differ in the last bit where a chunk ends
    torch.testing.assert_close(probs, logits.sigmoid(), rtol=0, atol=6e-8)
    assert torch.equal(stats.masks, logits > 0) and stats.masks[0, 0, 1] and not stats.masks[0, 0, 0]
    for q in range(len(logits)):
        inside = stats.masks[q]
        assert stats.areas[q] == inside.sum()
        assert stats.inside_sums[q] == (probs[q] * inside).sum()  # the same float32 sum as the query's alone
    assert stats.mask_scores()[2] == 0 and stats.mask_scores()[1] == pytest.approx(
        (logits[1].sigmoid() * (logits[1] > 0)).sum().item() / (logits[1] > 0).sum().item(), rel=1e-6
    )


def test_sigmoid_with_mask_stats_converts_other_dtypes_and_layouts():
    logits = torch.randn(3, 5, 4, dtype=torch.float64)
    probs, stats = sigmoid_with_mask_stats(logits.transpose(1, 2))
    assert probs.dtype == torch.float32 and probs.is_contiguous()
    torch.testing.assert_close(probs, logits.transpose(1, 2).float().sigmoid(), rtol=0, atol=6e-8)
    assert torch.equal(stats.masks, logits.transpose(1, 2) > 0)
    with pytest.raises(ValueError, match=r"\[Q, H, W\]"):
        sigmoid_with_mask_stats(torch.zeros(4, 5))


@pytest.mark.parametrize("top_k", [2, 36])  # few queries used (copied out) / all of them (scored in place)
def test_postprocess_image_in_place_equals_each_task_on_the_logits(top_k):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 4, generator=generator) * 3
    logits[:3, 0] = 9.0  # a few confident queries, so that panoptic keeps some
    masks = torch.randn(12, 9, 7, generator=generator) * 4
    masks[0, 0, 0] = 0.0  # exactly on the instance threshold
    options = PostprocessOptions(
        tasks=("instance", "semantic", "panoptic"), things={0}, object_threshold=0.5, overlap=0.3, top_k=top_k
    )
    out = postprocess_image(logits, masks.clone(), options)
    semantic = semantic_inference(logits, masks)
    assert torch.equal(out["semantic"]["sem_seg"], semantic)
    assert torch.equal(out["semantic"]["labels"], semantic.argmax(dim=0))
    seg, segments = panoptic_inference(logits, masks, {0}, 0.5, 0.3)
    assert segments and torch.equal(out["panoptic"]["panoptic_seg"], seg)
    assert out["panoptic"]["segments_info"] == segments
    instances = instance_inference(logits, masks, {0}, top_k)
    for key, value in instances.items():
        assert torch.equal(out["instance"][key], value), key


def test_postprocess_image_of_column_major_masks_is_the_transposed_image_transposed_back():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(12, 4, generator=generator) * 3
    logits[:3, 0] = 9.0
    stored = (
        torch.randn(12, 7, 9, generator=generator) * 4
    )  # [Q, W, H] storage of [Q, H, W] = [12, 9, 7] masks
    options = PostprocessOptions(
        tasks=("instance", "semantic", "panoptic"), things={0}, object_threshold=0.5, overlap=0.3, top_k=36
    )
    out = postprocess_image(logits, stored.clone().transpose(1, 2), options)
    of_transposed = postprocess_image(logits, stored.clone(), options)  # the same image, transposed
    assert torch.equal(out["semantic"]["sem_seg"], of_transposed["semantic"]["sem_seg"].transpose(1, 2))
    assert torch.equal(out["semantic"]["labels"], of_transposed["semantic"]["labels"].t())
    assert out["semantic"]["labels"].is_contiguous() and out["panoptic"]["panoptic_seg"].is_contiguous()
    assert (
        out["panoptic"]["segments_info"]
        and out["panoptic"]["segments_info"] == of_transposed["panoptic"]["segments_info"]
    )
    assert torch.equal(out["panoptic"]["panoptic_seg"], of_transposed["panoptic"]["panoptic_seg"].t())
    masks = out["instance"]["masks"]
    assert masks.shape[1:] == (9, 7) and masks.transpose(1, 2).is_contiguous()  # RLE-ready, no copy
    assert torch.equal(masks, of_transposed["instance"]["masks"].transpose(1, 2))
    # and the same results as the row-major masks, up to the order of the mask-score sums
    row_major = postprocess_image(logits, stored.transpose(1, 2).contiguous(), options)
    assert torch.equal(out["semantic"]["labels"], row_major["semantic"]["labels"])
    assert torch.equal(out["panoptic"]["panoptic_seg"], row_major["panoptic"]["panoptic_seg"])
    torch.testing.assert_close(out["instance"]["scores"], row_major["instance"]["scores"], rtol=1e-6, atol=0)
    assert torch.equal(masks, row_major["instance"]["masks"])


@pytest.mark.parametrize("rows", [1, 3, ARGMAX_COPY_ROWS, ARGMAX_COPY_ROWS + 1])
def test_argmax_first_dim_is_torch_argmax_with_ties_and_nan(rows):
    x = torch.randint(0, 3, (rows, 6, 5)).float()  # many ties
    x[-1, 0, 0] = float("nan")
    assert torch.equal(argmax_first_dim(x), x.argmax(dim=0))


# ------------------------------------------------------------------------------------------------ grounding


def test_match_grounding_picks_the_most_similar_query_per_text():
    captions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[0.0, 2.0], [3.0, 0.1]])
    indices, confidence = match_grounding(captions, texts, logit_scale=math.log(50.0))
    assert indices.tolist() == [1, 0]
    assert ((confidence > 0.5) & (confidence <= 1.0)).all()
