"""Inference with a SEEM model: open-vocabulary segmentation, text grounding and interactive segmentation.

:class:`SEEMPredictor` wraps a model the way SAM's predictor wraps SAM: the model computes features and decoder
outputs, the predictor turns user inputs (class names, sentences, clicks/boxes/scribbles/masks) into decoder calls and
the outputs into masks at each image's own size. :meth:`SEEM.predict`, :meth:`SEEM.ground` and :meth:`SEEM.segment`
call it. Every call runs in eval mode (restoring the caller's mode afterwards) under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor

from seemadapt.heap import freed_memory_kept
from seemadapt.model import interactive
from seemadapt.model.images import ImageBatch, ImageInput, as_image_list, padded_size_of
from seemadapt.model.postprocess import (
    DETECTIONS_PER_IMAGE,
    argmax_first_dim,
    instance_inference,
    match_grounding,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
    sigmoid_with_mask_stats,
)
from seemadapt.model.prompts import (
    PromptGeometry,
    VisualPrompts,
    encode_points,
    encode_prompts,
    group_points,
    logits_to_canvas,
)

if TYPE_CHECKING:
    from seemadapt.model.seem import SEEM

__all__ = [
    "TASKS",
    "PostprocessOptions",
    "SEEMPredictor",
    "Task",
    "ground_features",
    "postprocess_image",
]

Task = Literal["semantic", "panoptic", "instance"]
TASKS: tuple[str, ...] = ("semantic", "panoptic", "instance")


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no stochastic depth) for the duration, then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def thing_ids(classes: Sequence[str], thing_classes: Sequence[str | int] | None) -> set[int] | None:
    """Indices of the ``thing_classes`` (names or indices) among ``classes``; ``None``: all classes are things."""
    if thing_classes is None:
        return None
    index = {name: i for i, name in enumerate(classes)}
    ids = set()
    for item in thing_classes:
        if isinstance(item, str):
            if item not in index:
                raise ValueError(f"thing_classes: {item!r} is not one of the classes {list(classes)}.")
            ids.add(index[item])
        elif 0 <= int(item) < len(classes):
            ids.add(int(item))
        else:
            raise ValueError(f"thing_classes: index {item} is outside 0..{len(classes) - 1}.")
    return ids


def _check_tasks(task: str | Sequence[str], allow_none: bool = False) -> tuple[str, ...]:
    """One task or a list of tasks (duplicates dropped, order kept), each one of :data:`TASKS`; an empty list
    only with ``allow_none`` (grounding alone)."""
    tasks = (task,) if isinstance(task, str) else tuple(dict.fromkeys(str(t) for t in task))
    if not tasks and not allow_none:
        raise ValueError(f"predict: task must name at least one of {TASKS}.")
    for name in tasks:
        if name not in TASKS:
            raise ValueError(f"predict: task must be one of {TASKS} (or a list of them), got {name!r}.")
    return tasks


def _check_classes(classes: Sequence[str]) -> list[str]:
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("predict: classes must name at least one class.")
    if len(set(classes)) != len(classes):
        raise ValueError(f"predict: classes must be unique, got {classes}.")
    return classes


def _check_grounding(grounding: Sequence[str | Sequence[str] | None], count: int) -> list[list[str]]:
    """``predict``'s ``grounding``: one entry per image (a sentence, a list of them, or None) -> sentence lists."""
    if isinstance(grounding, str) or len(grounding) != count:
        raise ValueError(
            f"predict: grounding needs one entry per image ({count}): a sentence, a list of sentences or None."
        )
    return [
        [] if entry is None else [entry] if isinstance(entry, str) else [str(s) for s in entry]
        for entry in grounding
    ]


