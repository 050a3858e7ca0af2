"""Interactive segmentation with SEEM: prompt rounds with memories and simulated corrective clicks.

SEEM refines a visual prompt over rounds: each round the decoder sees the prompt masks (positive and
negative) and, from the second round on, the previous round's mask through 32 learned *memory* prompts that
cross-attend inside it. A user (or a simulator) adds corrective clicks between rounds:

* :func:`next_click`: SEEM's click simulation. The error is split into false negatives (object missed) and false
  positives (background taken), leaving out pixels already clicked; the larger part gets the next click, at its
  deepest interior point (maximum of a distance transform, the image border counting as outside; training uses
  SEEM's convolutional approximation, interactive refinement the exact Euclidean one, see
  :mod:`seemadapt.model.distance`):
  positive for a false negative, negative for a false positive. No click once IoU >= 0.925.
* :func:`decode_prompts`: runs the rounds on encoded image features and picks, for every prompt, the best of its
  ``query_number`` spatial queries (:func:`select_candidates`).
* :func:`refine_with_clicks`: the NoC-style loop against a ground-truth mask (clicks, then IoU per click).

Spatial *training* inputs (random shapes, then simulated click rounds) are built by
:func:`seemadapt.train.spatial.prepare_spatial_training` from these pieces.

Composition with text. In SEEM v1 the text tokens only reach the grounding queries, so running them in the
same decoder call would not change any visual prompt's candidates. Text therefore composes where SEEM's two heads
meet, in the joint visual-language space: each candidate of a prompt is scored by its visual-prompt affinity
(``mask_emb . prompt_emb``, what SEEM ranks candidates by) *and* by the similarity of its caption embedding to the
text (SEEM's grounding similarity); the candidate with the highest product of the two softmax probabilities wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.model.distance import DistanceMethod, deepest_point
from seemadapt.model.images import ImageBatch, ImageInput
from seemadapt.model.postprocess import grounding_logits, resize_mask_logits
from seemadapt.model.prompts import PromptGeometry, VisualPrompts, encode_points

if TYPE_CHECKING:
    from seemadapt.model.seem import SEEM

#: SEEM stops adding clicks to a prompt once its IoU reaches this.
IOU_THRESHOLD = 0.925
#: Simulated clicks are one pixel dilated by a 3x3 kernel (SEEM's ``dilation_kernel``).
CLICK_SIZE = 3

__all__ = [
    "CLICK_SIZE",
    "IOU_THRESHOLD",
    "Click",
    "EncodedImage",
    "PromptDecoding",
    "add_corrective_clicks",
    "decode_prompts",
    "deepest_point",
    "encode_features",
    "mask_iou",
    "next_click",
    "number_of_clicks",
    "refine_with_clicks",
    "select_candidates",
]


# ---------------------------------------------------------------------------------------------------- clicks


@dataclass(frozen=True)
class Click:
    """A click at pixel ``(row, col)``; ``positive`` = on the object."""

    row: int
    col: int
    positive: bool

    @property
    def point(self) -> tuple[int, int, int]:
        """As a point prompt ``(x, y, label)``."""
        return (self.col, self.row, int(self.positive))


def _as_bool_array(mask: Any, name: str) -> np.ndarray:
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask).astype(bool)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a [H, W] mask, got shape {array.shape}.")
    return array


def mask_iou(pred: Any, gt: Any) -> float:
    """Intersection over union of two bool masks; two empty masks agree perfectly (1.0)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    union = int(np.logical_or(pred, gt).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, gt).sum()) / union


