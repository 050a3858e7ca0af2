"""From SEEM's raw outputs to semantic maps, panoptic segments, instances and grounded masks.

All functions work on one image, on any device, with plain tensors in and out. Mask logits are first brought to the
caller's image size (:func:`resize_mask_logits`: bilinear to the padded input, crop, bicubic+antialias to the original
size, as X-Decoder/SEEM do *before* inference, composed into one matrix per axis), then the task rule runs on the
full-resolution logits:

* semantic: ``einsum("qk,qhw->khw", softmax(cls)[:, :K], sigmoid(masks))``;
* panoptic: Mask2Former's merge: queries whose best non-background class scores above ``object_mask_threshold``
  compete per pixel by ``score * sigmoid(mask)``; a query keeps its pixels only where its own mask is >= 0.5 and only
  if it wins at least ``overlap_threshold`` of its mask's area; stuff queries of one class merge into one segment;
* instance: top-k (query, class) pairs by class score, binary masks ``logit > 0``, score = class score x mean mask
  probability inside the mask;
* grounding: for each text, the query whose caption embedding is most similar to the text embedding.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.model.language import MAX_LOGIT_SCALE, NORM_EPS

Size = tuple[int, int]
Blocks = tuple[tuple[int, int, int, int], ...]  # band_blocks: (start, stop, first, last) per block

OBJECT_MASK_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8
DETECTIONS_PER_IMAGE = 100
ARGMAX_COPY_ROWS = 16  # argmax_first_dim: up to this many rows, argmax over a transposed copy
STATS_CHUNK_BYTES = 1 << 20  # sigmoid_with_mask_stats: chunks of about half a core's L2 cache
BAND_ROWS = 128  # band_blocks: output rows per block of a banded resize product


def resize_mask_logits(
    mask_logits: Tensor,
    padded_size: Size,
    image_size: Size,
    output_size: Size,
    *,
    column_major: bool = False,
    workspace: Tensor | None = None,
) -> Tensor:
    """Mask logits ``[Q, h, w]`` at the decoder's stride -> ``[Q, H, W]`` at ``output_size``, in float32.

    SEEM's chain (bilinear upsampling to the padded input size, crop of the padding, ``image_size`` being the image
    inside the padded batch, then bicubic resize with antialiasing to ``output_size``, the size the caller's image
    had) is linear and separable, so it runs as ``rows @ x @ cols.T`` with one composed matrix per axis
    (:func:`resize_matrix`): two matrix products instead of two full-size resampling passes, 2-3x less time, the
    left one by blocks that skip the banded matrix's zeros (:func:`band_blocks`). It equals ``F.interpolate``'s
    chain up to float32 rounding (at most about 2e-7 of the largest ``|logit|``).

    ``column_major``: the same ``[Q, H, W]`` values as a view of ``[Q, W, H]`` storage (each mask stored column by
    column, the order of COCO's RLE), made by the transposed products ``cols @ x.T @ rows.T``: pycocotools then
    encodes instance masks without a transposing copy (about 20 ms per 480x640 image of 100 masks). The values equal
    the row-major ones up to float32 rounding.

    ``workspace``: a contiguous float32 tensor on the same device with at least ``Q * H * W`` elements; the result
    is then written into its storage (a view of it). ``predict`` passes one per batch, so that each image's logits
    land in pages the previous image has already touched: a fresh 120 MB buffer per 480x640 image costs about
    15 ms of page faults on the CPU.
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [Q, h, w], got shape {tuple(mask_logits.shape)}.")
    if image_size[0] > padded_size[0] or image_size[1] > padded_size[1]:
        raise ValueError(f"image_size {image_size} is larger than padded_size {padded_size}.")
    x = mask_logits.float()
    resample = tuple(output_size) != tuple(image_size)  # else SEEM skips the bicubic step
    height, width = x.shape[-2:]
    row_axis = (height, padded_size[0], image_size[0], output_size[0], resample)
    col_axis = (width, padded_size[1], image_size[1], output_size[1], resample)
    rows, cols = resize_matrix(*row_axis, x.device), resize_matrix(*col_axis, x.device)
    out = None
    if workspace is not None:
        count = len(x) * output_size[0] * output_size[1]
        if workspace.dtype != torch.float32 or not workspace.is_contiguous() or workspace.numel() < count:
            raise ValueError(
                f"workspace must be a contiguous float32 tensor of at least {count} elements, got "
                f"{workspace.dtype} with {workspace.numel()} (contiguous: {workspace.is_contiguous()})."
            )
        out = workspace.view(-1)[:count]
    if column_major:  # resize the transposed masks (small at the stride), then transpose the view back
        resized = _resize_rows_cols(x.transpose(1, 2).contiguous(), cols, rows, band_blocks(*col_axis), out)
        return resized.transpose(1, 2)
    return _resize_rows_cols(x, rows, cols, band_blocks(*row_axis), out)


def _resize_rows_cols(
    x: Tensor, rows: Tensor, cols: Tensor, row_blocks: Blocks, out: Tensor | None = None
) -> Tensor:
    """``rows @ x @ cols.T`` for ``x [Q, h, w]``, in the order with fewer multiplications (into ``out``'s storage,
    flat, when given); the product with ``rows`` by its :func:`band_blocks` ``row_blocks``."""
    count, height, width = x.shape
    out_h, out_w = rows.shape[0], cols.shape[0]
    if out_h * width * (height + out_w) <= height * out_w * (width + out_h):
        x = _banded_matmul(rows, row_blocks, x)  # [Q, H, w]
        final = None if out is None else out.view(count * out_h, out_w)
        return torch.mm(x.reshape(-1, width), cols.t(), out=final).view(count, out_h, out_w)
    x = torch.mm(x.reshape(-1, width), cols.t()).view(count, height, out_w)  # [Q, h, W]
    return _banded_matmul(rows, row_blocks, x, None if out is None else out.view(count, out_h, out_w))


def _banded_matmul(matrix: Tensor, blocks: Blocks, x: Tensor, out: Tensor | None = None) -> Tensor:
    """``matrix @ x`` for ``x [Q, k, n]`` (into ``out [Q, m, n]`` when given), one product per block of the matrix's
    rows over only the columns where that block has weights (:func:`band_blocks`).

    A resize matrix is banded (each output row mixes a few neighbouring input rows), so most of a dense product
    multiplies zeros: at 480x640 from stride 4 the blocks do a quarter of the work, 1.5x faster. The skipped
    terms are exact zeros, so every sum keeps the same terms (on this CPU the values are bit-identical).
    """
    if out is None:
        out = x.new_empty(len(x), matrix.shape[0], x.shape[2])
    for start, stop, first, last in blocks:
        if first == last:  # no weights: the output rows are zero
            out[:, start:stop].zero_()
        else:
            torch.matmul(matrix[start:stop, first:last], x[:, first:last], out=out[:, start:stop])
    return out


@lru_cache(maxsize=64)
def band_blocks(size: int, padded: int, image: int, output: int, resample: bool) -> Blocks:
    """The row blocks of :func:`resize_matrix` (same arguments) with their weighted columns: ``(start, stop, first,
    last)`` for blocks of :data:`BAND_ROWS` rows, each of which has non-zero weights only in columns
    ``first:last`` (``first == last``: none). Read off the CPU matrix once per size."""
    nonzero = resize_matrix(size, padded, image, output, resample, torch.device("cpu")) != 0
    blocks = []
    for start in range(0, len(nonzero), BAND_ROWS):
        used = nonzero[start : start + BAND_ROWS].any(dim=0).nonzero().flatten().tolist()
        first, last = (used[0], used[-1] + 1) if used else (0, 0)
        blocks.append((start, min(start + BAND_ROWS, len(nonzero)), first, last))
    return tuple(blocks)


@lru_cache(maxsize=64)
def resize_matrix(
    size: int, padded: int, image: int, output: int, resample: bool, device: torch.device
) -> Tensor:
    """``[output, size]`` float32: :func:`resize_mask_logits`' chain along one axis (bilinear ``size -> padded``,
    keep the first ``image``, bicubic+antialias ``image -> output`` when ``resample``).

    Each step's weights are ``F.interpolate``'s own float32 weights (read off by resampling the identity; its
    float32 bicubic weights differ from exact ones by about 1e-5 relative), composed in float64, so the result
    reproduces ``F.interpolate`` to rounding. Cached per size: a batch's images share the same few matrices.
    """
    with torch.inference_mode(False):  # cached across calls: must not be an inference tensor
        matrix = _axis_weights(size, padded, "bilinear")[:image]
        if resample:
            matrix = _axis_weights(image, output, "bicubic") @ matrix
        return matrix.to(device=device, dtype=torch.float32)


def _axis_weights(size: int, output: int, mode: str) -> Tensor:
    """``[output, size]`` float64 weights of a 1-D ``F.interpolate`` (float32, half-pixel centres), from the identity
    resampled along the width (in torch 2.14 the height axis of a width-1 input resamples wrongly with antialias)."""
    identity = torch.eye(size, dtype=torch.float32)[None, :, None, :]  # channel i = the i-th basis vector
    extra = {"antialias": True} if mode == "bicubic" else {}
    weights = F.interpolate(identity, size=(1, output), mode=mode, align_corners=False, **extra)
    return weights[0, :, 0, :].t().double()


def _check_pair(class_logits: Tensor, mask_logits: Tensor) -> None:
    if class_logits.dim() != 2 or mask_logits.dim() != 3 or class_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"Expected class_logits [Q, K+1] and mask_logits [Q, H, W] with the same Q, got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}."
        )
    if class_logits.shape[1] < 2:
        raise ValueError("class_logits needs at least one class plus the background column.")


