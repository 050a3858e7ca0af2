"""SEEM's training losses: mask classification + point-sampled BCE/Dice, grounding, spatial, deep supervision.

For every prediction layer the queries are matched to the targets again (:class:`HungarianMatcher`) and these losses
(unweighted names, each multiplied by its weight in :class:`CriterionConfig`) are computed:

==========================  ====================================================================================
``loss_mask_ce``            weighted CE of ``pred_logits`` over ``K+1`` classes, unmatched queries -> class ``K``
                            (no object), class weights ``[1, ..., 1, no_object_weight]``; weighted mean.
``loss_mask_bce`` / dice    point losses on the matched ``pred_masks`` at importance-sampled points; sum over
                            masks of the per-mask mean, divided by ``num_masks`` (GT masks in the batch, averaged
                            over processes when ``torch.distributed`` is initialised, at least 1).
``loss_grounding_bce``/dice the same on the matched ``pred_gmasks`` vs ``grounding_masks``, divided by the number
                            of matched grounding masks of this process.
``loss_grounding_ce``       text->query CE with hash smoothing (:func:`grounding_ce`) times the image's mode weight,
                            averaged over the images that have grounding.
``loss_spatial_ce``         per prompt with a non-empty target, CE over all spatial queries of the image of
                            ``pred_smaskembs @ pred_pspatials^T``, target = its matched query; mean over prompts.
``loss_spatial_bce``/dice   point losses on the matched ``pred_smasks`` with non-empty targets, divided by their count.
==========================  ====================================================================================

Layer suffix (the official convention, so names match SEEM logs): ``_0`` is the **final** prediction (the top-level
keys of the decoder output), ``_1`` the one before it, ..., ``_{L-1}`` the prediction on the initial queries, i.e.
``aux_outputs`` reversed. With ``deep_supervision`` every layer has the same weights.

Grounding losses run when the outputs have ``pred_gmasks``; spatial losses when they have ``pred_smasks``. A loss
without anything to supervise is ``0 * sum(predictions)`` so the autograd graph (and DDP) sees every output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from seemadapt.model.postprocess import grounding_logits
from seemadapt.train.criterion_config import CriterionConfig
from seemadapt.train.matcher import HungarianMatcher, Indices, SEEMTarget, has_grounding
from seemadapt.train.points import importance_points, point_sample

__all__ = ["CriterionConfig", "SEEMCriterion", "SEEMTarget", "dice_loss", "grounding_ce", "sigmoid_bce_loss"]


def sigmoid_bce_loss(logits: Tensor, targets: Tensor, normalizer: float) -> Tensor:
    """Sum over masks of the mean sigmoid BCE over points, divided by ``normalizer`` (``logits, targets [M, P]``)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / normalizer


def dice_loss(logits: Tensor, targets: Tensor, normalizer: float) -> Tensor:
    """Sum over masks of ``1 - (2Σσt + 1) / (Σσ + Σt + 1)``, divided by ``normalizer`` (``[M, P]`` inputs)."""
    probs = logits.sigmoid()
    loss = 1 - (2 * (probs * targets).sum(-1) + 1) / (probs.sum(-1) + targets.sum(-1) + 1)
    return loss.sum() / normalizer


def grounding_ce(logits: Tensor, queries: Tensor, texts: Tensor, text_hash: Tensor) -> Tensor:
    """Text->query cross-entropy of one image with duplicate-text smoothing.

    ``logits [Q, n]`` (query x text), matched pairs ``(queries[i], texts[i])``. The one-hot ``G [Q, n]`` of the
    matches becomes ``G @ H`` with ``H[i, j] = [hash_i == hash_j] / |group of i|``, so identical texts share their
    matched queries as equally valid answers. Loss = mean over texts ``j`` of ``-Σ_q (G@H)[q, j] log_softmax_q(logits[:, j])``.
    """
    one_hot = torch.zeros_like(logits)
    one_hot[queries, texts] = 1
    same = (text_hash[:, None] == text_hash[None, :]).to(logits)
    soft = one_hot @ (same / same.sum(dim=1, keepdim=True))
    return -(soft * logits.log_softmax(dim=0)).sum(dim=0).mean()