def next_click(
    pred_mask: Any,
    gt_mask: Any,
    *,
    clicked: Any = None,
    valid: Any = None,
    iou_threshold: float = IOU_THRESHOLD,
    distance: DistanceMethod = "exact",
) -> Click | None:
    """SEEM's simulated corrective click for one prompt, or ``None`` when no click is needed.

    Args:
        pred_mask, gt_mask: bool ``[H, W]`` prediction and target (tensors or arrays).
        clicked: bool ``[H, W]`` pixels already clicked (left out of the error regions), optional.
        valid: bool ``[H, W]`` where clicks may go (e.g. the image without its padding), optional.
        iou_threshold: no click once ``IoU(pred, gt)`` reaches it.
        distance: the transform :func:`~seemadapt.model.distance.deepest_point` uses (``"approximate"``: SEEM's
            training transform; ``"exact"``: Euclidean, the centre of the error region).

    The false negatives (``gt & ~pred``) and false positives (``~gt & pred``) are counted; the larger region gets
    the click (a positive click for false negatives; a tie goes to the false positives, as in SEEM), at its
    :func:`deepest_point`. ``None`` when the IoU is high enough or there is no error left to click on.
    """
    pred = _as_bool_array(pred_mask, "pred_mask")
    gt = _as_bool_array(gt_mask, "gt_mask")
    if pred.shape != gt.shape:
        raise ValueError(f"next_click: pred_mask {pred.shape} and gt_mask {gt.shape} differ in shape.")
    if mask_iou(pred, gt) >= iou_threshold:
        return None
    allowed = np.ones_like(gt)
    if clicked is not None:
        allowed &= ~_as_bool_array(clicked, "clicked")
    if valid is not None:
        allowed &= _as_bool_array(valid, "valid")
    false_negative = gt & ~pred & allowed
    false_positive = ~gt & pred & allowed
    fn_count, fp_count = int(false_negative.sum()), int(false_positive.sum())
    if fn_count == 0 and fp_count == 0:
        return None
    positive = fn_count > fp_count
    point = deepest_point(false_negative if positive else false_positive, distance)
    assert point is not None
    return Click(point[0], point[1], positive)


def _stamp_click(target: Tensor, click: Click, size: int, limit: tuple[int, int] | None = None) -> None:
    """Mark a ``size`` x ``size`` square around ``click`` in ``target [H, W]`` (clipped to ``limit`` or the mask)."""
    height, width = limit if limit is not None else target.shape[-2:]
    half = (size - 1) // 2
    r0, c0 = max(click.row - half, 0), max(click.col - half, 0)
    r1, c1 = min(click.row - half + size, height), min(click.col - half + size, width)
    target[r0:r1, c0:c1] = True


def add_corrective_clicks(
    prev_mask: Tensor,
    gt_masks: Sequence[Tensor],
    positive: Sequence[Tensor],
    negative: Sequence[Tensor],
    *,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    click_size: int = CLICK_SIZE,
    distance: DistanceMethod = "approximate",
) -> tuple[list[Tensor], list[Tensor], list[list[Click | None]]]:
    """One round of SEEM's click simulation on a batch (``prepare_next_spaital_mask``).

    Args:
        prev_mask: ``[B, n, h, w]`` mask logits of the round (the decoder's ``prev_mask``; ``n`` = most prompts of
            an image), upsampled bilinearly to the canvas and thresholded at 0.
        gt_masks, positive, negative: per image ``[n_b, Hp, Wp]`` targets and current prompt masks on the canvas.
        image_sizes: per image ``(h, w)`` inside the canvas: clicks stay off the padding.
        distance: where in the error region the click goes (:func:`next_click`); the default is the convolutional
            approximation SEEM trained with, so training sees the clicks the original code gives.

    Returns new ``(positive, negative)`` lists (the inputs are not modified) and the click given to every prompt
    (``None``: none needed, or an empty target, whose prompt the losses skip anyway).
    """
    if prev_mask.dim() != 4 or prev_mask.shape[0] != len(gt_masks):
        raise ValueError(
            f"add_corrective_clicks: prev_mask must be [B, n, h, w] with B = {len(gt_masks)}, got "
            f"{tuple(prev_mask.shape)}."
        )
    height, width = gt_masks[0].shape[-2:]
    pred = F.interpolate(
        prev_mask.detach().float(), size=(height, width), mode="bilinear", align_corners=False
    )
    pred = (pred > 0).cpu()
    new_positive, new_negative, clicks = [], [], []
    for b, gt in enumerate(gt_masks):
        pos, neg = positive[b].clone(), negative[b].clone()
        limit = tuple(image_sizes[b]) if image_sizes is not None else (height, width)
        valid = torch.zeros(height, width, dtype=torch.bool)
        valid[: limit[0], : limit[1]] = True
        gt_cpu = gt.bool().cpu()
        clicked = (pos | neg).cpu()
        image_clicks: list[Click | None] = []
        for k in range(len(gt)):
            click = None
            if bool(gt_cpu[k].any()):
                click = next_click(
                    pred[b, k],
                    gt_cpu[k],
                    clicked=clicked[k],
                    valid=valid,
                    iou_threshold=iou_threshold,
                    distance=distance,
                )
            if click is not None:
                _stamp_click(pos[k] if click.positive else neg[k], click, click_size, limit)
            image_clicks.append(click)
        new_positive.append(pos)
        new_negative.append(neg)
        clicks.append(image_clicks)
    return new_positive, new_negative, clicks


