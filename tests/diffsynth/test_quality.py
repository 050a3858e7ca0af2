"""Quality scores: hand-made masks with known answers, the stored column, filtering, min_quality and CLIP."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from PIL import Image

import diffsynth
from diffsynth import generate, settings_of, validate
from diffsynth.categories import resolve_categories
from diffsynth.dataset import ContractError, Sample, to_dataset
from diffsynth.masker import MaskResult
from diffsynth.plan import sample_seed
from diffsynth.quality import (
    ClipScorer,
    QualityScore,
    overall_score,
    quality_scores,
    score_masks,
    score_result,
)
from diffsynth.schema import QUALITY_FIELDS

FAST = {"num_inference_steps": 2, "progress": False}
CATS = resolve_categories(["cat", "dog"])  # cat 0, dog 1, background 2


# ---------------------------------------------------------------------------------------------- hand-made masks
def _two_halves() -> np.ndarray:
    """8x8: cat on the left 4 columns, background on columns 4-5, uncertain on columns 6-7."""
    semantic = np.full((8, 8), 2, np.uint8)
    semantic[:, :4] = 0
    semantic[:, 6:] = 255
    return semantic


def test_score_masks_by_hand():
    semantic = _two_halves()
    soft = np.zeros((2, 8, 8), np.float32)
    soft[0, :, :4] = 0.8
    soft[0, :2, :4] = 1.0  # a quarter of the cat pixels are at 1.0 -> mean 0.85
    cross = np.zeros((2, 8, 8), np.float32)
    cross[0, :, 2:6] = 0.9  # attends to columns 2..5: overlap 16 px, union 48 px -> IoU 1/3
    cross[1, 0, 0] = 1.0  # dog: attended one pixel, got none -> IoU 0
    score = score_masks(semantic, [0, 1], soft_maps=soft, cross_maps=cross)
    assert score.ignore_fraction == pytest.approx(16 / 64)
    assert score.missing_classes == 1 and not score.all_classes
    assert score.class_coverage == pytest.approx(0.5)
    assert score.confidence == pytest.approx(0.85)
    assert score.agreement == pytest.approx((1 / 3 + 0.0) / 2)
    expected = 0.5 * ((1 - 0.25) + 0.85 + 1 / 6) / 3
    assert score.overall == pytest.approx(expected)


def test_perfect_and_empty_masks_are_the_ends_of_the_scale():
    semantic = np.zeros((6, 6), np.uint8)
    soft = np.ones((1, 6, 6), np.float32)
    perfect = score_masks(semantic, [0], soft_maps=soft, cross_maps=soft)
    assert perfect.overall == pytest.approx(1.0) and perfect.agreement == pytest.approx(1.0)
    nothing = score_masks(np.full((6, 6), 255, np.uint8), [0], soft_maps=soft, cross_maps=soft)
    assert nothing.overall == 0.0 and nothing.confidence == 0.0 and nothing.missing_classes == 1


def test_maps_at_another_resolution_are_compared_at_theirs():
    semantic = np.zeros((8, 8), np.uint8)
    semantic[:, 4:] = 1
    soft = np.zeros((2, 4, 4), np.float32)
    soft[0, :, :2], soft[1, :, 2:] = 0.7, 0.9
    score = score_masks(semantic, [0, 1], soft_maps=soft)
    assert score.confidence == pytest.approx(0.8) and score.agreement is None


def test_overall_formula_uses_only_available_terms_and_clip_rescaling():
    assert overall_score(0.2, 1.0) == pytest.approx(0.8)
    assert overall_score(0.2, 1.0, confidence=0.6) == pytest.approx(0.7)
    # clip term = min(1, 2.5 * cos): 0.2 -> 0.5; negative -> 0
    assert overall_score(0.0, 1.0, clip_score=0.2) == pytest.approx(0.75)
    assert overall_score(0.0, 1.0, clip_score=-0.3) == pytest.approx(0.5)
    assert overall_score(0.0, 0.5, confidence=1.0) == pytest.approx(0.5)


def test_score_result_uses_the_results_ids_and_maps():
    semantic = _two_halves()
    soft = np.full((1, 8, 8), 0.9, np.float32)
    result = MaskResult(
        Image.new("RGB", (8, 8)),
        semantic,
        soft,
        soft,
        {
            "prompt": "a cat",
            "seed": 1,
            "classes": ["cat"],
            "class_ids": [0],
            "background_id": 2,
            "ignore_index": 255,
        },
    )
    score = score_result(result)
    assert score.missing_classes == 0 and score.confidence == pytest.approx(0.9)
    assert score.agreement == pytest.approx(0.5)  # cross covers the whole image, the mask half of it


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="soft_maps"):
        score_masks(np.zeros((4, 4), np.uint8), [0, 1], soft_maps=np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="cross_threshold"):
        score_masks(np.zeros((4, 4), np.uint8), [0], cross_threshold=1.5)


# ---------------------------------------------------------------------------------------------- stored column
def _sample(index: int, semantic: np.ndarray, prompt: str, quality: QualityScore | None) -> Sample:
    image = Image.fromarray(np.full((*semantic.shape, 3), 60 + 20 * index, np.uint8))
    sample = Sample.from_label_map(
        image, semantic, CATS, image_id=index, prompt=prompt, seed=index, min_area=0
    )
    sample.quality = None if quality is None else quality.to_dict()
    return sample


def _hand_made_dataset(with_quality: bool = True):
    good = np.full((16, 16), 2, np.uint8)
    good[:8] = 0
    good[8:10] = 255  # a band of uncertain pixels: no sample is perfect
    missing = np.full((16, 16), 2, np.uint8)  # prompted "cat and dog", only cat found
    missing[:4] = 0
    uncertain = np.full((16, 16), 255, np.uint8)
    uncertain[:4, :4] = 1
    masks = [
        (good, "a photo of a cat"),
        (missing, "a photo of a cat and a dog"),
        (uncertain, "a photo of a dog"),
    ]
    samples = []
    for i, (semantic, prompt) in enumerate(masks):
        ids = [CATS.index(next(c for c in CATS if c.name == n)) for n in ("cat", "dog") if n in prompt]
        score = score_masks(semantic, ids) if with_quality else None
        samples.append(_sample(i, semantic, prompt, score))
    return to_dataset(samples, CATS, {"model": "hand-made"})


def test_quality_column_round_trips_and_validates(tmp_path):
    ds = _hand_made_dataset()
    validate(ds)
    assert "quality" in ds.column_names and set(ds.features["quality"]) == set(QUALITY_FIELDS)
    rows = quality_scores(ds)
    assert rows[0]["missing_classes"] == 0 and rows[1]["missing_classes"] == 1
    assert rows[2]["ignore_fraction"] == pytest.approx(240 / 256)
    assert rows[0]["confidence"] is None  # no soft maps: not computed, stored as null
    ds.to_parquet(str(tmp_path / "q.parquet"))
    from datasets import Dataset

    back = Dataset.from_parquet(str(tmp_path / "q.parquet"))
    for a, b in zip(quality_scores(back), rows, strict=True):
        assert a["overall"] == pytest.approx(b["overall"], abs=1e-6)


def test_validate_rejects_out_of_range_scores():
    ds = _hand_made_dataset()

    def corrupt(row, index):
        if index == 1:
            row["quality"] = {**row["quality"], "ignore_fraction": 1.5}
        return row

    bad = ds.map(corrupt, with_indices=True)
    with pytest.raises(ContractError, match=r"row 1: `quality.ignore_fraction`"):
        validate(bad)


def test_filter_drops_weak_rows():
    ds = _hand_made_dataset()
    assert diffsynth.filter(ds, require_all_classes=True)["image_id"] == [0, 2]
    assert diffsynth.filter(ds, max_ignore=0.5)["image_id"] == [0, 1]
    overall = [q["overall"] for q in quality_scores(ds)]
    bar = sorted(overall)[1]
    kept = diffsynth.filter(ds, min_quality=bar)
    assert sorted(kept["image_id"]) == sorted(i for i, v in enumerate(overall) if v >= bar)
    with pytest.raises(ValueError, match="at least one bar"):
        diffsynth.filter(ds)
    with pytest.warns(UserWarning, match="no row"):
        assert len(diffsynth.filter(ds, min_quality=1.0)) == 0


def test_filter_without_a_quality_column_scores_from_stored_columns():
    with_column = _hand_made_dataset()
    without = _hand_made_dataset(with_quality=False)
    assert "quality" not in without.column_names
    stored, computed = quality_scores(with_column), quality_scores(without)
    for a, b in zip(stored, computed, strict=True):
        assert a["missing_classes"] == b["missing_classes"]
        assert a["ignore_fraction"] == pytest.approx(b["ignore_fraction"], abs=1e-6)
    assert diffsynth.filter(without, require_all_classes=True)["image_id"] == [0, 2]
    assert diffsynth.filter(without, max_ignore=0.5)["image_id"] == [0, 1]


# ---------------------------------------------------------------------------------------------- generation
@pytest.fixture(scope="module")
def pipe():
    from diffsynth.testing import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def plain(pipe):
    return generate(["cat", "dog"], num_images=4, model=pipe, **FAST)


def test_generate_stores_scores_that_match_the_formula(pipe, plain):
    validate(plain)
    settings = settings_of(plain)["quality"]
    assert "class_coverage" in settings["overall"] and settings["mean_overall"] > 0
    for q in plain["quality"]:
        assert 0 <= q["ignore_fraction"] <= 1 and q["confidence"] is not None and q["agreement"] is not None
        assert q["clip_score"] is None
        expected = overall_score(
            q["ignore_fraction"], q["class_coverage"], q["confidence"], q["agreement"], q["clip_score"]
        )
        assert q["overall"] == pytest.approx(expected, abs=1e-6)
    no_scores = generate(["cat"], num_images=1, model=pipe, with_quality=False, **FAST)
    assert "quality" not in no_scores.column_names and "quality" not in settings_of(no_scores)


def test_min_quality_redraws_weak_samples(pipe, plain):
    overall = sorted(q["overall"] for q in plain["quality"])
    bar = (overall[0] + overall[1]) / 2  # the weakest of the first draws fails
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = generate(["cat", "dog"], num_images=4, model=pipe, min_quality=bar, max_attempts=4, **FAST)
    assert len(ds) == 4
    validate(ds)
    stats = settings_of(ds)["quality"]
    assert stats["attempts"] > 4 and stats["rejected"] >= 1
    assert stats["attempts"] == 4 + stats["rejected"] + stats["below_bar"]
    assert ds["image_id"] == [0, 1, 2, 3]
    redrawn = [row["image_id"] for row in ds if row["seed"] != sample_seed(0, row["image_id"])]
    assert redrawn, "a sample below the bar must be replaced by a draw with the seed of a new index"
    for row in ds:
        i = row["image_id"]
        assert row["seed"] in {sample_seed(0, a * 4 + i) for a in range(4)}
        if stats["below_bar"] == 0:
            assert row["quality"]["overall"] >= bar - 1e-6
        assert row["prompt"] == plain[i]["prompt"]  # a redraw keeps its slot's prompt and classes
        if i not in redrawn:
            assert row["quality"] == plain[i]["quality"]


def test_min_quality_out_of_reach_keeps_the_best_draw_and_says_so(pipe):
    with pytest.warns(UserWarning, match="below min_quality"):
        ds = generate(["cat"], num_images=2, model=pipe, min_quality=1.0, max_attempts=2, **FAST)
    stats = settings_of(ds)["quality"]
    assert len(ds) == 2 and stats == {**stats, "attempts": 4, "below_bar": 2, "rejected": 2}


def test_bad_quality_options_fail_early():
    with pytest.raises(ValueError, match="min_quality"):
        generate(["cat"], num_images=1, min_quality=1.5, **FAST)
    with pytest.raises(ValueError, match="max_attempts"):
        generate(["cat"], num_images=1, max_attempts=0, **FAST)
    with pytest.raises(TypeError, match="clip"):
        generate(["cat"], num_images=1, clip=object(), **FAST)


# ---------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def tiny_clip():
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffsynth.testing import clip_tokenizer

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=clip_tokenizer(),
    )
    return model, processor


def test_clip_scorer_scores_pairs_independently_of_batching(tiny_clip):
    scorer = ClipScorer(*tiny_clip, batch_size=2)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a photo of a cat", "a photo of a dog", "a cat and a dog"]
    together = scorer(images, texts)
    alone = [ClipScorer(*tiny_clip, batch_size=1)([im], [t])[0] for im, t in zip(images, texts, strict=True)]
    assert np.allclose(together, alone, atol=1e-5)
    assert all(-1.0 <= s <= 1.0 for s in together) and len(set(np.round(together, 6))) == 3
    with pytest.raises(ValueError, match="one text per image"):
        scorer(images, texts[:2])
    with pytest.raises(TypeError, match="CLIPModel"):
        ClipScorer(object(), tiny_clip[1])


def test_generate_with_clip_stores_the_image_text_score(pipe, tiny_clip):
    ds = generate(["cat", "dog"], num_images=2, model=pipe, clip=tiny_clip, **FAST)
    scorer = ClipScorer(*tiny_clip)
    expected = scorer(list(ds["image"]), list(ds["prompt"]))
    for q, cos in zip(ds["quality"], expected, strict=True):
        assert q["clip_score"] is not None and not math.isnan(q["clip_score"])
        # the stored image is JPEG-compressed, the scored one was not: close, not equal
        assert q["clip_score"] == pytest.approx(cos, abs=0.05)
        recomputed = overall_score(
            q["ignore_fraction"], q["class_coverage"], q["confidence"], q["agreement"], q["clip_score"]
        )
        assert q["overall"] == pytest.approx(recomputed, abs=1e-6)
    assert settings_of(ds)["quality"]["clip_model"] == "CLIPModel"
