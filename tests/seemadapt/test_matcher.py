"""Hungarian matching: known permutations are recovered in every mode, spatial groups are respected, costs are exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from seemadapt.train.matcher import HungarianMatcher, grounding_logits, pairwise_bce, pairwise_dice
from seemadapt.train.points import point_sample, random_points, shared_point_sample

STRIDE = 4


def _patterns(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` clearly different random binary patterns ``[n, size, size]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, size, size, generator=g) > 0.5


def _logits(patterns: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return (patterns.float() * 2 - 1) * scale


def _upsample(patterns: torch.Tensor) -> torch.Tensor:
    """Targets at the input size (stride-4 predictions -> 4x larger masks)."""
    return patterns.repeat_interleave(STRIDE, -2).repeat_interleave(STRIDE, -1)


def test_pairwise_costs_match_hand_values():
    logits = torch.tensor([[0.0, 0.0], [3.0, -3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bce = pairwise_bce(logits, targets)
    assert bce[0, 0] == pytest.approx(math.log(2))
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert bce[1, 0] == pytest.approx(
        (sp(-3) + sp(-3)) / 2
    )  # BCE(3,1) = softplus(-3), BCE(-3,0) = softplus(-3)
    assert bce[1, 1] == pytest.approx((sp(3) + sp(-3)) / 2)
    dice = pairwise_dice(logits, targets)
    s = 1 / (1 + math.exp(-3))
    assert dice[0, 0] == pytest.approx(1 - (2 * 0.5 + 1) / (1.0 + 1 + 1))
    assert dice[1, 0] == pytest.approx(1 - (2 * s + 1) / (s + (1 - s) + 1 + 1))
    assert dice[1, 1] == pytest.approx(1 - 1 / (1 + 0 + 1))


@pytest.mark.parametrize("scale", [1.0, 10.0, 30.0, 1e-30])
@pytest.mark.parametrize("binary", [False, True])
def test_pairwise_costs_equal_the_plain_formulas(scale, binary):
    """The costs skip full-size passes (log of the shared probabilities instead of softplus, row sums from the
    products with the targets, doubling the targets, not the probabilities) and equal the plain formulas within
    float rounding, saturated and tiny logits included (row 0 underflows σ and takes the softplus)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1031, generator=g) * scale
    logits[0, :8] = torch.tensor([0.0, -0.0, 20.0, -20.0, 88.0, -88.0, 104.0, -104.0])
    targets = torch.rand(5, 1031, generator=g)
    targets = (targets > 0.5).float() if binary else targets
    pos = F.softplus(-logits)
    plain_bce = (pos @ targets.t() + (pos + logits) @ (1 - targets).t()) / logits.shape[1]
    probs = logits.sigmoid()
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    plain_dice = 1 - ((2 * probs) @ targets.t() + 1) / (denominator + 1)
    torch.testing.assert_close(pairwise_bce(logits, targets), plain_bce, rtol=2e-6, atol=1e-6)
    assert torch.equal(pairwise_bce(logits, targets, probs), pairwise_bce(logits, targets))
    torch.testing.assert_close(pairwise_dice(logits, targets), plain_dice, rtol=2e-6, atol=1e-6)
    assert torch.equal(pairwise_dice(logits, targets, probs), pairwise_dice(logits, targets))