def semantic_inference(
    class_logits: Tensor, mask_logits: Tensor, *, mask_probs: Tensor | None = None
) -> Tensor:
    """Per-class score maps ``[K, H, W]``: class probabilities (background column dropped) times mask probabilities,
    summed over queries. ``mask_probs``: ``sigmoid(mask_logits)`` when the caller already has it."""
    _check_pair(class_logits, mask_logits)
    probs = class_logits.float().softmax(dim=-1)[:, :-1]
    masks = mask_logits.float().sigmoid() if mask_probs is None else mask_probs
    return torch.einsum("qk,qhw->khw", probs, masks)


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_ids: Collection[int] | None = None,
    object_mask_threshold: float = OBJECT_MASK_THRESHOLD,
    overlap_threshold: float = OVERLAP_THRESHOLD,
    *,
    mask_probs: Tensor | None = None,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Panoptic segmentation of one image.

    Args:
        class_logits: ``[Q, K+1]`` (last column = background / no object).
        mask_logits: ``[Q, H, W]`` at the output size.
        thing_ids: class indices that are *things* (one segment per query); every other class is *stuff* (all its
            queries merge into one segment). ``None`` = every class is a thing.
        object_mask_threshold: a query is used only if its best class is not background and scores above this.
        overlap_threshold: a query is kept only if it wins at least this fraction of its own mask (``prob >= 0.5``).
        mask_probs: ``sigmoid(mask_logits)`` when the caller already has it (one-pass multi-task inference).

    Returns:
        ``(panoptic_seg, segments_info)``: ``int32 [H, W]`` segment ids, 0 = no segment; and one dict per segment
        ``{"id", "category_id", "isthing", "score", "area"}`` (``score`` of the query that created it; ``area`` in
        pixels after merging).

    Every rule is a tensor operation over all queries at once (areas by ``bincount`` of the per-pixel winner), so
    the cost does not grow with a Python loop over queries; segment ids follow the queries' order as in
    Mask2Former's loop.
    """
    _check_pair(class_logits, mask_logits)
    num_classes = class_logits.shape[1] - 1
    scores, labels = class_logits.float().softmax(dim=-1).max(dim=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    probs = mask_logits.float().sigmoid() if mask_probs is None else mask_probs
    height, width = mask_logits.shape[-2:]
    if not bool(keep.any()):  # before copying the kept queries' masks out
        return torch.zeros(height, width, dtype=torch.int32, device=mask_logits.device), []
    scores, labels, probs = scores[keep], labels[keep], probs[keep]
    count = len(scores)
    owner = argmax_first_dim(scores[:, None, None] * probs).flatten()  # [HW] winning query per pixel
    own = probs.flatten(1) >= 0.5  # [N, HW]
    in_region = own.gather(0, owner[None])[0]  # the winner's own mask is on at the pixel
    won_area = torch.bincount(owner, minlength=count)
    own_area = own.sum(dim=1)
    region_area = torch.bincount(owner[in_region], minlength=count)
    valid = (won_area > 0) & (own_area > 0) & (region_area > 0)
    ratio = won_area.double() / own_area.double().clamp(min=1)
    valid &= ratio >= overlap_threshold
    segment_of_query, first_query = _segment_ids(labels, valid, thing_ids, num_classes)
    query_ids = segment_of_query[owner]
    panoptic_seg = torch.where(in_region, query_ids, torch.zeros_like(query_ids)).view(height, width)
    panoptic_seg = panoptic_seg.to(torch.int32)
    if len(first_query) == 0:
        return panoptic_seg, []
    areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(first_query) + 1)[1:]
    is_thing = _thing_mask(labels, thing_ids, num_classes)
    rows = zip(
        labels[first_query].tolist(),
        is_thing[first_query].tolist(),
        scores[first_query].tolist(),
        areas.tolist(),
    )
    segments = [
        {"id": index + 1, "category_id": label, "isthing": thing, "score": score, "area": area}
        for index, (label, thing, score, area) in enumerate(rows)
    ]
    return panoptic_seg, segments


def _thing_mask(labels: Tensor, thing_ids: Collection[int] | None, num_classes: int) -> Tensor:
    """Which of ``labels`` are things (``thing_ids`` ``None``: all)."""
    if thing_ids is None:
        return torch.ones_like(labels, dtype=torch.bool)
    table = torch.zeros(num_classes + 1, dtype=torch.bool, device=labels.device)
    ids = [int(i) for i in thing_ids if 0 <= int(i) <= num_classes]
    table[ids] = True
    return table[labels]


def _segment_ids(
    labels: Tensor, valid: Tensor, thing_ids: Collection[int] | None, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Segment id per query (0: dropped) and the query that created each segment, in segment-id order.

    A thing query is its own segment; stuff queries of one class share the segment of the first of them. Ids are
    given in the order in which segments first appear among the valid queries.
    """
    count = len(labels)
    positions = torch.arange(count, device=labels.device)
    # one key per segment: the class for stuff, num_classes + query position for a thing
    keys = torch.where(_thing_mask(labels, thing_ids, num_classes), num_classes + 1 + positions, labels)
    keys = torch.where(valid, keys, torch.full_like(keys, -1))
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(unique),), count, dtype=torch.long, device=labels.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    first = first[unique >= 0]  # the dropped queries' key -1 is not a segment
    first_query = first.sort().values
    segment_of_query = torch.zeros(count, dtype=torch.int32, device=labels.device)
    if len(first_query):
        rank = torch.zeros(len(unique), dtype=torch.int32, device=labels.device)
        order = first.argsort()
        real = torch.nonzero(unique >= 0).flatten()
        rank[real[order]] = torch.arange(1, len(first_query) + 1, dtype=torch.int32, device=labels.device)
        segment_of_query = torch.where(valid, rank[inverse], segment_of_query)
    return segment_of_query, first_query


