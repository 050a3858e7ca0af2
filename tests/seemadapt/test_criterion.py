"""SEEM losses on hand-made tensors: exact values, normalisers, grounding smoothing, spatial groups, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seemadapt.train import CriterionConfig, SEEMCriterion
from seemadapt.train import criterion as criterion_module
from seemadapt.train.criterion import dice_loss, global_num_masks, grounding_ce, sigmoid_bce_loss
from seemadapt.train.points import importance_points, point_sample

POINTS = 64
H = W = 32  # padded input size; predictions are 8x8 (stride 4)


def _patterns(n: int, seed: int = 0, size: int = 8) -> torch.Tensor:
    return torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed)) > 0.5


def _logits(patterns: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    return (patterns.float() * 2 - 1) * scale


def _up(patterns: torch.Tensor) -> torch.Tensor:
    return patterns.repeat_interleave(4, -2).repeat_interleave(4, -1)


def _criterion(**overrides) -> SEEMCriterion:
    return SEEMCriterion(CriterionConfig(num_points=POINTS, **overrides))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_layer(
    seed: int,
    batch: int = 2,
    queries: int = 5,
    classes: int = 3,
    dim: int = 8,
    prompts: int = 2,
    query_number: int = 2,
) -> dict[str, torch.Tensor]:
    g = _gen(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_()

    spatial = prompts * query_number
    return {
        "pred_logits": leaf(batch, queries, classes + 1),
        "pred_masks": leaf(batch, queries, 8, 8),
        "pred_gmasks": leaf(batch, queries, 8, 8),
        "pred_gtexts": leaf(batch, queries, dim),
        "pred_smasks": leaf(batch, spatial, 8, 8),
        "pred_smaskembs": leaf(batch, spatial, dim),
        "pred_pspatials": leaf(batch, prompts, dim),
    }


def _random_targets(seed: int = 0, dim: int = 8) -> list[dict]:
    g = _gen(seed)
    masks = lambda n: torch.rand(n, H, W, generator=g) > 0.5  # noqa: E731
    return [
        {
            "labels": torch.tensor([0, 2]),
            "masks": masks(2),
            "grounding_masks": masks(2),
            "grounding_class_embs": torch.randn(2, dim, generator=g),
            "grounding_hash": [3, 3],
            "grounding_mode": "text",
            "gt_spatial_masks": masks(2),
        },
        {
            "labels": torch.tensor([1]),
            "masks": masks(1),
            "grounding_masks": masks(1),
            "grounding_class_embs": torch.randn(1, dim, generator=g),
            "grounding_hash": [9],
            "grounding_mode": "class",
            "gt_spatial_masks": masks(1),
        },
    ]


def _deep_outputs(layers: int = 3) -> dict:
    outputs = _random_layer(100)
    outputs["aux_outputs"] = [_random_layer(i) for i in range(layers - 1)]
    return outputs


# ---------------------------------------------------------------- point losses and point sampling


def test_dice_and_bce_values_on_hand_made_points():
    t = (torch.rand(2, 50, generator=_gen(1)) > 0.5).float()
    right, wrong = (2 * t - 1) * 30, (1 - 2 * t) * 30
    assert dice_loss(right, t, 2) < 1e-6 and sigmoid_bce_loss(right, t, 2) < 1e-6
    assert dice_loss(wrong, t, 2).item() == pytest.approx(50 / 51, rel=1e-5)  # 1 - 1/(P + 1) per mask
    assert sigmoid_bce_loss(wrong, t, 2).item() == pytest.approx(30.0, rel=1e-4)
    zero = torch.zeros(2, 50)
    assert sigmoid_bce_loss(zero, t, 1).item() == pytest.approx(
        2 * math.log(2)
    )  # sum over masks / normaliser
    # dice with sigma = 0.5 everywhere against a mask with k ones: 1 - (k + 1) / (25 + k + 1)
    k = t[0].sum().item()
    assert dice_loss(zero[:1], t[:1], 1).item() == pytest.approx(1 - (k + 1) / (25 + k + 1), rel=1e-6)


def test_importance_sampling_picks_the_most_uncertain_points():
    logits = torch.full((1, 1, 16, 16), 10.0)
    logits[..., 8:] = 0.0  # right half: maximally uncertain
    coords = importance_points(
        logits, 64, oversample_ratio=3.0, importance_sample_ratio=0.75, generator=_gen(0)
    )
    assert coords.shape == (1, 64, 2)
    important, rest = coords[0, :48], coords[0, 48:]
    # Every importance point lies in the uncertain half (one pixel of bilinear blur allowed).
    assert (important[:, 0] >= 0.5 - 1 / 16).all()
    assert (rest[:, 0] < 0.5).any()  # the random share is not restricted to it
    everything = importance_points(logits, 64, 3.0, 1.0, generator=_gen(0))
    assert (point_sample(logits, everything).abs() < 10).all()


def test_point_losses_read_prediction_and_target_at_the_same_points():
    crit = _criterion(importance_sample_ratio=0.0)
    pred = torch.empty(1, 8, 8)
    pred[:, :, :4] = 20.0  # left half on
    pred[:, :, 4:] = -20.0
    target = torch.zeros(1, H, W)
    target[:, :, : W // 2] = 1.0
    bce, dice = crit.point_losses(pred, target, 1.0, generator=_gen(3))
    swapped_bce, _ = crit.point_losses(pred, target.transpose(1, 2), 1.0, generator=_gen(3))
    assert (
        bce.item() < 0.5 < swapped_bce.item()
    )  # a transposed target (top half) disagrees at half of the points
    assert dice.item() < 0.1


# ---------------------------------------------------------------- mask classification and normalisation


def test_mask_ce_is_weighted_cross_entropy_with_unmatched_queries_as_no_object():
    patterns = _patterns(3, seed=2)
    logits = torch.randn(1, 3, 3, generator=_gen(5))  # K = 2
    outputs = {"pred_logits": logits, "pred_masks": _logits(patterns)[None]}
    targets = [{"labels": torch.tensor([1, 0]), "masks": _up(patterns[[2, 0]])}]
    losses = _criterion().layer_losses(outputs, targets, num_masks=2.0, generator=_gen(0))
    classes = [
        0,
        2,
        1,
    ]  # query 0 <- target 1 (label 0), query 1 unmatched (no object), query 2 <- target 0 (label 1)
    weights = [1.0, 0.1, 1.0]
    nll = [-torch.log_softmax(logits[0, q], -1)[c].item() for q, c in enumerate(classes)]
    expected = sum(w * v for w, v in zip(weights, nll)) / sum(weights)
    assert losses["loss_mask_ce"].item() == pytest.approx(expected, rel=1e-5)
    reference = F.cross_entropy(logits[0], torch.tensor(classes), weight=torch.tensor([1.0, 1.0, 0.1]))
    assert losses["loss_mask_ce"].item() == pytest.approx(reference.item(), rel=1e-6)


def _normalisation_case() -> tuple[dict, list[dict]]:
    """Image 0: one empty GT mask, predictions 0 everywhere (BCE = log 2 at any point). Image 1: three empty GT masks,
    predictions -100 (BCE and Dice ~0)."""
    masks = torch.zeros(2, 4, 8, 8)
    masks[1] = -100.0
    outputs = {"pred_logits": torch.zeros(2, 4, 2, requires_grad=True), "pred_masks": masks.requires_grad_()}
    targets = [
        {"labels": torch.tensor([0]), "masks": torch.zeros(1, H, W)},
        {"labels": torch.tensor([0, 0, 0]), "masks": torch.zeros(3, H, W)},
    ]
    return outputs, targets


def test_mask_losses_are_normalised_by_the_number_of_gt_masks_in_the_batch():
    outputs, targets = _normalisation_case()
    losses = _criterion(deep_supervision=False)(outputs, targets, generator=_gen(0))
    dice_zero = 1 - 1 / (0.5 * POINTS + 1)  # sigma = 0.5 at every point of an empty target
    assert losses["loss_mask_bce_0"].item() == pytest.approx(
        5.0 * math.log(2) / 4, rel=1e-5
    )  # not / 2 images
    assert losses["loss_mask_dice_0"].item() == pytest.approx(5.0 * dice_zero / 4, rel=1e-5)


def test_num_masks_is_averaged_over_processes(monkeypatch):
    outputs, targets = _normalisation_case()

    def all_reduce(tensor):  # the other process holds 12 masks
        tensor += 12.0

    monkeypatch.setattr(criterion_module.dist, "is_available", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(criterion_module.dist, "all_reduce", all_reduce)
    losses = _criterion(deep_supervision=False)(outputs, targets, generator=_gen(0))
    assert losses["loss_mask_bce_0"].item() == pytest.approx(5.0 * math.log(2) / 8, rel=1e-5)  # (4 + 12) / 2
    assert global_num_masks(0, torch.device("cpu")) == 6.0


def test_num_masks_is_at_least_one_without_distributed():
    assert global_num_masks(0, torch.device("cpu")) == 1.0
    assert global_num_masks(7, torch.device("cpu")) == 7.0


# ---------------------------------------------------------------- grounding


def _grounding_case(text_hash: list[int], mode: str = "text") -> tuple[dict, list[dict], float]:
    a, b = _patterns(2, seed=7)
    gmasks = torch.stack([_logits(a), _logits(b), torch.full((8, 8), -10.0)])
    outputs = {
        "pred_gmasks": gmasks[None].requires_grad_(),
        "pred_gtexts": torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], requires_grad=True),
    }
    targets = [
        {
            "grounding_masks": _up(torch.stack([a, b])),
            "grounding_class_embs": torch.tensor([[1.0, 0.0], [0.6, 0.8]]),
            "grounding_hash": text_hash,
            "grounding_mode": mode,
        }
    ]
    return outputs, targets, math.log(10.0)


def _log_softmax(values: list[float]) -> list[float]:
    top = max(values)
    norm = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - norm for v in values]


# columns of the 3-query x 2-text logits: 10 * cos(query, text)
_COLUMN_0 = _log_softmax([10.0, 0.0, 10.0 / math.sqrt(2)])
_COLUMN_1 = _log_softmax([6.0, 8.0, 10.0 * 1.4 / math.sqrt(2)])


def test_grounding_ce_smooths_duplicate_texts_over_their_matched_queries():
    outputs, targets, scale = _grounding_case([5, 5])
    losses = _criterion().grounding_losses(outputs, targets, logit_scale=scale, generator=_gen(0))
    # matches: text 0 <- query 0, text 1 <- query 1; both texts identical, so each column's target is 1/2 on q0 and q1
    per_text = [-(0.5 * col[0] + 0.5 * col[1]) for col in (_COLUMN_0, _COLUMN_1)]
    assert losses["loss_grounding_ce"].item() == pytest.approx(
        2.0 * sum(per_text) / 2, rel=1e-5
    )  # 'text' weight 2


def test_grounding_ce_without_duplicates_and_with_class_mode():
    outputs, targets, scale = _grounding_case([5, 6], mode="class")
    losses = _criterion().grounding_losses(outputs, targets, logit_scale=scale, generator=_gen(0))
    expected = 0.5 * (-_COLUMN_0[0] - _COLUMN_1[1]) / 2  # 'class' weight 0.5, one-hot targets
    assert losses["loss_grounding_ce"].item() == pytest.approx(expected, rel=1e-5)
    # the function on its own, by hand: 2 queries x 1 text
    logits = torch.tensor([[2.0], [0.0]])
    value = grounding_ce(logits, torch.tensor([1]), torch.tensor([0]), torch.tensor([1]))
    assert value.item() == pytest.approx(-_log_softmax([2.0, 0.0])[1])


def test_grounding_mask_losses_are_normalised_by_matched_masks():
    outputs, targets, scale = _grounding_case([5, 6])
    crit = _criterion()
    losses = crit.grounding_losses(outputs, targets, logit_scale=scale, generator=_gen(0))
    gen = _gen(0)
    crit.matcher(outputs, targets, "grounding", logit_scale=scale, generator=gen)  # same random stream
    bce_sum, _ = crit.point_losses(
        outputs["pred_gmasks"][0, :2], targets[0]["grounding_masks"].float(), 1.0, gen
    )
    assert losses["loss_grounding_bce"].item() == pytest.approx(bce_sum.item() / 2, rel=1e-5)


def test_images_without_grounding_are_skipped_or_zero_the_batch():
    outputs, targets, scale = _grounding_case([5, 5])
    alone = _criterion().grounding_losses(outputs, targets, logit_scale=scale, generator=_gen(0))
    both = {k: torch.cat([v, v.detach()]) for k, v in outputs.items()}
    mixed = [*targets, {"grounding_masks": None, "grounding_mode": "text"}]
    skipped = _criterion().grounding_losses(both, mixed, logit_scale=scale, generator=_gen(0))
    assert skipped["loss_grounding_ce"].item() == pytest.approx(alone["loss_grounding_ce"].item(), rel=1e-6)
    zeroed = _criterion(grounding_missing="zero_batch").grounding_losses(both, mixed, logit_scale=scale)
    assert all(v.item() == 0.0 for v in zeroed.values())
    sum(zeroed.values()).backward()
    assert outputs["pred_gtexts"].grad is not None and outputs["pred_gmasks"].grad is not None


def test_grounding_needs_logit_scale_and_a_known_mode():
    outputs, targets, _ = _grounding_case([5, 5], mode="caption")
    with pytest.raises(ValueError, match="logit_scale"):
        _criterion().grounding_losses(outputs, targets)
    with pytest.raises(ValueError, match="grounding_mode"):
        _criterion().grounding_losses(outputs, targets, logit_scale=0.0)


# ---------------------------------------------------------------- spatial


def _spatial_case() -> tuple[dict, list[dict]]:
    a, b = _patterns(2, seed=5)
    smasks = torch.stack([b, a, ~a, b]).float()
    smasks[3, :2] = 1 - smasks[3, :2]
    outputs = {
        "pred_smasks": _logits(smasks.bool())[None].requires_grad_(),
        "pred_smaskembs": torch.randn(1, 4, 3, generator=_gen(8)).requires_grad_(),
        "pred_pspatials": torch.randn(1, 2, 3, generator=_gen(9)).requires_grad_(),
    }
    return outputs, [{"gt_spatial_masks": _up(torch.stack([a, b]))}]


def test_spatial_ce_uses_the_matched_query_within_each_prompt():
    outputs, targets = _spatial_case()
    losses = _criterion().spatial_losses(outputs, targets, generator=_gen(0))
    scores = (
        outputs["pred_smaskembs"][0] @ outputs["pred_pspatials"][0].t()
    ).tolist()  # [4 queries, 2 prompts]
    # prompt 0 may only take queries 0-1 (its target is query 1's mask); prompt 1 queries 2-3 (query 3)
    term0 = -_log_softmax([row[0] for row in scores])[1]
    term1 = -_log_softmax([row[1] for row in scores])[3]
    assert losses["loss_spatial_ce"].item() == pytest.approx((term0 + term1) / 2, rel=1e-5)


def test_spatial_prompts_with_empty_targets_are_left_out():
    outputs, targets = _spatial_case()
    targets[0]["gt_spatial_masks"][1] = False
    losses = _criterion().spatial_losses(outputs, targets, generator=_gen(0))
    scores = (outputs["pred_smaskembs"][0] @ outputs["pred_pspatials"][0].t()).tolist()
    assert losses["loss_spatial_ce"].item() == pytest.approx(
        -_log_softmax([r[0] for r in scores])[1], rel=1e-5
    )
    targets[0]["gt_spatial_masks"][0] = False
    empty = _criterion().spatial_losses(outputs, targets)
    assert all(v.item() == 0.0 for v in empty.values())
    sum(empty.values()).backward()
    assert all(outputs[k].grad is not None for k in outputs)


# ---------------------------------------------------------------- the whole criterion


def test_deep_supervision_names_every_layer_with_identical_weights():
    outputs, targets = _deep_outputs(3), _random_targets()
    weighted = _criterion()(outputs, targets, logit_scale=0.5, generator=_gen(1))
    ones = {
        f: 1.0
        for f in (
            "class_weight",
            "mask_weight",
            "dice_weight",
            "grounding_class_weight",
            "grounding_mask_weight",
            "grounding_dice_weight",
            "spatial_class_weight",
            "spatial_mask_weight",
            "spatial_dice_weight",
        )
    }
    unweighted = _criterion(**ones)
    unweighted.matcher = (
        _criterion().matcher
    )  # the matching costs use the weights too: keep the same matching
    raw = unweighted(outputs, targets, logit_scale=0.5, generator=_gen(1))
    names = CriterionConfig().loss_weights
    assert set(weighted) == {f"{n}_{i}" for n in names for i in range(3)} == set(_criterion().weight_dict(3))
    for key, value in weighted.items():
        name = key.rsplit("_", 1)[0]
        assert value.item() == pytest.approx(names[name] * raw[key].item(), rel=1e-5), key


def test_layer_suffix_counts_from_the_final_prediction():
    outputs, targets = _deep_outputs(3), _random_targets()
    # Every query of a layer gets the same class logits, so the CE depends on the labels only, not on the matching.
    vectors = {0: [1.0, 0.0, 0.0, 0.0], 1: [0.0, 2.0, 0.0, 0.0], 2: [0.0, 0.0, 0.0, 3.0]}
    layers = {0: outputs, 1: outputs["aux_outputs"][1], 2: outputs["aux_outputs"][0]}  # aux_outputs reversed
    for suffix, layer in layers.items():
        layer["pred_logits"] = torch.tensor(vectors[suffix]).expand(2, 5, 4).clone().requires_grad_()
    losses = _criterion()(outputs, targets, logit_scale=0.5, generator=_gen(1))
    # image 0: labels 0, 2 then 3 x no-object (K = 3); image 1: label 1 then 4 x no-object
    classes = [0, 2, 3, 3, 3, 1, 3, 3, 3, 3]
    for suffix, vector in vectors.items():
        log_p = _log_softmax(vector)
        weights = [0.1 if c == 3 else 1.0 for c in classes]
        expected = -sum(w * log_p[c] for w, c in zip(weights, classes)) / sum(weights)
        assert losses[f"loss_mask_ce_{suffix}"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    single = _criterion(deep_supervision=False)(outputs, targets, logit_scale=0.5)
    assert {k.rsplit("_", 1)[1] for k in single} == {"0"}


def test_gradients_reach_every_prediction_and_the_logit_scale():
    outputs, targets = _deep_outputs(3), _random_targets()
    logit_scale = torch.tensor(1.0, requires_grad=True)
    losses = _criterion()(outputs, targets, logit_scale=logit_scale, generator=_gen(2))
    total = SEEMCriterion.total(losses)
    assert torch.isfinite(total)
    total.backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        for key, value in layer.items():
            if isinstance(value, torch.Tensor):
                assert value.grad is not None and value.grad.abs().sum() > 0, key
    assert logit_scale.grad is not None and logit_scale.grad != 0


def test_images_without_any_targets_do_not_crash_and_keep_the_graph():
    outputs = _deep_outputs(2)
    empty = {
        "labels": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, H, W, dtype=torch.bool),
        "grounding_masks": None,
        "grounding_class_embs": torch.zeros(0, 8),
        "grounding_hash": [],
        "grounding_mode": "text",
        "gt_spatial_masks": torch.zeros(0, H, W, dtype=torch.bool),
    }
    losses = _criterion()(outputs, [empty, dict(empty)], logit_scale=0.0, generator=_gen(0))
    assert all(torch.isfinite(v) for v in losses.values())
    zero_terms = [k for k in losses if "_ce_" not in k or "mask" not in k]
    assert all(losses[k].item() == 0.0 for k in zero_terms)
    assert losses["loss_mask_ce_0"].item() > 0  # every query is pushed towards "no object"
    SEEMCriterion.total(losses).backward()
    for layer in [outputs, *outputs["aux_outputs"]]:
        assert all(v.grad is not None for k, v in layer.items() if isinstance(v, torch.Tensor)), sorted(layer)


def test_one_image_without_targets_in_a_batch():
    outputs, targets = _deep_outputs(2), _random_targets()
    targets[1] = {
        **targets[1],
        "labels": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(0, H, W),
        "grounding_masks": None,
        "gt_spatial_masks": torch.zeros(0, H, W),
    }
    losses = _criterion()(outputs, targets, logit_scale=0.0, generator=_gen(0))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_grounding_ce_0"] > 0


def test_seeded_generator_makes_losses_reproducible():
    outputs, targets = _deep_outputs(2), _random_targets()
    first = _criterion()(outputs, targets, logit_scale=0.0, generator=_gen(11))
    second = _criterion()(outputs, targets, logit_scale=0.0, generator=_gen(11))
    other = _criterion()(outputs, targets, logit_scale=0.0, generator=_gen(12))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "bce" in k)


def test_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="num_points"):
        CriterionConfig(num_points=0)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        CriterionConfig(importance_sample_ratio=1.5)
    with pytest.raises(ValueError, match="no_object_weight"):
        CriterionConfig(no_object_weight=-1.0)
    with pytest.raises(ValueError, match="grounding_missing"):
        CriterionConfig(grounding_missing="ignore")  # type: ignore[arg-type]
    outputs = {"pred_logits": torch.zeros(1, 3, 3), "pred_masks": torch.zeros(1, 3, 8, 8)}
    unpadded = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 24, 32)}]
    with pytest.raises(ValueError, match="padded input size"):
        _criterion()(outputs, unpadded)
    with pytest.raises(ValueError, match="labels"):
        _criterion()(outputs, [{"labels": torch.tensor([5]), "masks": torch.ones(1, H, W)}])
    with pytest.raises(ValueError, match="num_classes"):
        SEEMCriterion(CriterionConfig(num_points=POINTS), num_classes=4)(
            outputs, [{"labels": torch.tensor([0]), "masks": torch.ones(1, H, W)}]
        )


def test_num_classes_registers_the_official_empty_weight_buffer():
    crit = SEEMCriterion(num_classes=133)
    assert crit.state_dict()["empty_weight"].shape == (134,)
    assert crit.empty_weight[-1].item() == pytest.approx(0.1) and crit.empty_weight[:-1].eq(1).all()
    assert "empty_weight" not in SEEMCriterion().state_dict()
