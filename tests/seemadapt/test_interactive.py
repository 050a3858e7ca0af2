"""Interactive SEEM: click simulation, candidate selection, memory rounds, segment(), refinement and spatial training."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import seemadapt.model.interactive as interactive
from seemadapt.model import SEEM
from seemadapt.model.config import LanguageConfig, get_config
from seemadapt.model.decoder import SEEMDecoder
from seemadapt.model.interactive import (
    Click,
    EncodedImage,
    add_corrective_clicks,
    decode_prompts,
    deepest_point,
    encode_features,
    mask_iou,
    next_click,
    number_of_clicks,
    refine_with_clicks,
    select_candidates,
)
from seemadapt.model.postprocess import resize_mask_logits
from seemadapt.model.prompts import PromptGeometry, encode_points, logits_to_canvas
from seemadapt.train.criterion import CriterionConfig, SEEMCriterion
from seemadapt.train.spatial import prepare_spatial_training

INTERACTIVE = ("mask_sptial_embed.0", "mask_sptial_embed.1", "mask_sptial_embed.2", "pn_indicator.weight")
MEMORIES = ("spatial_embed.weight", "spatial_featured.weight")


@pytest.fixture(scope="module")
def model() -> SEEM:
    return SEEM.from_config("tiny").eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def square(shape, r0, r1, c0, c1) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


# ------------------------------------------------------------------------------------------------ click simulation


def test_deepest_point_is_the_distance_transform_maximum():
    assert deepest_point(square((40, 40), 10, 21, 5, 16)) == (15, 10)  # 11x11 square: its centre
    ell = square((40, 40), 5, 30, 5, 10) | square((40, 40), 20, 35, 5, 35)  # thin bar + thick bar
    row, col = deepest_point(ell)
    assert 20 <= row < 35 and col >= 10  # in the thick part, not the thin one
    # the image border counts as outside: a region touching it is deepest away from the border
    assert deepest_point(square((20, 20), 0, 5, 0, 20)) == (2, 2)
    assert deepest_point(np.zeros((5, 5), dtype=bool)) is None


def test_false_negatives_give_a_positive_click_at_the_deepest_error_point():
    gt = square((40, 40), 10, 21, 5, 31)
    pred = square((40, 40), 10, 21, 5, 20)  # misses columns 20..30: an 11x11 false-negative square
    assert next_click(pred, gt) == Click(15, 25, True)
    assert Click(15, 25, True).point == (25, 15, 1)
    # as tensors too
    assert next_click(torch.from_numpy(pred), torch.from_numpy(gt)) == Click(15, 25, True)


def test_false_positives_give_a_negative_click():
    gt = square((40, 40), 0, 10, 0, 10)
    pred = gt | square((40, 40), 20, 33, 20, 33)  # a 13x13 false positive, larger than any false negative
    pred[0:2, 0:2] = False  # 4 false-negative pixels
    assert next_click(pred, gt) == Click(26, 26, False)
    # a tie goes to the false positives, as in SEEM
    tie_gt = square((20, 20), 0, 4, 0, 2)
    tie_pred = square((20, 20), 0, 4, 0, 1) | square((20, 20), 10, 14, 10, 11)
    assert next_click(tie_pred, tie_gt).positive is False


def test_clicks_stop_at_the_iou_threshold_and_skip_clicked_and_invalid_pixels():
    gt = square((20, 20), 0, 10, 0, 10)  # 100 pixels
    almost = gt.copy()
    almost[0, 0:7] = False  # IoU 0.93
    assert mask_iou(almost, gt) == pytest.approx(0.93)
    assert next_click(almost, gt) is None
    assert next_click(almost, gt, iou_threshold=0.95) is not None
    worse = gt.copy()
    worse[0, 0:8] = False  # IoU 0.92 < 0.925
    assert next_click(worse, gt) is not None
    assert next_click(gt, gt) is None and mask_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0

    pred = np.zeros((40, 40), dtype=bool)
    gt = square((40, 40), 10, 21, 10, 21)
    first = next_click(pred, gt)
    clicked = np.zeros_like(gt)
    clicked[first.row - 1 : first.row + 2, first.col - 1 : first.col + 2] = True
    second = next_click(pred, gt, clicked=clicked)
    assert second.positive and not clicked[second.row, second.col]
    # false positives on the padding do not count
    padded_pred = square((40, 40), 30, 40, 0, 40)
    valid = square((40, 40), 0, 30, 0, 40)
    assert next_click(padded_pred, np.zeros((40, 40), bool), valid=valid) is None


def test_add_corrective_clicks_updates_a_copy_of_the_prompts():
    gt = torch.zeros(2, 32, 32, dtype=torch.bool)
    gt[0, 0:16, 0:16] = True
    positive = [torch.zeros(2, 32, 32, dtype=torch.bool)]
    positive[0][0, 2, 2] = True
    negative = [torch.zeros(2, 32, 32, dtype=torch.bool)]
    prev = torch.full((1, 2, 8, 8), -10.0)  # stride 4: predicts nothing
    new_pos, new_neg, clicks = add_corrective_clicks(prev, [gt], positive, negative, distance="exact")
    click = clicks[0][0]
    # deepest pixel of the 16x16 miss: (7, 7) and (8, 8) tie on the border distance (8), but the clicked pixel
    # (2, 2) is left out of the error, which brings (7, 7) within 7.07 of the outside
    assert click == Click(8, 8, True)
    expected = positive[0][0].clone()
    expected[7:10, 7:10] = True  # one pixel dilated 3x3
    assert torch.equal(new_pos[0][0], expected)
    assert clicks[0][1] is None and not new_pos[0][1].any()  # empty target: no click
    assert not new_neg[0].any()
    assert positive[0].sum() == 1  # inputs untouched

    prev_fp = torch.full((1, 2, 8, 8), 10.0)  # predicts everything: mostly false positives
    _, neg, clicks = add_corrective_clicks(prev_fp, [gt], positive, negative, image_sizes=[(32, 20)])
    assert clicks[0][0].positive is False and clicks[0][0].col < 20  # never on the padding
    assert neg[0][0].sum() == 9


def test_number_of_clicks():
    assert number_of_clicks([0.5, 0.85, 0.91], 0.85) == 2
    assert number_of_clicks([0.5, 0.85, 0.91], 0.9) == 3
    assert number_of_clicks([0.5, 0.6], 0.9, max_clicks=20) == 20


# ------------------------------------------------------------------------------------------------ selection


def test_select_candidates_follows_the_prompt_affinity_and_composes_text():
    # 2 prompts x 3 queries; embeddings chosen by hand so the affinities are known
    prompt = torch.eye(4)[:2]  # prompt k embedding = e_k
    masks = torch.zeros(6, 4)
    masks[:3, 0] = torch.tensor([1.0, 3.0, 2.9])  # prompt 0: query 1 best, query 2 close behind
    masks[3:, 1] = torch.tensor([0.0, 0.5, 4.0])  # prompt 1: query 5 best
    masks[3:, 0] = 9.0  # affinity to the *other* prompt must not matter
    indices, scores = select_candidates(masks, prompt, 3)
    assert indices.tolist() == [1, 5]
    expected = torch.tensor([1.0, 3.0, 2.9]).softmax(0)[1]
    torch.testing.assert_close(scores[0], expected)

    captions = torch.zeros(6, 2)
    captions[:, 1] = 1.0
    captions[2] = torch.tensor([1.0, 0.0])  # only query 2 (prompt 0) looks like the text
    text = torch.tensor([[1.0, 0.0]])
    indices, scores = select_candidates(
        masks, prompt, 3, captions=captions, text_embeddings=text, logit_scale=0.0
    )
    assert indices.tolist() == [2, 5]  # text breaks the near-tie of prompt 0; prompt 1 stays
    assert ((scores > 0) & (scores <= 1)).all()
    per_prompt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    indices, _ = select_candidates(
        masks, prompt, 3, captions=captions, text_embeddings=per_prompt, logit_scale=0.0
    )
    assert indices.tolist() == [2, 5]
    with pytest.raises(ValueError, match="captions"):
        select_candidates(masks, prompt, 3, text_embeddings=text)
    with pytest.raises(ValueError, match="texts"):
        select_candidates(
            masks, prompt, 3, captions=captions, text_embeddings=torch.ones(3, 2), logit_scale=0.0
        )


# ------------------------------------------------------------------------------------------------ memory rounds


class SpyDecoder:
    """Records the ``spatial`` dict of every decoder call."""

    def __init__(self, monkeypatch, decoder):
        self.calls = []
        forward = decoder.forward

        def spy(*args, **kwargs):
            spatial = kwargs.get("spatial")
            self.calls.append(None if spatial is None else dict(spatial))
            return forward(*args, **kwargs)

        monkeypatch.setattr(decoder, "forward", spy)


def test_rounds_feed_the_previous_masks_to_the_memories(model, image, monkeypatch):
    spy = SpyDecoder(monkeypatch, model.decoder)
    with torch.no_grad():
        encoded = encode_features(model, [image])
        assert isinstance(encoded, EncodedImage) and encoded.decoder_size == (16, 16)
        prompts = encode_points([[(10, 12)], [(30, 40), (5, 5, 0)]], encoded.geometry())
        two = decode_prompts(model, encoded, prompts, rounds=2, generator=torch.Generator().manual_seed(0))
        assert len(spy.calls) == 2
        assert "prev_mask" not in spy.calls[0]
        memory = spy.calls[1]["prev_mask"]
        assert memory.shape == (1, 2, 16, 16)  # [B, n prompts, decoder size]
        # round 2 equals one round run by hand with round 1's masks as memories (same random stream)
        generator = torch.Generator().manual_seed(0)
        one = decode_prompts(model, encoded, prompts, generator=generator)
        assert torch.equal(one.prev_mask, memory)
        again = decode_prompts(model, encoded, prompts, prev_mask=one.prev_mask, generator=generator)
    assert two.mask_logits.shape == (2, 16, 16) and two.prev_mask.shape == (1, 2, 16, 16)
    assert torch.equal(two.mask_logits, again.mask_logits)
    assert not torch.equal(two.mask_logits, one.mask_logits)  # memories change the answer
    with pytest.raises(ValueError, match="prev_mask"):
        decode_prompts(model, encoded, prompts, prev_mask=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="rounds"):
        decode_prompts(model, encoded, prompts, rounds=0)


# ------------------------------------------------------------------------------------------------ segment


def test_segment_gives_seems_choice_per_prompt_at_the_image_size(model, image):
    result = model.segment(image, points=[(10, 12), (30, 40, 0)], boxes=[[2, 3, 20, 30], [25, 30, 40, 48]])
    assert result["kinds"] == ["point", "box", "box"]
    assert result["masks"].shape == result["logits"].shape == (3, 48, 40)
    assert result["masks"].dtype == torch.bool and torch.equal(result["masks"], result["logits"] > 0)
    assert result["scores"].shape == (3,) and ((result["scores"] > 0) & (result["scores"] <= 1)).all()
    assert model.training is False

    again = model.segment(image, points=[(10, 12), (30, 40, 0)], boxes=[[2, 3, 20, 30], [25, 30, 40, 48]])
    assert torch.equal(again["logits"], result["logits"])  # default generator: reproducible

    # the same masks as SEEM's own interactive output (task="spatial": best query by prompt affinity)
    with torch.no_grad():
        encoded = encode_features(model, [image])
        spatial = {**result["prompts"].decoder_inputs(), "generator": torch.Generator().manual_seed(0)}
        official = model.decoder(
            encoded.multi_scale, encoded.mask_features, None, spatial=spatial, task="spatial"
        )
        expected = resize_mask_logits(official["prev_mask"][0], (64, 64), (48, 40), (48, 40))
    torch.testing.assert_close(result["logits"], expected)


def test_segment_with_text_scribbles_masks_and_resize(model, image):
    mask = torch.zeros(48, 40, dtype=torch.bool)
    mask[10:30, 5:25] = True
    result = model.segment(
        image, scribbles=[[(2, 2), (20, 30)]], mask=mask, text="a cat", short_edge=64, rounds=2
    )
    assert result["kinds"] == ["scribble", "mask"]
    assert result["logits"].shape == (2, 48, 40)  # back at the caller's size despite the resize
    assert result["prompts"].geometry.image_size == (77, 64)
    both = model.segment(image, points=[[(10, 12)], [(20, 20)]], text=["a cat", "a dog"])
    assert both["masks"].shape == (2, 48, 40)
    with pytest.raises(ValueError, match="texts"):
        model.segment(image, points=[[(10, 12)], [(20, 20)], [(5, 5)]], text=["a", "b"])

    grounded = model.segment(image, text=["a cat", "the dog"])
    reference = model.ground(image, ["a cat", "the dog"])
    assert grounded["kinds"] == ["text", "text"] and grounded["prompts"] is None
    assert torch.equal(grounded["logits"], reference["mask_logits"])


def test_segment_refines_with_prev_mask_and_prev_prompts(model, image, monkeypatch):
    first = model.segment(image, points=[(10, 12)], boxes=[2, 3, 20, 30])
    spy = SpyDecoder(monkeypatch, model.decoder)
    second = model.segment(
        image,
        points=[[(11, 20, 0)], []],
        prev_prompts=first["prompts"],
        prev_mask=first["logits"],
    )
    assert second["kinds"] == ["point", "box"]
    prompts = second["prompts"]
    assert torch.equal(prompts.positive, first["prompts"].positive)
    assert prompts.negative[0].sum() == 9 and not prompts.negative[1].any()
    memory = spy.calls[-1]["prev_mask"]
    assert memory.shape == (1, 2, 16, 16)  # the first result, back on the decoder's grid
    geometry = first["prompts"].geometry
    assert geometry == prompts.geometry
    torch.testing.assert_close(memory[0], logits_to_canvas(first["logits"], geometry, (16, 16)))
    assert (memory[0, :, 12:, :] < -100).all()  # canvas rows 48.. are padding: off

    stateless = model.segment(image, points=[(10, 12), (11, 20, 0)], prev_mask=first["logits"][:1])
    assert stateless["masks"].shape == (1, 48, 40)
    with pytest.raises(ValueError, match="one point group per object"):
        model.segment(image, points=[(1, 1, 0)], prev_prompts=first["prompts"])
    with pytest.raises(ValueError, match="prev_mask"):
        model.segment(image, points=[(10, 12)], prev_mask=first["logits"])
    with pytest.raises(ValueError, match="no positive point"):
        model.segment(image, points=[(10, 12, 0)])
    with pytest.raises(ValueError, match="at least one prompt"):
        model.segment(image)


# ------------------------------------------------------------------------------------------------ refinement


def test_refine_with_clicks_starts_at_the_deepest_gt_point(model, image):
    gt = torch.zeros(48, 40, dtype=torch.bool)
    gt[10:31, 8:29] = True  # 21x21: deepest point (20, 18)
    out = refine_with_clicks(model, image, gt, rounds=4)
    assert out["clicks"][0] == Click(20, 18, True)
    assert 1 <= len(out["ious"]) == len(out["clicks"]) <= 4
    assert all(0.0 <= iou <= 1.0 for iou in out["ious"])
    assert out["mask"].shape == gt.shape and out["logits"].shape == gt.shape
    assert out["ious"][-1] == pytest.approx(mask_iou(out["mask"].numpy(), gt.numpy()))


def test_refine_with_clicks_stops_at_the_threshold_and_clicks_on_errors(model, image, monkeypatch):
    gt = torch.zeros(48, 40, dtype=torch.bool)
    gt[10:31, 8:29] = True
    perfect = torch.where(torch.nn.functional.pad(gt, (0, 24, 0, 16)), 10.0, -10.0)[None, None]
    perfect = torch.nn.functional.interpolate(perfect, size=(16, 16), mode="area")[0]

    def fake(masks):
        def decode(model, encoded, prompts, **kwargs):
            return interactive.PromptDecoding(
                masks, torch.ones(1), torch.zeros(1, dtype=torch.long), masks[None]
            )

        return decode

    monkeypatch.setattr(interactive, "decode_prompts", fake(perfect))
    out = refine_with_clicks(model, image, gt, rounds=10)
    assert len(out["clicks"]) == 1 and out["ious"][0] >= 0.925

    monkeypatch.setattr(interactive, "decode_prompts", fake(torch.full((1, 16, 16), -10.0)))
    out = refine_with_clicks(model, image, gt, rounds=5)
    assert len(out["clicks"]) == 5 and out["ious"] == [0.0] * 5
    assert (
        all(c.positive for c in out["clicks"]) and len(set(out["clicks"])) == 5
    )  # never the same pixel twice


# ------------------------------------------------------------------------------------------------ training


def tiny_batch():
    from seemadapt.detectron2_compat import BitMasks, Instances

    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 48, 40), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator),
    ]
    first = Instances((64, 64))
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 5:30, 5:30] = True
    masks[1, 30:60, 10:50] = True
    masks[2, 0:3, 0:3] = True  # too small for a prompt
    first.gt_masks, first.gt_classes = BitMasks(masks), torch.tensor([0, 1, 2])
    second = Instances((48, 40))
    masks = torch.zeros(1, 48, 40, dtype=torch.bool)
    masks[0, 10:40, 5:35] = True
    second.gt_masks, second.gt_classes = BitMasks(masks), torch.tensor([1])
    third = Instances((32, 32))  # no instance at all
    third.gt_masks, third.gt_classes = (
        BitMasks(torch.zeros(0, 32, 32, dtype=torch.bool)),
        torch.zeros(0).long(),
    )
    return images, [first, second, third]


def test_prepare_spatial_training_builds_prompts_targets_and_click_rounds(model):
    images, instances = tiny_batch()
    spatial, gts = prepare_spatial_training(
        model, images, instances, generator=torch.Generator().manual_seed(0)
    )
    assert set(spatial) <= {"pos_masks", "neg_masks", "generator", "prev_mask"}
    assert [g.shape for g in gts] == [(3, 64, 64), (1, 64, 64), (1, 64, 64)]  # padded like the images
    assert [p.shape for p in spatial["pos_masks"]] == [g.shape for g in gts]

    no_rounds, gts0 = prepare_spatial_training(
        model, images, instances, max_iter=0, generator=torch.Generator().manual_seed(3)
    )
    assert "prev_mask" not in no_rounds and not any(n.any() for n in no_rounds["neg_masks"])
    for pos, gt in zip(no_rounds["pos_masks"], gts0):  # drawn shapes lie inside their targets
        assert not (pos & ~gt).any()
    assert not gts0[2].any() and not no_rounds["pos_masks"][2].any()  # the empty image: one empty prompt
    assert not gts0[1][:, 48:].any() and not gts0[1][:, :, 40:].any()  # zero padding

    rounds, gts2 = prepare_spatial_training(
        model, images, instances, min_iter=2, max_iter=2, generator=torch.Generator().manual_seed(3)
    )
    assert rounds["prev_mask"].shape == (3, 3, 16, 16)  # [B, most prompts, decoder size]
    for b in range(3):
        assert torch.equal(gts2[b], gts0[b])  # same seed, same sampled shapes
        added = (rounds["pos_masks"][b] & ~no_rounds["pos_masks"][b]).flatten(1).sum(1) + rounds["neg_masks"][
            b
        ].flatten(1).sum(1)
        assert (added <= 2 * 9).all()  # at most one 3x3 click per prompt and round
        assert (added[~gts0[b].flatten(1).any(1)] == 0).all()  # empty targets get no click
    clicks = sum(
        int((p & ~p0).sum() + n.sum())
        for p, p0, n in zip(rounds["pos_masks"], no_rounds["pos_masks"], rounds["neg_masks"])
    )
    assert clicks > 0  # random weights predict badly: the rounds do add clicks

    again, _ = prepare_spatial_training(
        model, images, instances, min_iter=2, max_iter=2, generator=torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(a, b) for a, b in zip(again["pos_masks"], rounds["pos_masks"]))
    assert torch.equal(again["prev_mask"], rounds["prev_mask"])

    class Wrapper(torch.nn.Module):  # DDP-like
        def __init__(self, module):
            super().__init__()
            self.module = module

    wrapped, _ = prepare_spatial_training(
        Wrapper(model), images, instances, max_iter=0, generator=torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(a, b) for a, b in zip(wrapped["pos_masks"], no_rounds["pos_masks"]))
    with pytest.raises(ValueError, match="min_iter"):
        prepare_spatial_training(model, images, instances, max_iter=-1, generator=torch.Generator())
    with pytest.raises(ValueError, match="instances"):
        prepare_spatial_training(model, images, instances[:2], generator=torch.Generator())


def test_spatial_training_losses_are_finite_and_train_the_interactive_parameters(model):
    trained = copy.deepcopy(model).train()
    images, instances = tiny_batch()
    generator = torch.Generator().manual_seed(0)
    spatial, gts = prepare_spatial_training(
        trained, images, instances, min_iter=1, max_iter=1, generator=generator
    )
    assert "prev_mask" in spatial
    outputs = trained.forward_train(images, ["cat", "dog", "grass"], spatial=spatial)
    size = outputs["padded_size"]
    targets = []
    for record, gt in zip(instances, gts):
        masks = record.gt_masks.tensor
        masks = torch.nn.functional.pad(masks, (0, size[1] - masks.shape[-1], 0, size[0] - masks.shape[-2]))
        targets.append({"labels": record.gt_classes, "masks": masks, "gt_spatial_masks": gt})
    criterion = SEEMCriterion(CriterionConfig(num_points=64))
    losses = criterion(outputs, targets, generator=torch.Generator().manual_seed(0))
    spatial_terms = {k: v for k, v in losses.items() if k.startswith("loss_spatial")}
    assert len(spatial_terms) == 3 * trained.config.decoder.dec_layers
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(v > 0 for v in spatial_terms.values())
    criterion.total(losses).backward()
    predictor = trained.decoder
    for name in INTERACTIVE + MEMORIES:
        grad = predictor.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------ full geometry


def test_focalt_geometry_uses_every_interactive_parameter():
    """The official focalT decoder geometry (hidden 512, 101 queries, 3 queries per prompt, 32 memories, 3 levels):
    shapes from a meta build, then prompts and memories run through a 3-layer decoder of that geometry."""
    big = SEEM.from_config("focalt", device="meta")
    shapes = {
        name: tuple(p.shape) for name, p in big.decoder.named_parameters() if not name.startswith("lang")
    }
    assert shapes["pn_indicator.weight"] == (2, 512)
    assert shapes["spatial_embed.weight"] == shapes["spatial_featured.weight"] == (32, 512)
    assert [shapes[f"mask_sptial_embed.{i}"] for i in range(3)] == [(512, 512)] * 3
    assert big.config.decoder.query_number == 3

    config = replace(get_config("focalt").decoder, dec_layers=4)  # 3 transformer layers: every feature level
    language = LanguageConfig(vocab_size=512, context_length=16, width=64, heads=4, layers=1, dim_proj=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        decoder = SEEMDecoder(config, language)

    class Stub:
        def __init__(self, decoder):
            self.decoder = decoder
            self.language_encoder = decoder.lang_encoder

    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(1, 512, s, s, generator=generator) for s in (2, 4, 8)]
    mask_features = torch.randn(1, 512, 16, 16, generator=generator)
    geometry = PromptGeometry((64, 64), (64, 64), (64, 64))
    from seemadapt.model.images import ImageBatch

    encoded = EncodedImage(
        ImageBatch(torch.zeros(1, 3, 64, 64), [(64, 64)], [(64, 64)]), mask_features, features
    )
    prompts = encode_points([[(10, 10), (40, 40, 0)], [(50, 20)]], geometry)
    first = decode_prompts(Stub(decoder), encoded, prompts, generator=generator)
    assert first.mask_logits.shape == (2, 16, 16) and first.prev_mask.shape == (1, 2, 16, 16)
    assert first.query_indices.tolist()[0] in range(3) and first.query_indices.tolist()[1] in range(3, 6)
    second = decode_prompts(
        Stub(decoder), encoded, prompts, prev_mask=first.prev_mask.detach(), generator=generator
    )
    second.mask_logits.sigmoid().mean().backward()
    for name in INTERACTIVE + MEMORIES:
        grad = decoder.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