def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_ids: Collection[int] | None = None,
    top_k: int = DETECTIONS_PER_IMAGE,
    *,
    stats: MaskStats | None = None,
) -> dict[str, Tensor]:
    """Instance segmentation of one image: the ``top_k`` best (query, class) pairs.

    Returns ``{"masks": bool [N, H, W], "scores": [N], "labels": int64 [N]}`` sorted by score (highest first).
    With ``thing_ids`` only those classes are kept (after the top-k, as SEEM does when panoptic is also on).
    The mask score (mean probability inside the binary mask) is computed once per query, not once per pair.
    ``stats``: every query's :class:`MaskStats` when the caller already has them (then ``mask_logits`` is not read,
    so the caller may have turned it into the probabilities in place, as :func:`sigmoid_with_mask_stats` does).
    """
    _check_pair(class_logits, mask_logits)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    top_scores, labels, queries = _top_pairs(class_logits, thing_ids, top_k)
    slot = queries
    if stats is None:
        used, used_slot = torch.unique(queries, return_inverse=True)
        # Most queries used: scoring every query costs less than copying the used ones out (per-query values are
        # the same either way), and the pairs then index the queries directly.
        if 2 * len(used) > len(class_logits):
            logits = mask_logits.to(torch.float32, copy=True)
        else:
            logits, slot = mask_logits.float()[used], used_slot
        _, stats = sigmoid_with_mask_stats(logits)
    scores = top_scores * stats.mask_scores()[slot]
    order = scores.argsort(descending=True)
    return {"masks": stats.masks[slot[order]], "scores": scores[order], "labels": labels[order]}


