"""Categories and label map -> panoptic / semantic / grounding, on hand-made label maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from panopticapi.utils import rgb2id

from diffsynth.annotate import IGNORE_INDEX, annotate, min_area_pixels, tokenize
from diffsynth.categories import Category, resolve_categories

MOLD, WALL, PIPE, BG = 0, 1, 2, 3


@pytest.fixture
def cats():
    return resolve_categories(["mold", Category("wall", isthing=False), "pipe"])


def _by_category(ann, cat):
    return [s for s in ann.segments_info if s["category_id"] == cat]


# ------------------------------------------------------------------------------------------------- categories
def test_resolve_appends_background_stuff_last_with_distinct_deterministic_colours():
    cats = resolve_categories(["mold", "stain", Category("wall", isthing=False)])
    assert [c.name for c in cats] == ["mold", "stain", "wall", "background"]
    assert cats[-1].isthing is False and cats[0].isthing is True
    colors = [c.color for c in cats]
    assert len(set(colors)) == len(colors) and (0, 0, 0) not in colors
    assert colors == [c.color for c in resolve_categories(["mold", "stain", Category("wall", isthing=False)])]
    assert [c.name for c in resolve_categories(["mold"], background=None)] == ["mold"]
    assert resolve_categories(["a"], background="floor")[-1].name == "floor"


def test_resolve_keeps_given_colours_and_avoids_them():
    cats = resolve_categories([Category("mold", color=(10, 200, 30)), "stain"])
    assert cats[0].color == (10, 200, 30)
    assert cats[1].color not in (cats[0].color, (0, 0, 0))


@pytest.mark.parametrize(
    ("classes", "background", "field"),
    [
        ([], "background", "classes"),
        (["mold", "Mold"], "background", "classes"),
        (["mold", ""], "background", "classes"),
        (["background"], "background", "background"),
        ([Category("a", color=(1, 2, 3)), Category("b", color=(1, 2, 3))], "background", "color"),
    ],
)
def test_resolve_errors_name_the_field(classes, background, field):
    with pytest.raises(ValueError, match=field):
        resolve_categories(classes, background=background)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "  "}, "name"),
        ({"name": "a", "color": (0, 0, 0)}, "color"),
        ({"name": "a", "color": (1, 2)}, "color"),
        ({"name": "a", "color": (1, 2, 300)}, "color"),
        ({"name": "a", "synonyms": ("",)}, "synonyms"),
    ],
)
def test_category_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Category(**kwargs)


def test_category_dict_round_trip():
    c = Category("broken pipe", color=(1, 2, 3), synonyms=("leak",), prompt_words=("pipe",))
    assert Category.from_dict(c.to_dict()) == c
    assert c.aliases == ("broken pipe", "leak", "pipe")


# --------------------------------------------------------------------------------------------------- annotate
def test_two_thing_blobs_become_two_segments_with_exact_boxes_and_areas(cats):
    lm = np.full((40, 60), BG, np.uint8)
    lm[5:15, 4:12] = MOLD  # rows 5..14, cols 4..11: 10 x 8
    lm[20:23, 30:50] = MOLD  # rows 20..22, cols 30..49: 3 x 20
    ann = annotate(lm, cats, image_id=1, min_area=1)
    molds = sorted(_by_category(ann, MOLD), key=lambda s: s["bbox"][0])
    assert [s["bbox"] for s in molds] == [[4.0, 5.0, 8.0, 10.0], [30.0, 20.0, 20.0, 3.0]]
    assert [s["area"] for s in molds] == [80, 60]
    assert all(s["isthing"] and s["iscrowd"] == 0 for s in molds)
    ids = rgb2id(ann.panoptic)
    for s in molds:
        x, y, w, h = (int(v) for v in s["bbox"])
        region = np.zeros_like(lm, dtype=bool)
        region[y : y + h, x : x + w] = True
        assert np.array_equal(ids == s["id"], region)
    assert len({s["id"] for s in ann.segments_info}) == len(ann.segments_info)
    assert 0 not in {s["id"] for s in ann.segments_info}


def test_stuff_regions_merge_into_one_segment_with_category_colour_id(cats):
    lm = np.full((30, 30), BG, np.uint8)
    lm[0:5, 0:5] = WALL
    lm[20:30, 25:30] = WALL
    ann = annotate(lm, cats, image_id=1, min_area=1)
    walls = _by_category(ann, WALL)
    assert len(walls) == 1
    assert walls[0]["area"] == 25 + 50 and walls[0]["bbox"] == [0.0, 0.0, 30.0, 30.0]
    assert walls[0]["isthing"] is False
    assert walls[0]["id"] == rgb2id(cats[WALL].color)
    assert len(_by_category(ann, BG)) == 1


def test_specks_dropped_to_void_and_ignore_stays_ignored(cats):
    lm = np.full((32, 32), BG, np.uint8)
    lm[10:20, 10:20] = PIPE
    lm[0:2, 0:2] = PIPE  # 4 px speck
    lm[30:32, 0:32] = IGNORE_INDEX
    ann = annotate(lm, cats, image_id=7, min_area=5)
    pipes = _by_category(ann, PIPE)
    assert len(pipes) == 1 and pipes[0]["area"] == 100
    ids = rgb2id(ann.panoptic)
    assert (ids[0:2, 0:2] == 0).all() and (ann.semantic[0:2, 0:2] == IGNORE_INDEX).all()
    assert (ids[30:, :] == 0).all() and (ann.semantic[30:, :] == IGNORE_INDEX).all()
    assert (ann.semantic[10:20, 10:20] == PIPE).all()
    assert (ann.semantic[5, 25] == BG) and ids[5, 25] != 0
    # Every labelled pixel is exactly one listed segment, with the listed area.
    listed = {s["id"]: s["area"] for s in ann.segments_info}
    present, counts = np.unique(ids[ids != 0], return_counts=True)
    assert dict(zip(present.tolist(), counts.tolist())) == listed


def test_first_instance_takes_category_colour_others_are_jittered_within_30(cats):
    lm = np.full((20, 60), BG, np.uint8)
    for x in (2, 22, 42):
        lm[5:10, x : x + 5] = MOLD
    ann = annotate(lm, cats, image_id=3, min_area=1)
    molds = _by_category(ann, MOLD)
    assert molds[0]["id"] == rgb2id(cats[MOLD].color)
    for s in molds[1:]:
        rgb = np.array([s["id"] % 256, s["id"] // 256 % 256, s["id"] // 65536])
        assert np.abs(rgb - np.array(cats[MOLD].color)).max() <= 30


def test_deterministic_for_same_seed(cats):
    lm = np.full((20, 60), BG, np.uint8)
    for x in (2, 22, 42):
        lm[5:10, x : x + 5] = MOLD
    a = annotate(lm, cats, image_id=3, min_area=1)
    b = annotate(lm, cats, image_id=3, min_area=1)
    assert a.segments_info == b.segments_info and np.array_equal(a.panoptic, b.panoptic)
    assert a.grounding == b.grounding
    ids = {
        tuple(s["id"] for s in annotate(lm, cats, image_id=3, rng_seed=seed, min_area=1).segments_info)
        for seed in range(5)
    }
    assert len(ids) > 1  # the seed drives the instance jitter


def test_eight_connectivity_joins_diagonal_pixels_four_splits(cats):
    lm = np.full((10, 10), BG, np.uint8)
    lm[2, 2] = lm[3, 3] = lm[4, 4] = PIPE
    assert len(_by_category(annotate(lm, cats, image_id=0, min_area=1), PIPE)) == 1
    assert len(_by_category(annotate(lm, cats, image_id=0, min_area=1, connectivity=4), PIPE)) == 3


def test_label_map_values_out_of_range_are_rejected(cats):
    lm = np.zeros((8, 8), np.uint8)
    lm[0, 0] = 9
    with pytest.raises(ValueError, match="label_map"):
        annotate(lm, cats, image_id=0)
    no_bg = resolve_categories(["mold"], background=None)
    with pytest.raises(ValueError, match="label_map"):
        annotate(np.ones((4, 4), np.uint8), no_bg, image_id=0)
    with pytest.raises(ValueError, match="label_map"):
        annotate(np.zeros((4, 4, 1), np.uint8), cats, image_id=0)


def test_min_area_int_pixels_or_float_fraction():
    assert min_area_pixels(10, 1000) == 10
    assert min_area_pixels(0.01, 1000) == 10
    with pytest.raises(ValueError, match="min_area"):
        min_area_pixels(1.5, 1000)
    with pytest.raises(ValueError, match="min_area"):
        min_area_pixels(-1, 1000)


# -------------------------------------------------------------------------------------------------- grounding
def _sentences_of(ann, seg):
    return next(g["sentences"] for g in ann.grounding if g["segment_id"] == seg["id"])


def test_position_and_size_words_read_from_the_mask(cats):
    lm = np.full((90, 90), BG, np.uint8)
    lm[72:82, 3:13] = PIPE  # small (1.2 % < 2 %), bottom-left
    ann = annotate(lm, cats, image_id=0, min_area=1)
    text = " | ".join(_sentences_of(ann, _by_category(ann, PIPE)[0]))
    assert "pipe" in text and "bottom left" in text and "small" in text
    assert "right" not in text and "top" not in text

    lm = np.full((90, 90), BG, np.uint8)
    lm[0:60, 45:90] = PIPE  # large, right half, upper-middle centroid
    ann = annotate(lm, cats, image_id=0, min_area=1)
    text = " | ".join(_sentences_of(ann, _by_category(ann, PIPE)[0]))
    assert "large" in text and "right" in text and "left" not in text

    lm = np.full((90, 90), BG, np.uint8)
    lm[35:55, 35:55] = PIPE
    ann = annotate(lm, cats, image_id=0, min_area=1)
    assert "the pipe in the center" in _sentences_of(ann, _by_category(ann, PIPE)[0])


def test_several_instances_get_ordinal_relations(cats):
    lm = np.full((40, 100), BG, np.uint8)
    lm[10:20, 5:10] = MOLD
    lm[10:20, 45:50] = MOLD
    lm[10:30, 85:95] = MOLD  # rightmost, also the largest
    ann = annotate(lm, cats, image_id=0, min_area=1)
    molds = sorted(_by_category(ann, MOLD), key=lambda s: s["bbox"][0])
    left, middle, right = (_sentences_of(ann, s) for s in molds)
    assert "the leftmost mold" in left
    assert "the rightmost mold" in right and "the largest mold" in right
    assert "the second mold from the left" in middle
    for sentences in (left, middle, right):
        assert 2 <= len(sentences) <= 3 and len(set(sentences)) == len(sentences)


def test_every_segment_gets_two_or_three_distinct_sentences(cats):
    rng = np.random.default_rng(0)
    lm = rng.integers(0, 4, size=(64, 64)).astype(np.uint8)
    lm[:32] = BG
    lm[40:50, 10:30] = WALL
    ann = annotate(lm, cats, image_id=0, min_area=1)
    assert [g["segment_id"] for g in ann.grounding] == [s["id"] for s in ann.segments_info]
    for g, s in zip(ann.grounding, ann.segments_info):
        assert 2 <= len(g["sentences"]) <= 3 and len(set(g["sentences"])) == len(g["sentences"])
        assert all(cats[s["category_id"]].name in sent for sent in g["sentences"])


def test_synonyms_appear_in_sentences():
    cats = resolve_categories([Category("mold", synonyms=("fungus",))])
    lm = np.full((20, 20), 1, np.uint8)
    lm[2:8, 2:8] = 0
    ann = annotate(lm, cats, image_id=0, min_area=1)
    assert any("fungus" in s for s in ann.grounding[0]["sentences"])


def test_tokenize_refcoco_style():
    assert tokenize("The mold, on the LEFT!") == ["the", "mold", "on", "the", "left"]


def test_annotate_512_map_with_about_ten_segments():
    """A 512x512 map with ~10 rectangles annotates into about that many segments (no timing in tests)."""
    cats = resolve_categories(["mold", "stain", "pipe", Category("wall", isthing=False)])
    rng = np.random.default_rng(1)
    lm = np.full((512, 512), 4, np.uint8)
    lm[350:] = 3
    for k in range(8):
        y, x = rng.integers(0, 300, 2)
        lm[y : y + 40, x : x + 60] = k % 3
    lm[0:10] = IGNORE_INDEX
    ann = annotate(lm, cats, image_id=0)
    assert 8 <= len(ann.segments_info) <= 12