def number_of_clicks(ious: Sequence[float], threshold: float = 0.9, max_clicks: int = 20) -> int:
    """NoC: clicks needed to reach ``threshold`` IoU (``ious[i]`` = IoU after click ``i + 1``); ``max_clicks``
    when it is never reached, the usual convention."""
    for index, iou in enumerate(ious[:max_clicks]):
        if iou >= threshold:
            return index + 1
    return max_clicks


# ---------------------------------------------------------------------------------------------------- decoding


@dataclass
class EncodedImage:
    """An image batch through the backbone and pixel decoder, ready for any number of prompt rounds.

    Attributes:
        batch: the normalised, padded input (sizes for mapping prompts and results).
        mask_features: ``[B, mask_dim, Hp/4, Wp/4]``.
        multi_scale: the decoder's feature levels (strides 32, 16, 8).
    """

    batch: ImageBatch
    mask_features: Tensor
    multi_scale: list[Tensor]

    def geometry(self, index: int = 0) -> PromptGeometry:
        return PromptGeometry.from_batch(self.batch, index)

    @property
    def decoder_size(self) -> tuple[int, int]:
        """Size of the decoder's masks (stride 4 of the canvas)."""
        return (self.mask_features.shape[-2], self.mask_features.shape[-1])


def encode_features(
    model: SEEM,
    images: ImageInput | Sequence[ImageInput] | ImageBatch,
    *,
    short_edge: int | None = None,
    max_size: int | None = None,
) -> EncodedImage:
    """Preprocess and encode ``images`` once (runs with whatever grad mode the caller is in)."""
    batch = model.preprocess(images, short_edge=short_edge, max_size=max_size)
    mask_features, multi_scale, _ = model.encode_image(batch)
    return EncodedImage(batch, mask_features, multi_scale)


