"""Visual prompts: the training shape sampler and the encoding of points/boxes/scribbles/masks onto the canvas."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from seemadapt.data.visual_prompts import (
    SHAPES,
    VisualPromptSampler,
    VisualSamplerConfig,
    as_numpy_rng,
    draw_circle,
    draw_point,
    draw_polygon,
    draw_scribble,
    smooth_closed_curve,
)
from seemadapt.model.images import batch_images, resized_size
from seemadapt.model.postprocess import resize_mask_logits
from seemadapt.model.prompts import (
    PromptGeometry,
    VisualPrompts,
    encode_boxes,
    encode_masks,
    encode_points,
    encode_prompts,
    encode_scribbles,
    group_points,
    logits_to_canvas,
    resize_to_canvas,
)

MEAN = torch.tensor([123.675, 116.280, 103.530]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.120, 57.375]).view(3, 1, 1)


def ellipse(
    height: int = 96, width: int = 80, cy: float = 48, cx: float = 40, ry: float = 35, rx: float = 25
):
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1


def ring(height: int = 96, width: int = 96) -> np.ndarray:
    """A non-convex mask: shapes must still stay inside it (the hole is background)."""
    yy, xx = np.mgrid[:height, :width]
    r2 = (yy - height / 2) ** 2 + (xx - width / 2) ** 2
    return (r2 < 40**2) & (r2 > 22**2)


# ------------------------------------------------------------------------------------------------------ sampler


@pytest.mark.parametrize("mask", [ellipse(), ring()], ids=["ellipse", "ring"])
@pytest.mark.parametrize("draw", [draw_point, draw_polygon, draw_scribble, draw_circle])
def test_every_shape_is_drawn_inside_its_mask(mask, draw):
    for seed in range(12):
        shape = draw(mask, np.random.default_rng(seed))
        assert shape.shape == mask.shape and shape.dtype == bool
        assert shape.any(), seed
        assert not (shape & ~mask).any(), seed


def test_shapes_have_their_character():
    mask = ellipse(200, 200, 100, 100, 80, 80)
    points = [int(draw_point(mask, np.random.default_rng(s)).sum()) for s in range(30)]
    assert min(points) >= 1 and max(points) <= 20 and len(set(points)) > 5
    circles = [int(draw_circle(mask, np.random.default_rng(s)).sum()) for s in range(10)]
    scribbles = [int(draw_scribble(mask, np.random.default_rng(s)).sum()) for s in range(10)]
    assert np.median(circles) > 3 * np.median(scribbles)  # thick blobs vs thin strokes


def test_smooth_closed_curve_passes_through_every_vertex():
    vertices = np.array([[10.0, 10.0], [40.0, 15.0], [35.0, 45.0], [12.0, 38.0], [25.0, 5.0]])
    curve = smooth_closed_curve(vertices)
    distances = np.linalg.norm(curve[:, None] - vertices[None], axis=-1).min(axis=0)
    assert distances.max() < 1e-9
    assert (
        np.linalg.norm(np.diff(curve, axis=0), axis=1).max() < 1.0
    )  # dense enough to rasterise without gaps
    assert np.array_equal(smooth_closed_curve(vertices[:1]), vertices[:1])


def test_sampler_picks_up_to_max_candidate_distinct_instances():
    masks = torch.from_numpy(np.stack([ellipse(64, 64, 32, 32, 20 + i % 5, 15) for i in range(15)]))
    sample = VisualPromptSampler(VisualSamplerConfig(max_candidate=10))(masks, rng=0)
    assert len(sample) == 10 and len(set(sample.indices)) == 10
    assert sample.gt_masks.shape == sample.rand_shape.shape == (10, 64, 64)
    assert sample.gt_masks.dtype == sample.rand_shape.dtype == torch.bool
    for k, index in enumerate(sample.indices):
        assert torch.equal(sample.gt_masks[k], masks[index])
        assert not (sample.rand_shape[k] & ~masks[index]).any()
    assert set(sample.types) <= set(SHAPES)


def test_shape_probabilities_are_a_quarter_each():
    masks = torch.from_numpy(np.stack([ellipse(48, 48, 24, 24, 18, 14)] * 10))
    sampler = VisualPromptSampler(VisualSamplerConfig(max_candidate=10))
    rng = np.random.default_rng(123)
    counts = Counter(t for _ in range(120) for t in sampler(masks, rng).types)
    assert sum(counts.values()) == 1200 and set(counts) == set(SHAPES)
    for shape in SHAPES:  # 300 expected, standard deviation 15
        assert abs(counts[shape] - 300) < 60, counts
    only_points = VisualPromptSampler(VisualSamplerConfig(shape_probs={"point": 1.0, "circle": 0.0}))
    assert set(only_points(masks, 0).types) == {"point"}


def test_sampler_is_deterministic_given_a_seed_or_generator():
    masks = torch.from_numpy(np.stack([ellipse(), ring(96, 80), ellipse(96, 80, 30, 30, 20, 20)]))
    sampler = VisualPromptSampler()

    def draw(rng):
        sample = sampler(masks, rng)
        return sample.rand_shape, sample.types, sample.indices

    first, again, other = draw(7), draw(7), draw(8)
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    assert not (torch.equal(first[0], other[0]) and first[1:] == other[1:])
    a = draw(torch.Generator().manual_seed(3))
    b = draw(torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    state = np.random.get_state()[1].copy()
    draw(1)
    assert np.array_equal(np.random.get_state()[1], state)  # no global numpy state used
    with pytest.raises(ValueError, match="seed or generator"):
        as_numpy_rng(None)


def test_empty_and_tiny_masks_give_empty_prompts_and_targets():
    sampler = VisualPromptSampler()
    none = sampler(torch.zeros(0, 32, 24, dtype=torch.bool), rng=0)
    assert none.types == ["none"] and none.indices == [-1]
    assert none.gt_masks.shape == none.rand_shape.shape == (1, 32, 24)
    assert not none.gt_masks.any() and not none.rand_shape.any()

    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:6, 4:8] = True  # 8 pixels < min_area 10
    masks[1, 10:30, 10:30] = True
    sample = sampler(masks, rng=0)
    by_index = dict(zip(sample.indices, range(len(sample))))
    tiny, big = by_index[0], by_index[1]
    assert sample.types[tiny] == "none"
    assert not sample.gt_masks[tiny].any() and not sample.rand_shape[tiny].any()
    assert sample.types[big] in SHAPES and sample.rand_shape[big].any()


def test_sampler_accepts_bitmasks_and_validates():
    from seemadapt.detectron2_compat import BitMasks

    masks = torch.from_numpy(np.stack([ellipse(40, 40, 20, 20, 12, 12)]))
    sample = VisualPromptSampler()(BitMasks(masks), rng=0)
    assert len(sample) == 1 and sample.rand_shape.any()
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        VisualPromptSampler()(masks[0], rng=0)
    with pytest.raises(ValueError, match="max_candidate"):
        VisualSamplerConfig(max_candidate=0)
    with pytest.raises(ValueError, match="unknown shapes"):
        VisualSamplerConfig(shape_probs={"star": 1.0})
    with pytest.raises(ValueError, match="positive sum"):
        VisualSamplerConfig(shape_probs={"point": 0.0})


# ------------------------------------------------------------------------------------------------------ encoding


def geometry_of(original: tuple[int, int], short_edge: int | None = None) -> PromptGeometry:
    """The geometry SEEM.preprocess produces (built through the same batching function)."""
    image = torch.zeros(3, *original, dtype=torch.uint8)
    batch = batch_images([image], MEAN, STD, 32, short_edge=short_edge)
    return PromptGeometry.from_batch(batch)


def test_geometry_matches_preprocessing():
    geometry = geometry_of((30, 20), short_edge=60)
    assert geometry.original_size == (30, 20)
    assert geometry.image_size == resized_size((30, 20), 60, None) == (90, 60)
    assert geometry.padded_size == (96, 64)
    assert geometry.scale == (3.0, 3.0)
    valid = geometry.valid_area()
    assert valid[:90, :60].all() and not valid[90:].any() and not valid[:, 60:].any()
    with pytest.raises(ValueError, match="fit"):
        PromptGeometry((10, 10), (40, 10), (32, 32))


def test_points_land_on_the_scaled_pixel_and_group():
    geometry = geometry_of((30, 20), short_edge=60)  # x3, padded to 96x64
    prompts = encode_points([(5, 7), (12, 20, 0)], geometry, point_size=3)
    assert len(prompts) == 1 and prompts.kinds == ["point"]
    assert prompts.positive.shape == (1, 96, 64)
    # pixel (x=5, y=7) covers canvas rows 21..23, cols 15..17; its centre is canvas (22.5, 16.5) -> pixel (22, 16)
    expected = torch.zeros(96, 64, dtype=torch.bool)
    expected[21:24, 15:18] = True
    assert torch.equal(prompts.positive[0], expected)
    expected = torch.zeros(96, 64, dtype=torch.bool)
    expected[60:63, 36:39] = True  # (x=12, y=20) -> centre pixel (61, 37)
    assert torch.equal(prompts.negative[0], expected)

    groups = encode_points([[(0, 0)], [(19, 29), (3, 3, 0)]], geometry, point_size=1)
    assert len(groups) == 2
    assert groups.positive[0].nonzero().tolist() == [[1, 1]]
    assert groups.positive[1].nonzero().tolist() == [[88, 58]]  # clipped to the image, never the padding
    assert groups.negative[1].nonzero().tolist() == [[10, 10]]
    assert not groups.negative[0].any()


def test_point_grouping_rules_and_errors():
    assert group_points([(1, 2), (3, 4, 0)]) == [[(1.0, 2.0, 1), (3.0, 4.0, 0)]]
    assert group_points([[(1, 2)], [(3, 4, 0), (5, 6)]]) == [[(1.0, 2.0, 1)], [(3.0, 4.0, 0), (5.0, 6.0, 1)]]
    assert group_points(np.array([[1, 2, 1], [3, 4, 0]])) == [[(1.0, 2.0, 1), (3.0, 4.0, 0)]]
    assert group_points([[], [(1, 2)]]) == [[], [(1.0, 2.0, 1)]]
    geometry = geometry_of((30, 20))
    with pytest.raises(ValueError, match="no positive point"):
        encode_points([(1, 2, 0)], geometry)
    assert encode_points([(1, 2, 0)], geometry, require_positive=False).negative.any()
    with pytest.raises(ValueError, match="outside"):
        encode_points([(25, 2)], geometry)  # x beyond the width (x, y order)
    with pytest.raises(ValueError, match="labels"):
        encode_points([(1, 2, 2)], geometry)


def test_boxes_cover_exactly_the_scaled_box():
    geometry = geometry_of((30, 20), short_edge=60)
    prompts = encode_boxes([[2, 3, 6, 9]], geometry)  # original columns 2..5, rows 3..8
    original = torch.zeros(1, 30, 20, dtype=torch.bool)
    original[0, 3:9, 2:6] = True
    upscaled = original.repeat_interleave(3, 1).repeat_interleave(3, 2)
    assert torch.equal(prompts.positive[0, :90, :60], upscaled[0])
    assert not prompts.positive[0, 90:].any() and not prompts.positive[0, :, 60:].any()
    assert not prompts.negative.any() and prompts.kinds == ["box"]
    thin = encode_boxes([5.2, 5.2, 5.3, 5.3], geometry_of((30, 20), short_edge=None))
    assert thin.positive[0].sum() == 1  # thinner than a pixel: the pixel at its centre
    with pytest.raises(ValueError, match="x1 > x0"):
        encode_boxes([5, 5, 2, 9], geometry)
    with pytest.raises(ValueError, match="outside"):
        encode_boxes([25, 3, 30, 9], geometry)


def test_scribble_polylines_and_masks():
    geometry = geometry_of((30, 20))  # no resize, padded to 32x32
    prompts = encode_scribbles([[(2, 5), (10, 5)], [(4, 4)]], geometry, width=1)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[5, 2:11] = True
    assert torch.equal(prompts.positive[0], expected)
    assert prompts.positive[1].nonzero().tolist() == [[4, 4]]
    assert prompts.kinds == ["scribble", "scribble"]

    big = PromptGeometry((100, 100), (50, 50), (64, 64))  # downscale by 2
    line = torch.zeros(100, 100, dtype=torch.bool)
    line[37, 10:90] = True  # one pixel thick
    canvas = encode_scribbles(line, big).positive[0]
    assert canvas[:50, 5:45].any(dim=0).all()  # the thin stroke survives downscaling, unbroken
    assert not canvas[50:].any() and not canvas[:, 50:].any()
    with pytest.raises(ValueError, match="polyline"):
        encode_scribbles([[1, 2, 3]], geometry)


def test_mask_prompts_resize_by_majority_and_keep_tiny_masks():
    geometry = PromptGeometry((40, 40), (20, 20), (32, 32))
    mask = torch.zeros(2, 40, 40, dtype=torch.bool)
    mask[0, 10:30, 10:30] = True
    mask[1, 3, 3] = True  # one pixel: majority would erase it
    prompts = encode_masks(mask, geometry)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[5:15, 5:15] = True
    assert torch.equal(prompts.positive[0], expected)
    assert prompts.positive[1].sum() == 1 and prompts.positive[1, 1, 1]
    same = resize_to_canvas(mask, PromptGeometry((40, 40), (40, 40), (64, 64)))
    assert torch.equal(same[:, :40, :40], mask) and not same[:, 40:].any()
    with pytest.raises(ValueError, match="image size"):
        encode_masks(torch.ones(10, 10, dtype=torch.bool), geometry)


def test_encode_prompts_orders_kinds_and_rejects_empty_prompts():
    geometry = geometry_of((30, 20))
    mask = torch.zeros(30, 20, dtype=torch.bool)
    mask[5:10, 5:10] = True
    prompts = encode_prompts(
        geometry, points=[[(1, 1)], [(3, 3)]], boxes=[0, 0, 4, 4], scribbles=[[(0, 0), (5, 5)]], mask=mask
    )
    assert prompts.kinds == ["point", "point", "box", "scribble", "mask"]
    assert prompts.positive.shape == (5, 32, 32)
    assert prompts.decoder_inputs()["pos_masks"][0] is prompts.positive
    with pytest.raises(ValueError, match="mark no pixel"):
        encode_prompts(geometry, mask=torch.zeros(30, 20, dtype=torch.bool))


def test_merged_adds_clicks_prompt_by_prompt():
    geometry = geometry_of((30, 20))
    prompts = encode_points([[(1, 1)], [(10, 10)]], geometry, point_size=1)
    clicks = encode_points([[], [(5, 5, 0)]], geometry, point_size=1, require_positive=False)
    merged = prompts.merged(clicks)
    assert torch.equal(merged.positive, prompts.positive)
    assert merged.negative[1].nonzero().tolist() == [[5, 5]] and not merged.negative[0].any()
    with pytest.raises(ValueError, match="one group per prompt"):
        prompts.merged(encode_points([(5, 5)], geometry))
    with pytest.raises(ValueError, match="same shape"):
        VisualPrompts(torch.zeros(1, 4, 4), torch.zeros(2, 4, 4))


def test_logits_to_canvas_inverts_the_output_resize():
    geometry = PromptGeometry((30, 20), (60, 40), (64, 64))
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    decoder_logits = (5.0 - ((yy - 6) ** 2 + (xx - 5) ** 2).sqrt())[None]  # a disc of radius 5 at stride 4
    decoder_logits[:, 15:, :] = -8.0  # the padding rows
    original = resize_mask_logits(decoder_logits, (64, 64), (60, 40), (30, 20))
    back = logits_to_canvas(original, geometry, (16, 16))
    assert back.shape == (1, 16, 16)
    inside = (slice(0, 14), slice(0, 9))  # the decoder cells fully inside the image
    torch.testing.assert_close(
        back[0][inside], decoder_logits[0][inside], atol=0.5, rtol=0
    )  # resampling blur
    assert (back[0, 4:9, 3:8] > 0).all()  # the disc's core is on
    assert (back[0, :, 11:] < -100).all()  # the padding columns are off
    with pytest.raises(ValueError, match="image size"):
        logits_to_canvas(torch.zeros(1, 16, 16), geometry)