def test_shared_point_sample_reads_every_channel_as_point_sample():
    """The matcher's sampler (corner rows summed by embedding_bag) against grid_sample, per channel: odd sizes,
    points whose neighbours fall outside the map, one channel alone."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(7, 6, 10, generator=g) * 5
    coords = torch.rand(300, 2, generator=g)
    coords[:6] = torch.tensor(
        [[0.0, 0.0], [0.9999, 0.9999], [0.0, 0.5], [0.5, 0.0], [0.02, 0.97], [0.97, 0.02]]
    )
    sampled = shared_point_sample(maps, coords)
    assert sampled.shape == (300, 7)
    expected = point_sample(maps[None], coords[None])[0]
    torch.testing.assert_close(sampled.t(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        shared_point_sample(maps[4:5], coords)[:, 0], expected[4], rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="coords"):
        shared_point_sample(maps, coords[None])


def test_matches_equal_those_of_the_plain_costs():
    """The matcher's costs (shared sampler, shared probabilities) choose what grid_sample and the textbook BCE and
    Dice choose, on random predictions and targets with the same points."""
    g = torch.Generator().manual_seed(1)
    queries, num_targets, points = 30, 6, 500
    pred_masks = torch.randn(queries, 16, 12, generator=g) * 4
    class_logits = torch.randn(queries, 4, generator=g)
    masks = (torch.rand(num_targets, 64, 48, generator=g) > 0.6).float()
    labels = torch.randint(0, 3, (num_targets,), generator=g)
    matcher = HungarianMatcher(num_points=points)
    outputs = {"pred_logits": class_logits[None], "pred_masks": pred_masks[None]}
    ((q, t),) = matcher(
        outputs, [{"labels": labels, "masks": masks}], generator=torch.Generator().manual_seed(5)
    )
    coords = random_points(1, points, generator=torch.Generator().manual_seed(5))
    pred = point_sample(pred_masks[None], coords)[0]
    target = point_sample(masks[None], coords)[0]
    bce = F.binary_cross_entropy_with_logits(
        pred[:, None].expand(-1, num_targets, -1), target[None].expand(queries, -1, -1), reduction="none"
    ).mean(-1)
    sig = pred.sigmoid()
    dice = 1 - (2 * sig @ target.t() + 1) / (sig.sum(-1)[:, None] + target.sum(-1)[None] + 1)
    cost = -2.0 * class_logits.softmax(-1)[:, labels] + 5.0 * bce + 5.0 * dice
    rows, cols = linear_sum_assignment(cost.numpy())
    assert q.tolist() == rows.tolist() and t.tolist() == cols.tolist()


def test_point_sample_reads_pixel_centres_and_interpolates():
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    centres = torch.tensor([[[(j + 0.5) / 4, (i + 0.5) / 3] for i in range(3) for j in range(4)]])
    assert torch.allclose(point_sample(image, centres)[0, 0], torch.arange(12.0), atol=1e-5)
    midpoint = torch.tensor(
        [[[1.0 / 4, 0.5 / 3]]]
    )  # halfway between pixels (0,0) and (0,1): x is the width axis
    assert point_sample(image, midpoint).item() == pytest.approx(0.5)


def test_object_mode_recovers_a_known_permutation():
    queries, classes = 6, 4
    patterns = _patterns(queries)
    query_class = torch.tensor([0, 1, 2, 3, 0, 1])
    pred_logits = F.one_hot(query_class, classes + 1).float()[None] * 8.0
    outputs = {"pred_logits": pred_logits, "pred_masks": _logits(patterns)[None]}
    perm = torch.tensor([4, 1, 5, 2])  # target t is the mask of query perm[t]
    targets = [{"labels": query_class[perm], "masks": _upsample(patterns[perm])}]
    matcher = HungarianMatcher(num_points=256)
    ((q, t),) = matcher(outputs, targets, generator=torch.Generator().manual_seed(0))
    assert dict(zip(t.tolist(), q.tolist())) == dict(enumerate(perm.tolist()))
    assert q.tolist() == sorted(q.tolist())


def test_class_cost_decides_between_identical_masks():
    mask = _patterns(1)[0]
    pred_logits = torch.tensor(
        [[[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]]]
    )  # query 0 says class 0, query 1 says class 1
    outputs = {"pred_logits": pred_logits, "pred_masks": _logits(torch.stack([mask, mask]))[None]}
    targets = [{"labels": torch.tensor([1]), "masks": _upsample(mask[None])}]
    ((q, t),) = HungarianMatcher(num_points=64)(outputs, targets)
    assert q.tolist() == [1] and t.tolist() == [0]


def test_grounding_logits_use_cosine_and_clamped_scale():
    texts = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    queries = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    logits = grounding_logits(queries, texts, math.log(10.0))
    assert torch.allclose(logits, 10 * torch.tensor([[1.0, 0.0], [0.5**0.5, 0.5**0.5]]), atol=1e-5)
    clamped = grounding_logits(queries, texts, torch.tensor(10.0))  # exp(10) > 100 -> 100
    assert clamped[0, 0].item() == pytest.approx(100.0, rel=1e-5)


def test_grounding_mode_matches_by_text_when_masks_are_identical():
    mask = _patterns(1)[0]
    dim = 4
    pred_gtexts = torch.eye(dim)[None, :3]  # query q points along axis q
    outputs = {"pred_gmasks": _logits(torch.stack([mask] * 3))[None], "pred_gtexts": pred_gtexts}
    targets = [
        {
            "grounding_masks": _upsample(torch.stack([mask, mask])),
            "grounding_class_embs": torch.tensor([[0.0, 0.0, 5.0, 0.0], [0.0, 1.0, 0.0, 0.0]]),
            "grounding_hash": [7, 8],
            "grounding_mode": "text",
        }
    ]
    ((q, t),) = HungarianMatcher(num_points=64)(outputs, targets, "grounding", logit_scale=math.log(20.0))
    assert dict(zip(t.tolist(), q.tolist())) == {0: 2, 1: 1}


def test_grounding_mode_recovers_a_permutation_from_masks():
    patterns = _patterns(5, seed=3)
    outputs = {"pred_gmasks": _logits(patterns)[None], "pred_gtexts": torch.randn(1, 5, 8)}
    perm = torch.tensor([3, 0])
    targets = [
        {
            "grounding_masks": _upsample(patterns[perm]),
            "grounding_class_embs": torch.randn(2, 8),
            "grounding_hash": [1, 1],
            "grounding_mode": "class",
        }
    ]
    ((q, t),) = HungarianMatcher(num_points=256)(outputs, targets, "grounding", logit_scale=0.0)
    assert dict(zip(t.tolist(), q.tolist())) == {0: 3, 1: 0}


def test_images_without_grounding_or_targets_get_empty_matches():
    patterns = _patterns(3)
    outputs = {
        "pred_gmasks": _logits(patterns)[None].repeat(2, 1, 1, 1),
        "pred_gtexts": torch.randn(2, 3, 4),
        "pred_logits": torch.randn(2, 3, 3),
        "pred_masks": _logits(patterns)[None].repeat(2, 1, 1, 1),
    }
    targets = [
        {
            "grounding_masks": None,
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, 32, 32),
        },
        {
            "grounding_masks": torch.zeros(0, 32, 32),
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, 32, 32),
        },
    ]
    matcher = HungarianMatcher(num_points=16)
    for mode in ("grounding", "object"):
        for q, t in matcher(outputs, targets, mode):
            assert q.numel() == 0 and t.numel() == 0 and q.dtype == torch.long


def test_spatial_mode_only_matches_within_each_prompts_queries():
    a, b = _patterns(2, seed=5)
    junk = ~a  # far from both targets... and from b where a and b differ
    # query_number = 2, prompts = 2: queries 0,1 belong to prompt 0 and queries 2,3 to prompt 1.
    smasks = torch.stack([b, a, junk, b]).float()
    smasks[3, :2] = 1 - smasks[3, :2]  # query 3: a slightly damaged copy of b; query 0 is the perfect b
    outputs = {
        "pred_smasks": _logits(smasks.bool())[None],
        "pred_smaskembs": torch.zeros(1, 4, 8),
        "pred_pspatials": torch.zeros(1, 2, 8),
    }
    targets = [{"gt_spatial_masks": _upsample(torch.stack([a, b]))}]
    ((q, t),) = HungarianMatcher(num_points=256)(
        outputs, targets, "spatial", generator=torch.Generator().manual_seed(1)
    )
    assert dict(zip(t.tolist(), q.tolist())) == {0: 1, 1: 3}
    # Unconstrained matching would give query 0 (the perfect copy) to target 1.
    free = {"pred_logits": torch.zeros(1, 4, 2), "pred_masks": outputs["pred_smasks"]}
    ((fq, ft),) = HungarianMatcher(cost_class=0.0, num_points=256)(
        free, [{"labels": torch.tensor([0, 0]), "masks": targets[0]["gt_spatial_masks"]}]
    )
    assert dict(zip(ft.tolist(), fq.tolist()))[1] == 0


def test_spatial_class_cost_picks_the_query_closest_to_the_prompt():
    mask = _patterns(1)[0]
    embs = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    outputs = {
        "pred_smasks": _logits(torch.stack([mask] * 4))[None],
        "pred_smaskembs": embs,
        "pred_pspatials": torch.tensor([[[0.0, 9.0], [0.0, 9.0]]]),
    }
    targets = [{"gt_spatial_masks": _upsample(torch.stack([mask, mask]))}]
    ((q, t),) = HungarianMatcher(num_points=64)(outputs, targets, "spatial")
    assert q.tolist() == [1, 2] and t.tolist() == [0, 1]


def test_spatial_targets_may_be_fewer_than_prompts_but_not_more():
    masks = _patterns(3)
    outputs = {
        "pred_smasks": _logits(torch.cat([masks, masks]))[None],
        "pred_smaskembs": torch.randn(1, 6, 4),
        "pred_pspatials": torch.randn(1, 3, 4),
    }
    ((q, t),) = HungarianMatcher(num_points=32)(
        outputs, [{"gt_spatial_masks": _upsample(masks[:1])}], "spatial"
    )
    assert t.tolist() == [0] and q.item() in (0, 1)
    with pytest.raises(ValueError, match="gt_spatial_masks"):
        HungarianMatcher(num_points=32)(
            outputs, [{"gt_spatial_masks": _upsample(torch.cat([masks, masks[:1]]))}], "spatial"
        )


def test_generator_makes_matching_reproducible_and_errors_are_named():
    outputs = {"pred_logits": torch.randn(1, 5, 3), "pred_masks": torch.randn(1, 5, 8, 8)}
    targets = [{"labels": torch.tensor([0, 1, 1]), "masks": torch.rand(3, 32, 32) > 0.5}]
    matcher = HungarianMatcher(num_points=16)
    first = matcher(outputs, targets, generator=torch.Generator().manual_seed(4))
    second = matcher(outputs, targets, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for x, y in zip(first, second) for a, b in zip(x, y))
    with pytest.raises(KeyError, match="labels"):
        matcher(outputs, [{"masks": targets[0]["masks"]}])
    with pytest.raises(ValueError, match="mode"):
        matcher(outputs, targets, "semantic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=0)