@dataclass(frozen=True)
class MaskStats:
    """What instance scores need of each query's mask logits: the binary mask (``logit > 0``), its area and the sum
    of the mask probabilities inside it."""

    masks: Tensor  # bool [Q, H, W]
    areas: Tensor  # float32 [Q]
    inside_sums: Tensor  # float32 [Q]

    def mask_scores(self) -> Tensor:
        """Mean mask probability inside each binary mask (0 for an empty mask), as SEEM scores instances."""
        return self.inside_sums / (self.areas + 1e-6)


def sigmoid_with_mask_stats(mask_logits: Tensor, chunk_bytes: int | None = None) -> tuple[Tensor, MaskStats]:
    """``sigmoid`` of mask logits ``[Q, H, W]`` in place, with every query's :class:`MaskStats` taken on the way.

    One pass over chunks of whole queries, about ``chunk_bytes`` each (default: :data:`STATS_CHUNK_BYTES` on the
    CPU; on an accelerator everything at once, each step one kernel): a chunk is thresholded, summed, turned into
    probabilities and summed again while it sits in the core's cache, and only one chunk-sized scratch buffer is
    allocated. Over the whole tensor the same steps make five passes through memory and allocate a second
    full-size buffer, whose fresh pages fault in: at 480x640 and 101 queries the chunks are 2x faster (CPU time).
    Float32 rounding: each query's sums cover that query alone, so for large masks they may differ in the last
    bits from a ``[Q, HW].sum(1)``; torch's sigmoid may also round the last few values of a chunk (its scalar
    tail) one ulp differently from a sigmoid of the whole tensor.

    Returns ``(probabilities, stats)``: the probabilities are ``mask_logits`` itself when it is a contiguous
    float32 tensor (else a converted copy).
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [Q, H, W], got shape {tuple(mask_logits.shape)}.")
    probs = mask_logits.float().contiguous()
    count = len(probs)
    flat = probs.view(count, probs.shape[1] * probs.shape[2])
    if chunk_bytes is None:
        chunk_bytes = STATS_CHUNK_BYTES if flat.device.type == "cpu" else max(1, flat.nelement() * 4)
    masks = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
    areas = torch.empty(count, dtype=torch.float32, device=flat.device)
    inside_sums = torch.empty_like(areas)
    step = max(1, chunk_bytes // max(1, flat.shape[1] * flat.element_size()))
    scratch = torch.empty((min(step, count), flat.shape[1]), dtype=torch.float32, device=flat.device)
    for start in range(0, count, step):
        rows = flat[start : start + step]
        # float 1/0 (a bool -> float conversion costs more), then the probabilities inside
        inside = torch.gt(rows, 0, out=scratch[: len(rows)])
        masks[start : start + step].copy_(inside)
        torch.sum(inside, dim=1, out=areas[start : start + step])
        torch.sum(inside.mul_(rows.sigmoid_()), dim=1, out=inside_sums[start : start + step])
    return probs, MaskStats(masks.view(probs.shape), areas, inside_sums)


def _top_pairs(
    class_logits: Tensor, thing_ids: Collection[int] | None, top_k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_k`` (query, class) pairs by class probability, then only things: ``(scores, labels, queries)``."""
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    class_scores = class_logits.float().softmax(dim=-1)[:, :-1].flatten()
    top_scores, flat = class_scores.topk(min(top_k, num_queries * num_classes))
    labels, queries = flat % num_classes, flat // num_classes
    if thing_ids is not None:
        allowed = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        ids = [int(i) for i in thing_ids if 0 <= int(i) < num_classes]
        allowed[ids] = True
        keep = allowed[labels]
        top_scores, labels, queries = top_scores[keep], labels[keep], queries[keep]
    return top_scores, labels, queries