def select_candidates(
    mask_embeddings: Tensor,
    prompt_embeddings: Tensor,
    query_number: int,
    *,
    captions: Tensor | None = None,
    text_embeddings: Tensor | None = None,
    logit_scale: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """The best spatial query of every prompt of one image.

    Args:
        mask_embeddings: ``[query_number * n, C]`` ``pred_smaskembs`` (prompt-major: queries ``k*qn .. k*qn+qn-1``
            belong to prompt ``k``).
        prompt_embeddings: ``[n, C]`` ``pred_pspatials``.
        captions: ``[query_number * n, D]`` ``pred_stexts`` (needed with text).
        text_embeddings: ``[1, D]`` (one text for every prompt) or ``[n, D]`` (text ``k`` for prompt ``k``).
        logit_scale: the language encoder's raw logit scale (needed with text).

    Returns ``(query indices [n], scores [n])``: without text the query with the highest ``mask_emb . prompt_emb``
    (SEEM's choice) and its softmax probability among the prompt's queries; with text the query maximising the
    product of that probability and the softmax of its text similarity, and the normalised product as score.
    """
    num_prompts = prompt_embeddings.shape[0]
    if mask_embeddings.shape[0] != query_number * num_prompts:
        raise ValueError(
            f"select_candidates: {mask_embeddings.shape[0]} spatial queries for {num_prompts} prompts x "
            f"{query_number} queries."
        )
    own = torch.arange(num_prompts, device=mask_embeddings.device)
    spatial = (mask_embeddings.float() @ prompt_embeddings.float().t()).view(
        num_prompts, query_number, num_prompts
    )
    log_probs = spatial[own, :, own].log_softmax(dim=1)  # [n, qn]
    if text_embeddings is not None:
        if captions is None or logit_scale is None:
            raise ValueError("select_candidates: text needs the candidates' captions and the logit scale.")
        if text_embeddings.shape[0] not in (1, num_prompts):
            raise ValueError(
                f"select_candidates: {text_embeddings.shape[0]} texts for {num_prompts} prompts; give one text for "
                "all prompts or one per prompt."
            )
        text = grounding_logits(captions, text_embeddings, logit_scale).view(num_prompts, query_number, -1)
        text = text[:, :, 0] if text.shape[-1] == 1 else text[own, :, own]
        log_probs = log_probs + text.log_softmax(dim=1)
    probs = log_probs.softmax(dim=1)
    best = probs.argmax(dim=1)
    return own * query_number + best, probs[own, best]


@dataclass
class PromptDecoding:
    """Result of :func:`decode_prompts` for one image.

    Attributes:
        mask_logits: ``[n, h, w]`` the chosen mask of every prompt at the decoder's resolution.
        scores: ``[n]`` see :func:`select_candidates`.
        query_indices: ``[n]`` the chosen spatial query of each prompt.
        prev_mask: ``[1, n, h, w]`` what the next round's memories take (the chosen masks of the last round).
    """

    mask_logits: Tensor
    scores: Tensor
    query_indices: Tensor
    prev_mask: Tensor


def decode_prompts(
    model: SEEM,
    encoded: EncodedImage,
    prompts: VisualPrompts,
    *,
    text_embeddings: Tensor | None = None,
    prev_mask: Tensor | None = None,
    rounds: int = 1,
    generator: torch.Generator | None = None,
) -> PromptDecoding:
    """Run ``rounds`` decoder rounds for the visual ``prompts`` of a one-image ``encoded`` batch.

    Round ``r`` feeds the masks chosen in round ``r - 1`` to the memory prompts (``prev_mask`` seeds round 1:
    ``[1, n, h, w]`` logits, any size, e.g. a previous call's :attr:`PromptDecoding.prev_mask`). The prompts stay
    the same across rounds; add corrective clicks between calls (:func:`next_click`) to refine for real.
    """
    if len(encoded.batch) != 1:
        raise ValueError(f"decode_prompts: takes one image, got {len(encoded.batch)}.")
    if len(prompts) == 0:
        raise ValueError("decode_prompts: needs at least one visual prompt.")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    if tuple(prompts.positive.shape[-2:]) != encoded.batch.padded_size:
        raise ValueError(
            f"decode_prompts: prompts are drawn on {tuple(prompts.positive.shape[-2:])} but the padded input is "
            f"{encoded.batch.padded_size}; encode them with this image's PromptGeometry."
        )
    if prev_mask is not None and (prev_mask.dim() != 4 or prev_mask.shape[:2] != (1, len(prompts))):
        raise ValueError(
            f"prev_mask must be [1, {len(prompts)}, h, w] (one mask per prompt), got {tuple(prev_mask.shape)}."
        )
    decoder = model.decoder
    device = encoded.mask_features.device
    base = prompts.to(device).decoder_inputs()
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if text_embeddings is not None:
        text_embeddings = text_embeddings.to(device)
    memory = None if prev_mask is None else prev_mask.to(device=device, dtype=encoded.mask_features.dtype)
    masks = scores = indices = None
    for _ in range(rounds):
        spatial = {**base, "generator": generator}
        if memory is not None:
            spatial["prev_mask"] = memory
        outputs = decoder(encoded.multi_scale, encoded.mask_features, None, spatial=spatial, task="seg")
        indices, scores = select_candidates(
            outputs["pred_smaskembs"][0],
            outputs["pred_pspatials"][0],
            decoder.config.query_number,
            captions=outputs["pred_stexts"][0],
            text_embeddings=text_embeddings,
            logit_scale=model.language_encoder.logit_scale if text_embeddings is not None else None,
        )
        masks = outputs["pred_smasks"][0][indices]
        memory = masks[None]
    assert masks is not None and scores is not None and indices is not None and memory is not None
    return PromptDecoding(masks, scores, indices, memory)


# ---------------------------------------------------------------------------------------------------- evaluation


def unwrap_model(model: Any) -> SEEM:
    """The :class:`SEEM` inside DDP / accelerate / compile wrappers.

    A SEEM is recognised by what this module uses (``encode_image``, ``preprocess`` and the decoder), so this module
    needs no import of :mod:`seemadapt.model.seem` (which imports it through the predictor).
    """
    current = model
    for _ in range(8):
        if isinstance(current, torch.nn.Module) and all(
            hasattr(current, name)
            for name in ("encode_image", "preprocess", "sem_seg_head", "language_encoder")
        ):
            return current
        inner = getattr(current, "module", None) or getattr(current, "_orig_mod", None)
        if inner is None:
            break
        current = inner
    raise TypeError(f"Expected a SEEM model (possibly wrapped), got {type(model).__name__}.")


def refine_with_clicks(
    model: Any,
    image: ImageInput,
    gt_mask: Any,
    rounds: int = 20,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    use_memories: bool = True,
    short_edge: int | None = None,
    max_size: int | None = None,
    point_size: int = CLICK_SIZE,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Simulate a user refining one object with clicks (NoC-style evaluation), as SEEM's interactive evaluation.

    The first click is the deepest point of ``gt_mask``; every later one comes from :func:`next_click` against the
    current prediction (at the image's own size, pixels already clicked excluded). Each round runs the decoder on
    all clicks so far, plus (``use_memories``) the previous round's mask as memory prompts. Stops after ``rounds``
    clicks, once the IoU reaches ``iou_threshold``, or when no error is left.

    Returns ``{"ious": [IoU after click 1, 2, ...], "clicks": [Click, ...], "mask": bool [H, W] final prediction,
    "logits": [H, W] final logits}``; see :func:`number_of_clicks` for NoC@IoU.
    """
    seem = unwrap_model(model)
    gt = _as_bool_array(gt_mask, "gt_mask")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    was_training = seem.training
    seem.eval()
    try:
        with torch.inference_mode():
            encoded = encode_features(seem, [image], short_edge=short_edge, max_size=max_size)
            geometry = encoded.geometry()
            if gt.shape != geometry.original_size:
                raise ValueError(
                    f"refine_with_clicks: gt_mask is {gt.shape} but the image is {geometry.original_size}."
                )
            pred = np.zeros_like(gt)
            clicked = torch.zeros(gt.shape, dtype=torch.bool)
            clicks: list[Click] = []
            ious: list[float] = []
            memory = None
            logits = torch.full(gt.shape, -1.0)
            for _ in range(rounds):
                click = next_click(pred, gt, clicked=clicked, iou_threshold=iou_threshold)
                if click is None:
                    break
                clicks.append(click)
                _stamp_click(clicked, click, CLICK_SIZE)
                prompts = encode_points(
                    [c.point for c in clicks], geometry, point_size, require_positive=False
                )
                decoded = decode_prompts(
                    seem,
                    encoded,
                    prompts,
                    prev_mask=memory if use_memories else None,
                    generator=generator,
                )
                memory = decoded.prev_mask
                logits = resize_mask_logits(
                    decoded.mask_logits,
                    encoded.batch.padded_size,
                    encoded.batch.image_sizes[0],
                    encoded.batch.original_sizes[0],
                )[0]
                pred = (logits > 0).cpu().numpy()
                ious.append(mask_iou(pred, gt))
                if ious[-1] >= iou_threshold:
                    break
    finally:
        seem.train(was_training)
    return {"ious": ious, "clicks": clicks, "mask": torch.from_numpy(pred), "logits": logits}


# ---------------------------------------------------------------------------------------------------- training