def ground_features(
    model: SEEM,
    batch: ImageBatch,
    features: tuple[Tensor, list[Tensor]],
    sentences: Sequence[Sequence[str]],
    threshold: float = 0.0,
) -> list[dict[str, Tensor] | None]:
    """Grounding of every image of ``batch`` that has sentences, from its already computed ``features``
    (``mask_features``, multi-scale maps): one decoder call for those images, so the backbone and pixel decoder
    are not run again. ``None`` for images without sentences.

    Each image's sentences are encoded on their own and its tokens padded (and masked) to the longest image's, so an
    image gets what :meth:`SEEMPredictor.ground` gives it alone on the same features.
    """
    lang = model.language_encoder
    rows = [b for b, texts in enumerate(sentences) if texts]
    results: list[dict[str, Tensor] | None] = [None] * len(sentences)
    if not rows:
        return results
    encodings = [lang.encode(list(sentences[b]), normalize=False, token_level=True) for b in rows]
    valid = [e.tokens[e.attention_mask.bool()] for e in encodings]  # [T_b, D] each
    tokens = valid[0].new_zeros(max(len(t) for t in valid), len(rows), valid[0].shape[-1])
    padding = torch.ones(len(rows), tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for i, image_tokens in enumerate(valid):
        tokens[: len(image_tokens), i] = image_tokens
        padding[i, : len(image_tokens)] = False
    mask_features, multi_scale = features
    if len(rows) != len(batch):
        index = torch.tensor(rows, device=mask_features.device)
        mask_features, multi_scale = mask_features[index], [x[index] for x in multi_scale]
    outputs = model.sem_seg_head.predictor(
        multi_scale,
        mask_features,
        None,
        grounding_tokens=tokens,
        grounding_padding_mask=padding,
        task="grounding_eval",
    )
    for i, (b, encoding) in enumerate(zip(rows, encodings)):
        indices, scores = match_grounding(outputs["pred_gtexts"][i], encoding.sentence, lang.logit_scale)
        logits = resize_mask_logits(
            outputs["pred_gmasks"][i][indices],
            batch.padded_size,
            batch.image_sizes[b],
            batch.original_sizes[b],
        )
        results[b] = {
            "masks": logits > threshold,
            "mask_logits": logits,
            "scores": scores,
            "query_indices": indices,
        }
    return results


@dataclass(frozen=True)
class PostprocessOptions:
    """What :func:`postprocess_image` computes: the tasks, the thing classes and the thresholds."""

    tasks: tuple[str, ...]
    things: set[int] | None
    object_threshold: float
    overlap: float
    top_k: int


def postprocess_image(class_logits: Tensor, masks: Tensor, options: PostprocessOptions) -> dict[str, Any]:
    """Every task of ``options`` for one image from the same resized mask logits ``[Q, H, W]``.

    ``sigmoid(masks)`` is computed once, in place (``masks`` is overwritten: one full-size buffer less), and shared
    by the tasks; for instances, :func:`sigmoid_with_mask_stats` takes each query's binary mask (``masks > 0``),
    area and probability sum in the same pass. Returns ``{task: that task's result}``.

    Column-major ``masks`` (``resize_mask_logits(..., column_major=True)``, as ``predict`` makes them) are processed
    as the transposed image, and the results transposed back: the label and segment maps contiguous, ``sem_seg``
    and the instance masks as column-major views (the instance masks then reach COCO's RLE encoder without a copy).
    """
    if masks.dim() == 3 and not masks.is_contiguous() and masks.transpose(1, 2).is_contiguous():
        return _transposed(_postprocess(class_logits, masks.transpose(1, 2), options))
    return _postprocess(class_logits, masks, options)


def _transposed(out: dict[str, Any]) -> dict[str, Any]:
    """:func:`_postprocess`'s results on transposed masks, transposed back (see :func:`postprocess_image`)."""
    if "semantic" in out:
        semantic = out["semantic"]
        out["semantic"] = {
            "sem_seg": semantic["sem_seg"].transpose(1, 2),
            "labels": semantic["labels"].t().contiguous(),
        }
    if "panoptic" in out:
        out["panoptic"]["panoptic_seg"] = out["panoptic"]["panoptic_seg"].t().contiguous()
    if "instance" in out:
        out["instance"]["masks"] = out["instance"]["masks"].transpose(1, 2)
    return out


def _postprocess(class_logits: Tensor, masks: Tensor, options: PostprocessOptions) -> dict[str, Any]:
    stats = None
    if "instance" in options.tasks:
        probs, stats = sigmoid_with_mask_stats(masks)
    else:
        probs = masks.sigmoid_()
    out: dict[str, Any] = {}
    for task in options.tasks:
        if task == "semantic":
            sem_seg = semantic_inference(class_logits, masks, mask_probs=probs)
            out[task] = {"sem_seg": sem_seg, "labels": argmax_first_dim(sem_seg)}
        elif task == "panoptic":
            panoptic_seg, segments = panoptic_inference(
                class_logits,
                masks,
                options.things,
                options.object_threshold,
                options.overlap,
                mask_probs=probs,
            )
            out[task] = {"panoptic_seg": panoptic_seg, "segments_info": segments}
        else:
            out[task] = instance_inference(class_logits, masks, options.things, options.top_k, stats=stats)
    return out


def _workspace(pred_masks: Tensor, sizes: Sequence[tuple[int, int]]) -> Tensor:
    """One float32 buffer for every image's full-size mask logits in turn (see ``resize_mask_logits``)."""
    largest = max(height * width for height, width in sizes)
    return torch.empty(pred_masks.shape[1] * largest, dtype=torch.float32, device=pred_masks.device)


def _segment_texts(text: str | Sequence[str] | None, rounds: int) -> list[str] | None:
    if rounds < 1:
        raise ValueError(f"segment: rounds must be >= 1, got {rounds}.")
    texts = None if text is None else ([text] if isinstance(text, str) else [str(t) for t in text])
    if texts is not None and not texts:
        raise ValueError("segment: text must name at least one sentence (or be None).")
    return texts


def merge_clicks(
    prev_prompts: Any, points: Any, others: tuple[Any, ...], geometry: PromptGeometry, point_size: int
) -> VisualPrompts:
    """``prev_prompts`` plus new corrective clicks, one point group per previous object (for ``segment``)."""
    if not isinstance(prev_prompts, VisualPrompts):
        raise TypeError("segment: prev_prompts must be a previous result's 'prompts' (VisualPrompts).")
    if any(other is not None for other in others):
        raise ValueError(
            "segment: with prev_prompts only corrective points may be added (no boxes/scribbles/mask)."
        )
    if prev_prompts.geometry is not None and prev_prompts.geometry != geometry:
        raise ValueError(
            f"segment: prev_prompts were drawn for {prev_prompts.geometry}, this call has {geometry}; use the "
            "same image and short_edge/max_size."
        )
    if points is None:
        return prev_prompts
    groups = group_points(points)
    if len(groups) == 1 and len(prev_prompts) > 1:
        raise ValueError(
            f"segment: {len(prev_prompts)} objects in prev_prompts; give one point group per object "
            "(points=[[clicks of object 0], [clicks of object 1], ...], [] for none)."
        )
    if len(groups) != len(prev_prompts):
        raise ValueError(
            f"segment: {len(groups)} point groups for {len(prev_prompts)} objects in prev_prompts; give one "
            "group per object ([] for none)."
        )
    clicks = encode_points(groups, geometry, point_size, require_positive=False)
    return prev_prompts.merged(clicks)


class SEEMPredictor:
    """Inference on a :class:`~seemadapt.model.seem.SEEM` model (see the module docstring)."""

    def __init__(self, model: SEEM) -> None:
        self.model = model

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str],
        task: Task | Sequence[Task] = "semantic",
        thing_classes: Sequence[str | int] | None = None,
        *,
        short_edge: int | None = None,
        max_size: int | None = None,
        top_k: int = DETECTIONS_PER_IMAGE,
        object_mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
        grounding: Sequence[str | Sequence[str] | None] | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Open-vocabulary segmentation: see :meth:`seemadapt.model.seem.SEEM.predict`."""
        model = self.model
        tasks = _check_tasks(task, allow_none=grounding is not None)
        classes = _check_classes(classes)
        decoder_config = model.config.decoder
        options = PostprocessOptions(
            tasks=tasks,
            things=thing_ids(classes, thing_classes),
            object_threshold=(
                decoder_config.object_mask_threshold
                if object_mask_threshold is None
                else object_mask_threshold
            ),
            overlap=decoder_config.overlap_threshold if overlap_threshold is None else overlap_threshold,
            top_k=top_k,
        )
        image_list, single = as_image_list(images)
        sentences = None if grounding is None else _check_grounding(grounding, len(image_list))
        sizes = {"short_edge": short_edge, "max_size": max_size}
        with evaluating(model), freed_memory_kept(model.device):  # see seemadapt/heap.py
            # Text embeddings are made outside inference mode: they are cached and may later meet autograd.
            class_embs = model.class_embeddings(classes, mode="eval") if tasks else None
            with torch.inference_mode():
                batch = model.preprocess(image_list, **sizes)
                mask_features, multi_scale, _ = model.encode_image(batch)
                results: list[dict[str, Any]] = [{} for _ in range(len(batch))]
                if tasks:
                    outputs = model.sem_seg_head.predictor(multi_scale, mask_features, class_embs, task="seg")
                    class_logits = outputs["pred_logits"].float()
                    workspace = _workspace(outputs["pred_masks"], batch.original_sizes)
                    for b in range(len(batch)):
                        masks = resize_mask_logits(
                            outputs["pred_masks"][b],
                            batch.padded_size,
                            batch.image_sizes[b],
                            batch.original_sizes[b],
                            column_major=True,
                            workspace=workspace,
                        )
                        results[b] = postprocess_image(class_logits[b], masks, options)
                if sentences is not None:
                    grounded = self._ground_batch(
                        image_list, batch, (mask_features, multi_scale), sentences, sizes
                    )
                    for result, grounded_image in zip(results, grounded):
                        result["grounding"] = grounded_image
        if isinstance(task, str) and grounding is None:
            results = [result[task] for result in results]
        return results[0] if single else results

    def _ground_batch(
        self,
        image_list: list[Tensor],
        batch: ImageBatch,
        features: tuple[Tensor, list[Tensor]],
        sentences: list[list[str]],
        sizes: dict[str, int | None],
    ) -> list[dict[str, Tensor] | None]:
        """``predict``'s grounding: from the batch's features for every image whose padding is the one it gets
        alone (same features as :meth:`ground`), through :meth:`ground` for the others (a batch of mixed sizes)."""
        divisibility = self.model.config.size_divisibility
        alone = [
            padded_size_of(size, divisibility) != batch.padded_size and bool(texts)
            for size, texts in zip(batch.image_sizes, sentences)
        ]
        shared = [[] if own else texts for own, texts in zip(alone, sentences)]
        results = ground_features(self.model, batch, features, shared)
        for b, own in enumerate(alone):
            if own:
                results[b] = self.ground(image_list[b], sentences[b], **sizes)
        return results

    def ground(
        self,
        image: ImageInput,
        sentences: str | Sequence[str],
        *,
        short_edge: int | None = None,
        max_size: int | None = None,
        threshold: float = 0.0,
    ) -> dict[str, Tensor]:
        """Masks for referring sentences: see :meth:`seemadapt.model.seem.SEEM.ground`."""
        model = self.model
        image_list, _ = as_image_list(image)
        if len(image_list) != 1:
            raise ValueError(f"ground: takes one image, got {len(image_list)}; call it once per image.")
        sentences = [sentences] if isinstance(sentences, str) else [str(s) for s in sentences]
        if not sentences:
            raise ValueError("ground: needs at least one sentence.")
        with evaluating(model), torch.inference_mode():
            batch = model.preprocess(image_list, short_edge=short_edge, max_size=max_size)
            mask_features, multi_scale, _ = model.encode_image(batch)
            grounded = ground_features(model, batch, (mask_features, multi_scale), [sentences], threshold)
        return cast(dict[str, Tensor], grounded[0])  # one image with sentences: never None

    def segment(  # noqa: PLR0913 (the public signature of SEEM.segment: one argument per prompt kind and option)
        self,
        image: ImageInput,
        points: Any = None,
        boxes: Any = None,
        scribbles: Any = None,
        mask: Any = None,
        text: str | Sequence[str] | None = None,
        *,
        rounds: int = 1,
        prev_mask: Tensor | None = None,
        prev_prompts: Any = None,
        generator: torch.Generator | None = None,
        short_edge: int | None = None,
        max_size: int | None = None,
        threshold: float = 0.0,
        point_size: int = 3,
        scribble_width: int = 3,
    ) -> dict[str, Any]:
        """Segment the objects given by visual prompts (and/or text) in one ``image``: SEEM's interactive mode.

        Every prompt object gives one mask, in the order points, boxes, scribbles, masks (coordinates are the
        image's own pixels; see :mod:`seemadapt.model.prompts` for the exact conventions):

        * ``points``: ``[(x, y), (x, y, 0), ...]`` is **one** object (label 1 = on it, default; 0 = not on it);
          a list of such lists is one object per inner list. Every object needs a positive point.
        * ``boxes``: ``[x0, y0, x1, y1]`` or ``[k, 4]``, one object per box (the filled box is the prompt).
        * ``scribbles``: a list of polylines ``[(x, y), ...]`` or bool masks ``[H, W]`` / ``[n, H, W]``, one object
          each.
        * ``mask``: bool ``[H, W]`` or ``[n, H, W]``, one object each.
        * ``text``: with visual prompts, one text for all objects or one per object: it helps pick among each
          object's candidate masks (see :mod:`seemadapt.model.interactive`). Without visual prompts every text is
          one object, segmented by :meth:`SEEMPredictor.ground`.

        Refinement: ``rounds > 1`` re-runs the decoder with each round's masks as memory prompts. To correct a
        result, pass it back: ``prev_mask=result["logits"]`` feeds the memories, and either repeat every prompt
        with the new clicks (e.g. ``points=old_points + [(x, y, 0)]``) or give ``prev_prompts=result["prompts"]``
        and only the new clicks (one point group per object, ``[]`` for objects without clicks; a flat list when
        there is one object), which then may be negative only.

        ``generator`` drives SEEM's random choices (which object queries serve each prompt, point sampling, memory
        slots); the default is a fresh generator seeded with 0, so a call is reproducible.

        Returns ``{"masks": bool [n, H, W] (logits > threshold), "scores": [n], "logits": [n, H, W], "kinds":
        [str] * n, "prompts": VisualPrompts | None}`` at the image's size; ``scores`` is the chosen candidate's
        probability among the object's candidates (text: the grounding score of :meth:`SEEMPredictor.ground`).
        """
        image_list, _ = as_image_list(image)
        if len(image_list) != 1:
            raise ValueError(f"segment: takes one image, got {len(image_list)}; call it once per image.")
        texts = _segment_texts(text, rounds)
        visual = prev_prompts is not None or any(p is not None for p in (points, boxes, scribbles, mask))
        if not visual:
            return self._segment_by_text(image_list[0], texts, prev_mask, short_edge, max_size, threshold)
        with evaluating(self.model), torch.inference_mode():
            encoded = interactive.encode_features(
                self.model, image_list, short_edge=short_edge, max_size=max_size
            )
            geometry = encoded.geometry()
            if prev_prompts is not None:
                prompts = merge_clicks(prev_prompts, points, (boxes, scribbles, mask), geometry, point_size)
            else:
                prompts = encode_prompts(
                    geometry,
                    points,
                    boxes,
                    scribbles,
                    mask,
                    point_size=point_size,
                    scribble_width=scribble_width,
                )
            return self._decode_visual(encoded, prompts, texts, prev_mask, rounds, generator, threshold)

    def _segment_by_text(
        self,
        image: ImageInput,
        texts: list[str] | None,
        prev_mask: Tensor | None,
        short_edge: int | None,
        max_size: int | None,
        threshold: float,
    ) -> dict[str, Any]:
        """``segment`` without visual prompts: every text is one object, segmented by :meth:`ground`."""
        if texts is None:
            raise ValueError("segment: give at least one prompt (points, boxes, scribbles, mask or text).")
        if prev_mask is not None:
            raise ValueError("segment: prev_mask feeds the memories of visual prompts; give visual prompts.")
        grounded = self.ground(image, texts, short_edge=short_edge, max_size=max_size, threshold=threshold)
        return {
            "masks": grounded["masks"],
            "scores": grounded["scores"],
            "logits": grounded["mask_logits"],
            "kinds": ["text"] * len(texts),
            "prompts": None,
        }

    def _decode_visual(
        self,
        encoded: interactive.EncodedImage,
        prompts: VisualPrompts,
        texts: list[str] | None,
        prev_mask: Tensor | None,
        rounds: int,
        generator: torch.Generator | None,
        threshold: float,
    ) -> dict[str, Any]:
        """``segment`` with visual prompts: decode them (with text and memories) into masks at the image's size."""
        model = self.model
        if len(prompts) == 0:
            raise ValueError("segment: the visual prompts are empty.")
        if texts is not None and len(texts) not in (1, len(prompts)):
            raise ValueError(
                f"segment: {len(texts)} texts for {len(prompts)} visual prompts; give one text for all "
                "objects or one per object."
            )
        text_embeddings = None if texts is None else model.language_encoder.encode(texts, normalize=True)
        memory = None
        if prev_mask is not None:
            if prev_mask.dim() != 3 or prev_mask.shape[0] != len(prompts):
                raise ValueError(
                    f"segment: prev_mask must be [{len(prompts)}, H, W] logits (one per object, a previous "
                    f"result's 'logits'), got {tuple(prev_mask.shape)}."
                )
            memory = logits_to_canvas(prev_mask.to(model.device), encoded.geometry(), encoded.decoder_size)[
                None
            ]
        decoded = interactive.decode_prompts(
            model,
            encoded,
            prompts,
            text_embeddings=text_embeddings,
            prev_mask=memory,
            rounds=rounds,
            generator=generator,
        )
        logits = resize_mask_logits(
            decoded.mask_logits,
            encoded.batch.padded_size,
            encoded.batch.image_sizes[0],
            encoded.batch.original_sizes[0],
        )
        return {
            "masks": logits > threshold,
            "scores": decoded.scores,
            "logits": logits,
            "kinds": list(prompts.kinds),
            "prompts": prompts,
        }