def argmax_first_dim(x: Tensor) -> Tensor:
    """``x.argmax(dim=0)`` (same indices: first maximum, NaN wins). For a few rows (classes, kept queries) through a
    contiguous ``[..., N]`` copy: a CPU argmax over a short leading dimension is 3-4x slower than over the last
    one; from about 20 rows on the copy costs more than it saves."""
    if x.shape[0] > ARGMAX_COPY_ROWS:
        return x.argmax(dim=0)
    return x.flatten(1).t().contiguous().argmax(dim=1).view(x.shape[1:])


def grounding_logits(captions: Tensor, text_embeddings: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Query-text similarity ``[Q, n]``: ``min(exp(logit_scale), 100) * cos(caption, text)`` (norms get ``+1e-7``).

    The one implementation for inference (:func:`match_grounding`, interactive candidates) and training (matcher and
    criterion). Computed in float32; the text norms in the texts' own precision when it is higher. A tensor
    ``logit_scale`` (the language encoder's raw log-scale parameter) keeps its autograd connection.
    """
    scale = (
        torch.as_tensor(logit_scale, dtype=torch.float32, device=captions.device)
        .exp()
        .clamp(max=MAX_LOGIT_SCALE)
    )
    v = captions.float()
    v = v / (v.norm(dim=-1, keepdim=True) + NORM_EPS)
    text = text_embeddings.to(
        device=v.device, dtype=torch.promote_types(text_embeddings.dtype, torch.float32)
    )
    t = text.float() / (text.norm(dim=-1, keepdim=True).float() + NORM_EPS)
    return scale * v @ t.t()


def match_grounding(
    captions: Tensor, text_embeddings: Tensor, logit_scale: Tensor | float
) -> tuple[Tensor, Tensor]:
    """For each text, the best query: ``(query indices [n], confidence [n])``.

    The confidence is the softmax over queries of the similarity logits, read at the chosen query: how clearly one
    query stands out for the text (SEEM itself only takes the argmax).
    """
    logits = grounding_logits(captions, text_embeddings, logit_scale)
    probs = logits.softmax(dim=0)
    confidence, indices = probs.max(dim=0)
    return indices, confidence