def global_num_masks(count: int, device: torch.device) -> float:
    """``count`` averaged over processes when ``torch.distributed`` is initialised, clamped to at least 1."""
    total = torch.tensor([float(count)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        total = total / dist.get_world_size()
    return max(total.item(), 1.0)


class SEEMCriterion(nn.Module):
    """Matches every prediction layer to the targets and returns the weighted losses.

    ``num_classes`` (optional) registers the official ``empty_weight`` buffer ``[K+1]`` (so ``criterion.empty_weight``
    of a checkpoint has a home) and checks the logits' width; without it the class weights are built from the width.
    """

    def __init__(self, config: CriterionConfig | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else CriterionConfig()
        c = self.config
        self.matcher = HungarianMatcher(c.class_weight, c.mask_weight, c.dice_weight, c.num_points)
        self.num_classes = num_classes
        if num_classes is not None:
            if num_classes < 1:
                raise ValueError(f"SEEMCriterion: num_classes must be >= 1, got {num_classes}.")
            self.register_buffer("empty_weight", self._class_weights(num_classes + 1, torch.device("cpu")))

    def weight_dict(self, num_layers: int) -> dict[str, float]:
        """Weights of every suffixed loss name for ``num_layers`` predictions (1 without deep supervision)."""
        layers = num_layers if self.config.deep_supervision else 1
        return {f"{name}_{i}": w for i in range(layers) for name, w in self.config.loss_weights.items()}

    @staticmethod
    def total(losses: Mapping[str, Tensor]) -> Tensor:
        """The training loss: the plain sum of the (already weighted) terms."""
        if not losses:
            raise ValueError("SEEMCriterion.total: no losses to sum.")
        return torch.stack([v.float().reshape(()) for v in losses.values()]).sum()

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        *,
        logit_scale: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Weighted losses ``{name_l: tensor}`` (suffix convention in the module doc).

        ``outputs``: the decoder dict (``pred_logits``, ``pred_masks``, ``aux_outputs``, optional grounding/spatial
        keys). ``targets``: one :class:`SEEMTarget` dict per image. ``logit_scale``: the language encoder's raw
        ``logit_scale`` (needed with grounding). ``generator`` makes every random point reproducible.
        """
        if len(targets) != outputs["pred_masks"].shape[0]:
            raise ValueError(
                f"SEEMCriterion: {len(targets)} targets for a batch of {outputs['pred_masks'].shape[0]}."
            )
        layers = [{k: v for k, v in outputs.items() if k != "aux_outputs"}]
        if self.config.deep_supervision:
            layers += list(outputs.get("aux_outputs", []))[::-1]
        num_masks = global_num_masks(sum(len(t["labels"]) for t in targets), outputs["pred_masks"].device)
        weights = self.config.loss_weights
        losses: dict[str, Tensor] = {}
        for i, layer in enumerate(layers):
            for name, value in self.layer_losses(layer, targets, num_masks, logit_scale, generator).items():
                losses[f"{name}_{i}"] = value * weights[name]
        return losses

    def layer_losses(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        num_masks: float,
        logit_scale: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Unweighted losses of one prediction layer, by name without suffix."""
        losses = self.mask_losses(outputs, targets, num_masks, generator)
        # spatial before grounding, as SEEM: the random points are then the original's under the same seed
        if "pred_smasks" in outputs:
            losses.update(self.spatial_losses(outputs, targets, generator))
        if "pred_gmasks" in outputs:
            losses.update(self.grounding_losses(outputs, targets, logit_scale, generator))
        return losses

    def mask_losses(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        num_masks: float,
        generator=None,
    ) -> dict[str, Tensor]:
        """``loss_mask_ce``, ``loss_mask_bce``, ``loss_mask_dice`` of the object queries."""
        if "pred_logits" not in outputs:
            raise KeyError(
                "SEEMCriterion: the mask losses need 'pred_logits' (set the class text embeddings)."
            )
        indices = self.matcher(outputs, targets, "object", generator=generator)
        logits = outputs["pred_logits"].float()
        labels = [
            torch.as_tensor(t["labels"], dtype=torch.long, device=logits.device)[j]
            for t, (_, j) in zip(targets, indices)
        ]
        ce = self.class_loss(logits, indices, labels)
        masks = [t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)]
        bce, dice = self._matched_point_losses(
            outputs["pred_masks"], indices, masks, num_masks, generator, "masks"
        )
        return {"loss_mask_ce": ce, "loss_mask_bce": bce, "loss_mask_dice": dice}

    def class_loss(self, logits: Tensor, indices: Indices, labels: Sequence[Tensor]) -> Tensor:
        """Weighted CE of ``logits [B, Q, K+1]``: matched queries take their target's label, the others class ``K``."""
        num_classes = logits.shape[-1] - 1
        if self.num_classes is not None and num_classes != self.num_classes:
            raise ValueError(
                f"SEEMCriterion: pred_logits has {num_classes}+1 classes, criterion was built for "
                f"{self.num_classes}+1 (num_classes must equal the class count of the data)."
            )
        target = torch.full(logits.shape[:2], num_classes, dtype=torch.long, device=logits.device)
        batch, query = _batch_index(indices)
        if len(query):
            matched = torch.cat(labels)
            if matched.min() < 0 or matched.max() >= num_classes:
                raise ValueError(
                    f"SEEMCriterion: labels must be in [0, {num_classes - 1}] (K = pred_logits width - 1)."
                )
            target[batch, query] = matched
        return F.cross_entropy(
            logits.transpose(1, 2), target, weight=self._class_weights(num_classes + 1, logits.device)
        )

    def grounding_losses(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        logit_scale=None,
        generator=None,
    ) -> dict[str, Tensor]:
        """``loss_grounding_ce/bce/dice`` of the grounding queries (``pred_gmasks``, ``pred_gtexts``)."""
        active = [b for b, t in enumerate(targets) if has_grounding(t)]
        skip_all = self.config.grounding_missing == "zero_batch" and len(active) < len(targets)
        if not active or skip_all:
            zero = _zero(outputs["pred_gmasks"], outputs["pred_gtexts"])
            return {"loss_grounding_ce": zero, "loss_grounding_bce": zero, "loss_grounding_dice": zero}
        if logit_scale is None:
            raise ValueError(
                "SEEMCriterion: grounding losses need logit_scale (the language encoder's raw parameter)."
            )
        indices = self.matcher(outputs, targets, "grounding", logit_scale=logit_scale, generator=generator)
        masks = [
            t["grounding_masks"][j.to(t["grounding_masks"].device)] if has_grounding(t) else None
            for t, (_, j) in zip(targets, indices)
        ]
        num_matched = max(sum(len(q) for q, _ in indices), 1)
        bce, dice = self._matched_point_losses(
            outputs["pred_gmasks"], indices, masks, num_matched, generator, "grounding_masks"
        )
        ce = torch.stack(
            [self._grounding_ce_image(outputs, b, targets[b], indices[b], logit_scale) for b in active]
        )
        return {"loss_grounding_ce": ce.mean(), "loss_grounding_bce": bce, "loss_grounding_dice": dice}

    def _grounding_ce_image(
        self,
        outputs: Mapping[str, Any],
        b: int,
        target: Mapping[str, Any],
        match: tuple[Tensor, Tensor],
        logit_scale,
    ) -> Tensor:
        mode = target.get("grounding_mode")
        if mode not in self.config.grounding_mode_weights:
            raise ValueError(
                f"SEEMCriterion: target 'grounding_mode' must be one of "
                f"{sorted(self.config.grounding_mode_weights)}, got {mode!r}."
            )
        for key in ("grounding_class_embs", "grounding_hash"):
            if key not in target:
                raise KeyError(f"SEEMCriterion: grounding targets need {key!r} (see SEEMTarget).")
        logits = grounding_logits(
            outputs["pred_gtexts"][b].float(), target["grounding_class_embs"], logit_scale
        )
        text_hash = torch.as_tensor(target["grounding_hash"], device=logits.device).reshape(-1)
        if len(text_hash) != logits.shape[1]:
            raise ValueError(
                f"SEEMCriterion: image {b} has {logits.shape[1]} grounding texts but "
                f"{len(text_hash)} grounding_hash values."
            )
        return self.config.grounding_mode_weights[mode] * grounding_ce(logits, match[0], match[1], text_hash)

    def spatial_losses(
        self, outputs: Mapping[str, Any], targets: Sequence[Mapping[str, Any]], generator=None
    ) -> dict[str, Tensor]:
        """``loss_spatial_ce/bce/dice`` of the spatial queries; prompts whose target mask is empty are left out."""
        indices = self.matcher(outputs, targets, "spatial", generator=generator)
        kept: Indices = []
        rows, columns, masks = [], [], []
        for b, (t, (q, j)) in enumerate(zip(targets, indices)):
            gt = t["gt_spatial_masks"]
            keep = (gt.flatten(1).sum(-1) > 0).to(q.device)[j] if len(j) else j.bool()
            q, j = q[keep], j[keep]
            kept.append((q, j))
            scores = (
                outputs["pred_smaskembs"][b].float() @ outputs["pred_pspatials"][b].float().t()
            )  # [S, prompts]
            rows.append(scores.t()[j])
            columns.append(q)
            masks.append(gt[j.to(gt.device)])
        count = sum(len(q) for q, _ in kept)
        if count == 0:
            zero = _zero(outputs["pred_smasks"], outputs["pred_smaskembs"], outputs["pred_pspatials"])
            return {"loss_spatial_ce": zero, "loss_spatial_bce": zero, "loss_spatial_dice": zero}
        ce = F.cross_entropy(torch.cat(rows), torch.cat(columns))
        bce, dice = self._matched_point_losses(
            outputs["pred_smasks"], kept, masks, count, generator, "gt_spatial_masks"
        )
        return {"loss_spatial_ce": ce, "loss_spatial_bce": bce, "loss_spatial_dice": dice}

    def point_losses(
        self,
        pred_masks: Tensor,
        target_masks: Tensor,
        normalizer: float,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """BCE and Dice of ``pred_masks [M, h, w]`` (logits) vs ``target_masks [M, H, W]`` at importance points."""
        pred = pred_masks[:, None].float()
        c = self.config
        coords = importance_points(
            pred.detach(), c.num_points, c.oversample_ratio, c.importance_sample_ratio, generator=generator
        )
        with torch.no_grad():
            labels = point_sample(target_masks[:, None].to(pred), coords)[:, 0]
        logits = point_sample(pred, coords)[:, 0]
        return sigmoid_bce_loss(logits, labels, normalizer), dice_loss(logits, labels, normalizer)

    def _matched_point_losses(
        self,
        pred_masks: Tensor,
        indices: Indices,
        target_masks: Sequence[Tensor | None],
        normalizer: float,
        generator: torch.Generator | None,
        key: str,
    ) -> tuple[Tensor, Tensor]:
        batch, query = _batch_index(indices)
        chosen = [m for m in target_masks if m is not None and len(m)]
        if not chosen:
            zero = _zero(pred_masks)
            return zero, zero
        _check_geometry(pred_masks.shape[-2:], [m.shape[-2:] for m in chosen], key)
        target = torch.cat([m.to(pred_masks.device) for m in chosen])
        return self.point_losses(pred_masks[batch, query], target, normalizer, generator)

    def _class_weights(self, width: int, device: torch.device) -> Tensor:
        weight = torch.ones(width, device=device)
        weight[-1] = self.config.no_object_weight
        return weight


def _batch_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """Flattened ``(image index, query index)`` of all matches, in image order."""
    batch = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(indices)])
    return batch, torch.cat([q for q, _ in indices])


def _zero(*tensors: Tensor) -> Tensor:
    """A zero that depends on every tensor (keeps their autograd graph and DDP's used-parameter set intact)."""
    return sum(t.float().sum() * 0.0 for t in tensors)  # type: ignore[return-value]


def _check_geometry(pred_hw: torch.Size, target_hws: Sequence[torch.Size], key: str) -> None:
    """Targets must cover the same padded canvas as the predictions (same size across images, same aspect ratio)."""
    if len({tuple(hw) for hw in target_hws}) > 1:
        raise ValueError(
            f"SEEMCriterion: target {key!r} have different sizes {sorted({tuple(hw) for hw in target_hws})}; "
            "pad every mask to the batch's padded input size."
        )
    height, width = target_hws[0]
    if abs(height * pred_hw[1] - width * pred_hw[0]) > max(height, width):  # allows one pixel of rounding
        raise ValueError(
            f"SEEMCriterion: target {key!r} are {height}x{width} but predictions are "
            f"{pred_hw[0]}x{pred_hw[1]}; targets must be at the padded input size (4x the prediction)."
        )
