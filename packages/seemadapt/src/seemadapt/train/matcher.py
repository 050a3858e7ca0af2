"""Hungarian matching of SEEM's queries to ground-truth masks (one image at a time, one prediction layer at a time).

The cost of giving query ``q`` to target ``t`` is ``cost_class * class_cost + cost_mask * BCE + cost_dice * Dice``,
with BCE and Dice read at ``num_points`` uniform points shared by every mask of the image (cheap, and the same points
for all pairs keeps the costs comparable). Three modes:

* ``"object"``: class cost ``-softmax(pred_logits)[q, label_t]``, masks ``pred_masks`` vs ``masks``.
* ``"grounding"``: logits ``exp(logit_scale).clamp(max=100) * cos(pred_gtexts[q], grounding_class_embs[t])``, class
  cost ``-softmax`` over the **queries** (each text picks a query), masks ``pred_gmasks`` vs ``grounding_masks``.
* ``"spatial"``: logits ``pred_smaskembs @ pred_pspatials^T``; spatial query ``q`` belongs to prompt
  ``q // query_number`` (prompt-major layout of the decoder) and only prompt ``t``'s queries may take target ``t``.
  The groups are disjoint, so the assignment is the per-group minimum (what the Hungarian solver returns when the
  other entries are infinite) and is computed as such.

Targets are plain dicts, one per image (see :class:`SEEMTarget`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from seemadapt.model.postprocess import grounding_logits
from seemadapt.train.points import point_sample, random_points, shared_point_sample

MatchMode = Literal["object", "grounding", "spatial"]
Indices = list[tuple[Tensor, Tensor]]


class SEEMTarget(TypedDict, total=False):
    """Training targets of one image. Masks are at the **padded input size** ``[H, W]`` of the batch (zero-padded
    bottom/right like the images), so normalised point coordinates mean the same place in predictions and targets.

    * ``labels``: int64 ``[N]`` contiguous class ids in ``0..K-1`` (object mode; required for the mask losses).
    * ``masks``: bool/float ``[N, H, W]``.
    * ``grounding_masks``: ``[n, H, W]`` or ``None`` (image without grounding; also accepted: ``n == 0``).
    * ``grounding_class_embs``: float ``[n, D]``, the EOT embedding of each grounding text, duplicates included.
    * ``grounding_hash``: ``[n]`` ints (list, array or tensor); equal values mark identical texts.
    * ``grounding_mode``: ``"text"`` or ``"class"`` (selects the per-image weight of the grounding CE).
    * ``gt_spatial_masks``: ``[n_s, H, W]``, one target per spatial prompt (``n_s`` at most the prompt count).
    """

    labels: Tensor
    masks: Tensor
    grounding_masks: Tensor | None
    grounding_class_embs: Tensor
    grounding_hash: Sequence[int] | Tensor
    grounding_mode: str
    gt_spatial_masks: Tensor


def pairwise_bce(logits: Tensor, targets: Tensor, probs: Tensor | None = None) -> Tensor:
    """Mean sigmoid BCE over points for every pair: ``logits [Q, P]``, ``targets [N, P]`` -> ``[Q, N]``.

    ``BCE(x, t) = x - log σ(x) - x t``: one product with the targets (a row of ones appended gives ``Σ x`` in the
    same pass) and a row sum of ``log σ``, taken from ``probs = sigmoid(logits)`` (pass them when the caller has them,
    as :meth:`HungarianMatcher.mask_cost` does for Dice): a log pass costs a sixth of torch's CPU softplus, and the
    matcher runs per image, layer and mode (40 times a Focal-T step). Rows where σ underflows to 0 (logits below -88)
    take the softplus instead. Equal to the two-term form ``softplus(-x) t + softplus(x) (1 - t)`` up to float
    rounding.
    """
    probs = logits.sigmoid() if probs is None else probs
    log_probs = probs.log().sum(-1)  # = -Σ softplus(-x)
    underflow = ~torch.isfinite(log_probs)
    if underflow.any():
        log_probs[underflow] = -F.softplus(-logits[underflow]).sum(-1)
    products = logits @ _with_ones(targets).t()  # [Q, N + 1]: Σ x t per target, then Σ x
    return ((products[:, -1] - log_probs)[:, None] - products[:, :-1]) / logits.shape[1]


def pairwise_dice(logits: Tensor, targets: Tensor, probs: Tensor | None = None) -> Tensor:
    """``1 - (2 Σσt + 1) / (Σσ + Σt + 1)`` for every pair: ``logits [Q, P]``, ``targets [N, P]`` -> ``[Q, N]``
    (``probs``: ``sigmoid(logits)`` if the caller has them). ``Σ 2σt`` and ``Σσ`` come from one product (doubling
    the ``N`` target rows, not the ``[Q, P]`` probabilities)."""
    probs = logits.sigmoid() if probs is None else probs
    products = probs @ _with_ones(2 * targets).t()  # [Q, N + 1]: Σ 2σt per target, then Σσ
    denominator = products[:, -1:] + targets.sum(-1)[None, :]
    return 1 - (products[:, :-1] + 1) / (denominator + 1)


def _with_ones(rows: Tensor) -> Tensor:
    """``rows [N, P]`` with a row of ones appended: its product gives the row sums of the other factor too."""
    return torch.cat([rows, rows.new_ones(1, rows.shape[1])])


def has_grounding(target: Mapping[str, Any]) -> bool:
    """Whether an image has grounding masks (``None`` or zero masks means it has none)."""
    masks = target.get("grounding_masks")
    return masks is not None and len(masks) > 0


def _require(target: Mapping[str, Any], keys: Sequence[str], mode: str) -> None:
    missing = [k for k in keys if k not in target]
    if missing:
        raise KeyError(f"HungarianMatcher: mode {mode!r} needs target keys {missing} (see SEEMTarget).")


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising the weighted class + BCE + Dice cost.

    Returns, per image, ``(query_indices, target_indices)`` int64 tensors on the predictions' device, sorted by query.
    Unmatched queries are simply absent. Runs without gradients.
    """

    def __init__(
        self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0, num_points: int = 12544
    ) -> None:
        super().__init__()
        if min(cost_class, cost_mask, cost_dice) < 0 or cost_class == cost_mask == cost_dice == 0:
            raise ValueError("HungarianMatcher: costs must be >= 0 and not all zero.")
        if num_points < 1:
            raise ValueError(f"HungarianMatcher: num_points must be >= 1, got {num_points}.")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def extra_repr(self) -> str:
        return f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, num_points={self.num_points}"

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[Mapping[str, Any]],
        mode: MatchMode = "object",
        *,
        logit_scale: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> Indices:
        """Match one prediction layer (a dict with the decoder's keys) against ``targets`` (one dict per image).

        Costs are computed in float32 with autocast off (as the official matcher), whatever the training precision.
        """
        device = next(v for v in outputs.values() if isinstance(v, Tensor)).device
        with torch.autocast(device_type=device.type, enabled=False):
            return self._match(outputs, targets, mode, logit_scale, generator)

    def _match(self, outputs, targets, mode, logit_scale, generator) -> Indices:
        if mode == "object":
            return [self._match_object(outputs, b, t, generator) for b, t in enumerate(targets)]
        if mode == "grounding":
            if logit_scale is None and any(has_grounding(t) for t in targets):
                raise ValueError(
                    "HungarianMatcher: mode 'grounding' needs logit_scale (the language encoder's)."
                )
            return [
                self._match_grounding(outputs, b, t, logit_scale, generator) for b, t in enumerate(targets)
            ]
        if mode == "spatial":
            return [self._match_spatial(outputs, b, t, generator) for b, t in enumerate(targets)]
        raise ValueError(f"HungarianMatcher: mode must be 'object', 'grounding' or 'spatial', got {mode!r}.")

    def mask_cost(
        self, pred_masks: Tensor, target_masks: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """``cost_mask * BCE + cost_dice * Dice`` ``[Q, N]`` at shared random points (``pred [Q,h,w]``, ``target [N,H,W]``)."""
        coords = random_points(1, self.num_points, device=pred_masks.device, generator=generator)
        pred = shared_point_sample(pred_masks.float(), coords[0]).t()  # [Q, P], a view of [P, Q]
        target = point_sample(target_masks[None].to(pred), coords)[0]  # [N, P]
        probs = pred.sigmoid()
        bce = pairwise_bce(pred, target, probs)
        return self.cost_mask * bce + self.cost_dice * pairwise_dice(pred, target, probs)

    def _match_object(
        self, outputs: Mapping[str, Any], b: int, target: Mapping[str, Any], generator
    ) -> tuple[Tensor, Tensor]:
        _require(target, ("labels", "masks"), "object")
        labels = torch.as_tensor(target["labels"], dtype=torch.long, device=outputs["pred_logits"].device)
        if len(labels) == 0:
            return _empty(outputs["pred_logits"].device)
        probs = outputs["pred_logits"][b].float().softmax(-1)  # [Q, K+1]
        if labels.min() < 0 or labels.max() >= probs.shape[-1] - 1:
            raise ValueError(
                f"HungarianMatcher: labels must be in [0, {probs.shape[-1] - 2}] (K = pred_logits width - 1), "
                f"got {labels.tolist()}."
            )
        cost = self.cost_class * -probs[:, labels] + self.mask_cost(
            outputs["pred_masks"][b], target["masks"], generator
        )
        return _hungarian(cost)

    def _match_grounding(
        self, outputs: Mapping[str, Any], b: int, target: Mapping[str, Any], logit_scale, generator
    ) -> tuple[Tensor, Tensor]:
        device = outputs["pred_gmasks"].device
        if not has_grounding(target):
            return _empty(device)
        _require(target, ("grounding_class_embs",), "grounding")
        logits = grounding_logits(
            outputs["pred_gtexts"][b].float(), target["grounding_class_embs"], logit_scale
        )
        cost = self.cost_class * -logits.softmax(dim=0)
        cost = cost + self.mask_cost(outputs["pred_gmasks"][b], target["grounding_masks"], generator)
        return _hungarian(cost)

    def _match_spatial(
        self, outputs: Mapping[str, Any], b: int, target: Mapping[str, Any], generator
    ) -> tuple[Tensor, Tensor]:
        _require(target, ("gt_spatial_masks",), "spatial")
        smasks = outputs["pred_smasks"][b]
        gt = target["gt_spatial_masks"]
        num_prompts = outputs["pred_pspatials"].shape[1]
        query_number = spatial_query_number(smasks.shape[0], num_prompts)
        n = len(gt)
        if n == 0:
            return _empty(smasks.device)
        if n > num_prompts:
            raise ValueError(
                f"HungarianMatcher: image {b} has {n} gt_spatial_masks but only {num_prompts} prompts."
            )
        logits = (
            outputs["pred_smaskembs"][b].float() @ outputs["pred_pspatials"][b].float().t()
        )  # [S, prompts]
        own = torch.arange(n, device=smasks.device)
        # block j: the query_number queries of prompt j against target j -> [n, query_number]
        own_logits = logits.view(num_prompts, query_number, num_prompts)[own, :, own]
        mask_cost = self.mask_cost(smasks, gt, generator).view(num_prompts, query_number, n)[own, :, own]
        cost = self.cost_class * -own_logits.softmax(dim=1) + mask_cost
        queries = own * query_number + cost.argmin(dim=1)
        return queries, own


def spatial_query_number(num_queries: int, num_prompts: int) -> int:
    """Spatial queries per prompt; the decoder lays them out prompt-major (``q // query_number`` is the prompt)."""
    if num_prompts < 1 or num_queries % num_prompts:
        raise ValueError(
            f"spatial outputs: {num_queries} spatial queries are not a multiple of the {num_prompts} prompts "
            "(pred_smasks must have query_number * pred_pspatials.shape[1] queries)."
        )
    return num_queries // num_prompts


def _empty(device: torch.device) -> tuple[Tensor, Tensor]:
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return empty, empty.clone()


def _hungarian(cost: Tensor) -> tuple[Tensor, Tensor]:
    if not torch.isfinite(cost).all():
        raise ValueError("HungarianMatcher: the matching cost has NaN/inf entries (NaN predictions?).")
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = cost.device
    return (
        torch.as_tensor(np.asarray(rows), dtype=torch.long, device=device),
        torch.as_tensor(np.asarray(cols), dtype=torch.long, device=device),
    )
