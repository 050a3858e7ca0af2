"""SEEM v1 assembled: FocalNet backbone, pixel decoder and SEEM decoder, with input handling and inference.

Module names equal the official checkpoint's (``backbone.*``, ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.*``, ``dilation_kernel``), so official weights load with every key used
(:mod:`seemadapt.model.checkpoint`). Entry points:

* :meth:`SEEM.from_config` / :meth:`SEEM.from_pretrained` / :meth:`SEEM.save_pretrained`;
* :meth:`SEEM.predict` (semantic / panoptic / instance from class names) and :meth:`SEEM.ground` (masks for
  referring sentences), both batched where SEEM allows it, on the model's device, under ``torch.inference_mode``;
* :meth:`SEEM.forward_train` (= ``forward``, so DDP wraps it): the decoder outputs for the criterion, with a random
  prompt template per class and grounding texts encoded at token level.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from seemadapt.model.backbone import FocalNet
from seemadapt.model.config import SEEMConfig, get_config
from seemadapt.model.decoder import SEEMDecoder
from seemadapt.model.images import ImageBatch, ImageInput, as_image_list, batch_images
from seemadapt.model.language import LanguageEncoder
from seemadapt.model.pixel_decoder import TransformerEncoderPixelDecoder
from seemadapt.model.postprocess import (
    DETECTIONS_PER_IMAGE,
    instance_inference,
    match_grounding,
    panoptic_inference,
    resize_mask_logits,
    semantic_inference,
)
from seemadapt.model.templates import Rng

if TYPE_CHECKING:
    from seemadapt.model.checkpoint import LoadReport

Task = Literal["semantic", "panoptic", "instance"]
TASKS: tuple[str, ...] = ("semantic", "panoptic", "instance")

INTERACTIVE_PREFIXES = tuple(
    f"sem_seg_head.predictor.{name}."
    for name in ("mask_sptial_embed", "spatial_embed", "spatial_featured", "pn_indicator")
)
DECODER_ADAPTER_HOOKS = (
    "cross_attention_adapters",
    "self_attention_adapters",
    "ffn_adapters",
    "mask_embed_adapters",
)


def text_hash(text: str) -> int:
    """A stable 56-bit hash of a text (Python's ``hash`` is salted per process): equal texts, equal values."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "big")


@dataclass
class GroundingPrompts:
    """Grounding texts of a batch, encoded for the decoder and the criterion.

    Attributes:
        tokens: ``[T, B, D]`` seq-first valid token embeddings (SOT..EOT) of each image's first text per hash,
            concatenated, zero-padded to the longest image; ``None`` when no image has a text.
        padding_mask: ``[B, T]``, True = padding.
        class_embeddings: per image the EOT embedding ``[n, D]`` of every text (duplicates included), or ``None``.
        hashes: per image the hash of every text (given, or :func:`text_hash`): equal hashes, one target.
    """

    tokens: Tensor | None
    padding_mask: Tensor | None
    class_embeddings: list[Tensor | None]
    hashes: list[list[int]]


class SEEMHead(nn.Module):
    """Container with the official key prefix ``sem_seg_head``: ``pixel_decoder`` and ``predictor``."""

    def __init__(self, config: SEEMConfig) -> None:
        super().__init__()
        self.pixel_decoder = TransformerEncoderPixelDecoder(config.pixel_decoder, config.backbone.channels)
        self.predictor = SEEMDecoder(config.decoder, config.language)


class SEEM(nn.Module):
    """SEEM v1 (Segment Everything Everywhere All at Once) with a FocalNet backbone.

    Build with :meth:`from_config` (random weights; ``tiny`` is seeded) or :meth:`from_pretrained` (checkpoints).
    """

    def __init__(self, config: SEEMConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = FocalNet(config.backbone)
        self.sem_seg_head = SEEMHead(config)
        # Used only by the official interactive click simulation; kept because it is in the checkpoint.
        self.register_buffer("dilation_kernel", torch.ones(1, 1, 3, 3))
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)
        self.load_report: LoadReport | None = None

    # ------------------------------------------------------------------ construction and files

    @classmethod
    def from_config(
        cls,
        name_or_config: str | SEEMConfig = "tiny",
        num_classes: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SEEM:
        """A model with random weights.

        Args:
            name_or_config: ``"focalt"``, ``"focall"``, ``"tiny"`` or a :class:`SEEMConfig`.
            num_classes: only sizes the criterion's class weights (classes come from text); ``None`` keeps the
                config's value (133 for the presets).
            device: where the weights live; ``"meta"`` builds without memory (shapes and parameter counts only).
            dtype: parameter dtype (default float32).

        A config with a ``seed`` (``tiny``) draws its weights from that seed on the CPU inside
        ``torch.random.fork_rng``: the global RNG is untouched and the same call always gives the same weights.
        """
        if isinstance(name_or_config, str):
            config = get_config(name_or_config, num_classes=133 if num_classes is None else num_classes)
        elif isinstance(name_or_config, SEEMConfig):
            config = name_or_config
            if num_classes is not None and num_classes != config.num_classes:
                config = replace(config, num_classes=num_classes)
        else:
            raise TypeError(
                f"name_or_config must be a preset name or a SEEMConfig, got {type(name_or_config).__name__}."
            )
        device = torch.device(device) if device is not None else None
        if device is not None and device.type == "meta":
            with torch.device("meta"), _SkipMetaInit():
                model = cls(config)
        elif config.seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                model = cls(config)
        else:
            model = cls(config)
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str | os.PathLike,
        filename: str | None = None,
        config: str | SEEMConfig | None = None,
        num_classes: int | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        trust_pickle: bool = False,
        strict: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> SEEM:
        """Load an official SEEM ``.pt`` or a folder written by :meth:`save_pretrained`, locally or from the Hub.

        See :func:`seemadapt.model.checkpoint.load_pretrained` for the resolution rules; the returned model is in
        eval mode and carries the :class:`~seemadapt.model.checkpoint.LoadReport` as ``model.load_report``.
        """
        from seemadapt.model.checkpoint import load_pretrained

        return load_pretrained(
            cls,
            repo_or_path,
            filename=filename,
            config=config,
            num_classes=num_classes,
            revision=revision,
            token=token,
            trust_pickle=trust_pickle,
            strict=strict,
            device=device,
            dtype=dtype,
        )

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``model.safetensors`` and ``seemadapt_config.json`` into ``folder``; returns the folder."""
        from seemadapt.model.checkpoint import save_pretrained

        return str(save_pretrained(self, folder))

    def load_adapters(
        self,
        repo_or_folder: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> SEEM:
        """Apply and load adapters written by :func:`seemadapt.hub.save_adapters` (a folder or a Hub repo)."""
        from seemadapt.hub import load_adapters

        return load_adapters(self, repo_or_folder, revision=revision, token=token)

    # ------------------------------------------------------------------ parts

    @property
    def pixel_decoder(self) -> TransformerEncoderPixelDecoder:
        return self.sem_seg_head.pixel_decoder

    @property
    def decoder(self) -> SEEMDecoder:
        return self.sem_seg_head.predictor

    @property
    def language_encoder(self) -> LanguageEncoder:
        return self.sem_seg_head.predictor.lang_encoder

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sem_seg_head.predictor.query_feat.weight.dtype

    # ------------------------------------------------------------------ features

    def preprocess(
        self,
        images: ImageInput | Sequence[ImageInput] | ImageBatch,
        short_edge: int | None = None,
        max_size: int | None = None,
    ) -> ImageBatch:
        """Normalise and pad images (spec 1.1) into an :class:`ImageBatch` on the model's device and dtype.

        ``images``: a ``uint8`` tensor ``[3, H, W]`` (or ``[B, 3, H, W]``), a numpy ``[H, W, 3]`` array, a PIL image,
        or a list of them (sizes may differ), with 0..255 RGB values. ``short_edge`` / ``max_size`` optionally resize
        each image first (detectron2's ``ResizeShortestEdge``; predictions still come back at the given size).
        """
        if isinstance(images, ImageBatch):
            return images.to(device=self.device, dtype=self.dtype)
        tensors, _ = as_image_list(images)
        return batch_images(
            tensors,
            self.pixel_mean.to(self.dtype),
            self.pixel_std.to(self.dtype),
            self.config.size_divisibility,
            short_edge=short_edge,
            max_size=max_size,
        )

    def encode_image(
        self, images: ImageInput | Sequence[ImageInput] | ImageBatch
    ) -> tuple[Tensor, list[Tensor], list[tuple[int, int]]]:
        """Backbone + pixel decoder: ``(mask_features [B, mask_dim, Hp/4, Wp/4], [stride 32, 16, 8] maps,
        image_sizes)``."""
        batch = self.preprocess(images)
        features = self.backbone(batch.tensor)
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder(features)
        return mask_features, multi_scale, batch.image_sizes

    def class_embeddings(
        self, class_names: Sequence[str], mode: Literal["train", "eval"] = "eval", rng: Rng = None
    ) -> Tensor:
        """Classifier text embeddings ``[K+1, D]`` of ``class_names + ["background"]`` (cached by the encoder)."""
        return self.language_encoder.class_embeddings(class_names, mode=mode, rng=rng)

    def encode_grounding(
        self,
        texts: Sequence[Sequence[str] | None],
        hashes: Sequence[Sequence[int] | None] | None = None,
    ) -> GroundingPrompts:
        """Encode each image's grounding texts (one per grounding mask, duplicates allowed; ``None``/empty = none).

        ``hashes`` (per image, one per text; default :func:`text_hash` of each text) say which texts stand for the
        same target: the mapper gives a sentence's hash in text mode and the *class name's* in class mode, so two
        templates of one class ("a photo of a cat.", "a cat.") share one. As in SEEM, only the first text of each
        hash reaches the decoder: its valid tokens (SOT..EOT) are concatenated in first-occurrence order and padded
        seq-first with zeros and a padding mask (the official code pads with -1 and finds the padding again by
        value). Every text keeps its own EOT embedding (``class_embeddings``) for the criterion, which groups targets
        by hash. Runs with autograd when the encoder needs it (see :class:`LanguageEncoder`).
        """
        per_image = [list(t) if t else [] for t in texts]
        if hashes is None:
            hashes = [[text_hash(text) for text in image_texts] for image_texts in per_image]
        hashes = [
            [int(h) for h in image_hashes] if image_hashes is not None else [] for image_hashes in hashes
        ]
        if [len(h) for h in hashes] != [len(t) for t in per_image]:
            raise ValueError("encode_grounding: hashes must give one value per text of every image.")
        unique = list(dict.fromkeys(text for image_texts in per_image for text in image_texts))
        lang = self.language_encoder
        if not unique:
            return GroundingPrompts(None, None, [None] * len(per_image), hashes)
        tokenized = lang.tokenize(unique)
        encoding = lang(tokenized.input_ids, tokenized.attention_mask, normalize=False)
        row = {text: index for index, text in enumerate(unique)}
        lengths = encoding.attention_mask.sum(dim=1).tolist()
        sequences, class_embs = [], []
        for image_texts, image_hashes in zip(per_image, hashes):
            if not image_texts:
                sequences.append(encoding.tokens.new_zeros(0, encoding.tokens.shape[-1]))
                class_embs.append(None)
                continue
            first: dict[int, int] = {}  # hash -> index of its first text
            for index, value in enumerate(image_hashes):
                first.setdefault(value, index)
            indices = [row[image_texts[i]] for i in first.values()]
            sequences.append(torch.cat([encoding.tokens[i, : int(lengths[i])] for i in indices]))
            class_embs.append(encoding.sentence[[row[text] for text in image_texts]])
        longest = max(len(s) for s in sequences)
        tokens = encoding.tokens.new_zeros(longest, len(sequences), encoding.tokens.shape[-1])
        padding = torch.ones(len(sequences), longest, dtype=torch.bool, device=tokens.device)
        for b, sequence in enumerate(sequences):
            tokens[: len(sequence), b] = sequence
            padding[b, : len(sequence)] = False
        return GroundingPrompts(tokens, padding, class_embs, hashes)

    # ------------------------------------------------------------------ training

    def forward_train(
        self,
        images: ImageInput | Sequence[ImageInput] | ImageBatch,
        class_names: Sequence[str],
        grounding: Sequence[Sequence[str] | None] | None = None,
        rng: Rng = None,
        spatial: dict[str, Any] | None = None,
        grounding_hash: Sequence[Sequence[int] | None] | None = None,
    ) -> dict[str, Any]:
        """Training forward (spec 1.3): decoder outputs plus what the criterion needs.

        Args:
            images: a batch (anything :meth:`preprocess` takes, usually already augmented ``[3, H, W]`` tensors).
            class_names: the dataset's classes; one random template per class is drawn from ``rng``.
            grounding: per image the grounding texts (one per grounding mask) or ``None``.
            spatial: interactive prompts, passed to :class:`SEEMDecoder` unchanged.
            grounding_hash: per image the mapper's hash of each grounding text (class mode: the class name's), see
                :meth:`encode_grounding`; default: the texts' own hashes.

        Returns:
            the decoder's outputs (``pred_logits``, ``pred_masks``, ``aux_outputs``, grounding keys...) plus
            ``class_embeddings`` ``[K+1, D]``, ``grounding_class_embs`` and ``grounding_hash`` (lists per image, to
            copy into the criterion targets), ``logit_scale`` (the raw parameter), ``image_sizes`` and
            ``padded_size`` (targets must be padded to it).
        """
        if grounding is not None and len(grounding) != self._batch_length(images):
            raise ValueError(
                f"forward_train: grounding has {len(grounding)} entries for {self._batch_length(images)} images."
            )
        batch = self.preprocess(images)
        mask_features, multi_scale, _ = self.encode_image(batch)
        class_embs = self.class_embeddings(class_names, mode="train", rng=rng)
        prompts = self.encode_grounding(grounding, grounding_hash) if grounding is not None else None
        outputs = self.sem_seg_head.predictor(
            multi_scale,
            mask_features,
            class_embs,
            grounding_tokens=None if prompts is None else prompts.tokens,
            grounding_padding_mask=None if prompts is None else prompts.padding_mask,
            spatial=spatial,
            task="seg",
        )
        outputs["class_embeddings"] = class_embs
        outputs["grounding_class_embs"] = [None] * len(batch) if prompts is None else prompts.class_embeddings
        outputs["grounding_hash"] = [[] for _ in range(len(batch))] if prompts is None else prompts.hashes
        outputs["logit_scale"] = self.language_encoder.logit_scale
        outputs["image_sizes"] = batch.image_sizes
        outputs["padded_size"] = batch.padded_size
        return outputs

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Same as :meth:`forward_train` (``forward`` is what DDP and hooks wrap)."""
        return self.forward_train(*args, **kwargs)

    @staticmethod
    def _batch_length(images: Any) -> int:
        if isinstance(images, ImageBatch):
            return len(images)
        return len(as_image_list(images)[0])

    # ------------------------------------------------------------------ inference

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode (no stochastic depth) for the duration, then the caller's mode again."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @staticmethod
    def _thing_ids(classes: Sequence[str], thing_classes: Sequence[str | int] | None) -> set[int] | None:
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

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str],
        task: Task = "semantic",
        thing_classes: Sequence[str | int] | None = None,
        *,
        short_edge: int | None = None,
        max_size: int | None = None,
        top_k: int = DETECTIONS_PER_IMAGE,
        object_mask_threshold: float | None = None,
        overlap_threshold: float | None = None,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Open-vocabulary segmentation of ``images`` into ``classes`` (spec 1.4), outputs at each image's own size.

        Args:
            images: one image or a list (any sizes; see :meth:`preprocess`). A single image gives a single result.
            classes: class names (COCO suffixes like ``-merged`` are stripped for the text); each is embedded as the
                mean over SEEM's 81 prompt templates (cached per class list).
            task: ``"semantic"`` -> ``{"sem_seg": [K, H, W] scores, "labels": [H, W] int64}``;
                ``"panoptic"`` -> ``{"panoptic_seg": [H, W] int32, "segments_info": [...]}`` (see
                :func:`~seemadapt.model.postprocess.panoptic_inference`);
                ``"instance"`` -> ``{"masks": bool [N, H, W], "scores": [N], "labels": [N]}``.
            thing_classes: names or indices of the classes that are things (panoptic: every other class is stuff and
                merged per class; instance: only things are kept). ``None``: all classes are things.
            short_edge, max_size: optional resize before the network (detectron2 ``ResizeShortestEdge``).
            top_k: instances per image. ``object_mask_threshold`` / ``overlap_threshold``: panoptic thresholds
                (default: the config's, 0.8 / 0.8).

        Runs in eval mode (restoring the caller's mode afterwards) under ``torch.inference_mode``; tensors are
        returned on the model's device.
        """
        if task not in TASKS:
            raise ValueError(f"predict: task must be one of {TASKS}, got {task!r}.")
        classes = [str(name) for name in classes]
        if not classes:
            raise ValueError("predict: classes must name at least one class.")
        if len(set(classes)) != len(classes):
            raise ValueError(f"predict: classes must be unique, got {classes}.")
        thing_ids = self._thing_ids(classes, thing_classes)
        decoder_config = self.config.decoder
        object_threshold = (
            decoder_config.object_mask_threshold if object_mask_threshold is None else object_mask_threshold
        )
        overlap = decoder_config.overlap_threshold if overlap_threshold is None else overlap_threshold
        image_list, single = as_image_list(images)
        with self._evaluating():
            # Text embeddings are made outside inference mode: they are cached and may later meet autograd.
            class_embs = self.class_embeddings(classes, mode="eval")
            with torch.inference_mode():
                batch = self.preprocess(image_list, short_edge=short_edge, max_size=max_size)
                mask_features, multi_scale, _ = self.encode_image(batch)
                outputs = self.sem_seg_head.predictor(multi_scale, mask_features, class_embs, task="seg")
                results = []
                for b in range(len(batch)):
                    masks = resize_mask_logits(
                        outputs["pred_masks"][b],
                        batch.padded_size,
                        batch.image_sizes[b],
                        batch.original_sizes[b],
                    )
                    logits = outputs["pred_logits"][b].float()
                    if task == "semantic":
                        sem_seg = semantic_inference(logits, masks)
                        results.append({"sem_seg": sem_seg, "labels": sem_seg.argmax(dim=0)})
                    elif task == "panoptic":
                        panoptic_seg, segments = panoptic_inference(
                            logits, masks, thing_ids, object_threshold, overlap
                        )
                        results.append({"panoptic_seg": panoptic_seg, "segments_info": segments})
                    else:
                        results.append(instance_inference(logits, masks, thing_ids, top_k))
        return results[0] if single else results

    def ground(
        self,
        image: ImageInput,
        sentences: str | Sequence[str],
        *,
        short_edge: int | None = None,
        max_size: int | None = None,
        threshold: float = 0.0,
    ) -> dict[str, Tensor]:
        """Masks for referring ``sentences`` in one ``image`` (SEEM's text grounding, spec 1.4).

        All sentences' valid tokens go into the decoder together; each sentence then takes the grounding query whose
        caption embedding is most similar to its sentence embedding.

        Returns ``{"masks": bool [n, H, W] (logit > threshold), "mask_logits": [n, H, W], "scores": [n],
        "query_indices": [n]}`` at the image's size; ``scores`` is the softmax over queries at the chosen query.
        """
        image_list, _ = as_image_list(image)
        if len(image_list) != 1:
            raise ValueError(f"ground: takes one image, got {len(image_list)}; call it once per image.")
        sentences = [sentences] if isinstance(sentences, str) else [str(s) for s in sentences]
        if not sentences:
            raise ValueError("ground: needs at least one sentence.")
        lang = self.language_encoder
        with self._evaluating(), torch.inference_mode():
            batch = self.preprocess(image_list, short_edge=short_edge, max_size=max_size)
            mask_features, multi_scale, _ = self.encode_image(batch)
            encoding = lang.encode(sentences, normalize=False, token_level=True)
            tokens = encoding.tokens[encoding.attention_mask.bool()][:, None]  # [T, 1, D]
            outputs = self.sem_seg_head.predictor(
                multi_scale, mask_features, None, grounding_tokens=tokens, task="grounding_eval"
            )
            indices, scores = match_grounding(outputs["pred_gtexts"][0], encoding.sentence, lang.logit_scale)
            logits = resize_mask_logits(
                outputs["pred_gmasks"][0][indices],
                batch.padded_size,
                batch.image_sizes[0],
                batch.original_sizes[0],
            )
        return {
            "masks": logits > threshold,
            "mask_logits": logits,
            "scores": scores,
            "query_indices": indices,
        }

    def segment(
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
          one object, segmented by :meth:`ground`.

        Refinement: ``rounds > 1`` re-runs the decoder with each round's masks as memory prompts. To correct a
        result, pass it back: ``prev_mask=result["logits"]`` feeds the memories, and either repeat every prompt
        with the new clicks (e.g. ``points=old_points + [(x, y, 0)]``) or give ``prev_prompts=result["prompts"]``
        and only the new clicks (one point group per object, ``[]`` for objects without clicks; a flat list when
        there is one object), which then may be negative only.

        ``generator`` drives SEEM's random choices (which object queries serve each prompt, point sampling, memory
        slots); the default is a fresh generator seeded with 0, so a call is reproducible.

        Returns ``{"masks": bool [n, H, W] (logits > threshold), "scores": [n], "logits": [n, H, W], "kinds":
        [str] * n, "prompts": VisualPrompts | None}`` at the image's size; ``scores`` is the chosen candidate's
        probability among the object's candidates (text: the grounding score of :meth:`ground`).
        """
        from seemadapt.model import interactive
        from seemadapt.model.prompts import encode_prompts, logits_to_canvas

        image_list, _ = as_image_list(image)
        if len(image_list) != 1:
            raise ValueError(f"segment: takes one image, got {len(image_list)}; call it once per image.")
        if rounds < 1:
            raise ValueError(f"segment: rounds must be >= 1, got {rounds}.")
        texts = None if text is None else ([text] if isinstance(text, str) else [str(t) for t in text])
        if texts is not None and not texts:
            raise ValueError("segment: text must name at least one sentence (or be None).")
        visual = prev_prompts is not None or any(p is not None for p in (points, boxes, scribbles, mask))
        if not visual:
            if texts is None:
                raise ValueError(
                    "segment: give at least one prompt (points, boxes, scribbles, mask or text)."
                )
            if prev_mask is not None:
                raise ValueError(
                    "segment: prev_mask feeds the memories of visual prompts; give visual prompts."
                )
            grounded = self.ground(
                image_list[0], texts, short_edge=short_edge, max_size=max_size, threshold=threshold
            )
            return {
                "masks": grounded["masks"],
                "scores": grounded["scores"],
                "logits": grounded["mask_logits"],
                "kinds": ["text"] * len(texts),
                "prompts": None,
            }
        with self._evaluating(), torch.inference_mode():
            encoded = interactive.encode_features(self, image_list, short_edge=short_edge, max_size=max_size)
            geometry = encoded.geometry()
            if prev_prompts is not None:
                prompts = self._merge_clicks(
                    prev_prompts, points, (boxes, scribbles, mask), geometry, point_size
                )
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
            if len(prompts) == 0:
                raise ValueError("segment: the visual prompts are empty.")
            if texts is not None and len(texts) not in (1, len(prompts)):
                raise ValueError(
                    f"segment: {len(texts)} texts for {len(prompts)} visual prompts; give one text for all "
                    "objects or one per object."
                )
            text_embeddings = None if texts is None else self.language_encoder.encode(texts, normalize=True)
            memory = None
            if prev_mask is not None:
                if prev_mask.dim() != 3 or prev_mask.shape[0] != len(prompts):
                    raise ValueError(
                        f"segment: prev_mask must be [{len(prompts)}, H, W] logits (one per object, a previous "
                        f"result's 'logits'), got {tuple(prev_mask.shape)}."
                    )
                memory = logits_to_canvas(prev_mask.to(self.device), geometry, encoded.decoder_size)[None]
            decoded = interactive.decode_prompts(
                self,
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

    @staticmethod
    def _merge_clicks(
        prev_prompts: Any, points: Any, others: tuple[Any, ...], geometry: Any, point_size: int
    ) -> Any:
        """``prev_prompts`` plus new corrective clicks, one point group per previous object (for :meth:`segment`)."""
        from seemadapt.model.prompts import VisualPrompts, encode_points, group_points

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

    # ------------------------------------------------------------------ bookkeeping

    def adapter_state_keys(self) -> set[str]:
        """State-dict keys that belong to adapters (not in official checkpoints): modules of type
        :class:`~seemadapt.adapters.modules.AdapterModule`, the backbone blocks' ``adapter`` hook, the decoder's
        adapter hook lists, and LoRA weights."""
        from seemadapt.adapters.modules import AdapterModule

        prefixes = tuple(
            f"{name}." for name, module in self.named_modules() if isinstance(module, AdapterModule)
        )
        keys = set()
        for key in self.state_dict(keep_vars=True):
            parts = key.split(".")
            if (
                key.startswith(prefixes)
                or "lora_" in key
                or (parts[0] == "backbone" and "adapter" in parts)
                or (key.startswith("sem_seg_head.predictor.") and parts[2] in DECODER_ADAPTER_HOOKS)
            ):
                keys.add(key)
        return keys

    def parameter_counts(self, trainable_only: bool = False) -> dict[str, int]:
        """Parameters per part: ``backbone``, ``pixel_decoder``, ``language_encoder``, ``decoder`` (language encoder
        excluded; includes ``interactive``), ``interactive``, ``adapters``, ``other``, ``total``, ``trainable``,
        ``frozen``. With ``trainable_only`` the parts count only parameters with ``requires_grad``."""
        adapters = self.adapter_state_keys()
        names = (
            "backbone",
            "pixel_decoder",
            "language_encoder",
            "decoder",
            "interactive",
            "adapters",
            "other",
        )
        counts = dict.fromkeys((*names, "total", "trainable", "frozen"), 0)
        for name, parameter in self.named_parameters():
            size = parameter.numel()
            counts["trainable" if parameter.requires_grad else "frozen"] += size
            if trainable_only and not parameter.requires_grad:
                continue
            part = "adapters" if name in adapters else _part_of(name)
            if part == "interactive":
                counts["interactive"] += size
                part = "decoder"
            counts[part] += size
            counts["total"] += size
        return counts

    def summary(self) -> str:
        """A table of parameter counts per part, with the trainable share of each."""
        counts = self.parameter_counts()
        trainable = self.parameter_counts(trainable_only=True)
        rows = [
            ("backbone", "backbone"),
            ("pixel decoder", "pixel_decoder"),
            ("language encoder", "language_encoder"),
            ("decoder", "decoder"),
            ("  of which interactive-only", "interactive"),
            ("adapters", "adapters"),
        ]
        if counts["other"]:
            rows.append(("other", "other"))
        rows.append(("total", "total"))
        width = max(len(label) for label, _ in rows)
        lines = [f"SEEM v1 ({self.config.name})", f"{'part':<{width}}  {'parameters':>13}  {'trainable':>13}"]
        lines += [f"{label:<{width}}  {counts[key]:>13,}  {trainable[key]:>13,}" for label, key in rows]
        lines.append(f"{'frozen':<{width}}  {counts['frozen']:>13,}")
        return "\n".join(lines)

    def print_summary(self) -> None:
        print(self.summary())


class _SkipMetaInit(TorchFunctionMode):
    """Skip in-place ops (weight initialisation) on meta tensors: they compute nothing, but the first ``normal_`` on
    a meta tensor imports ``torch._dynamo`` (about 10 s on a small machine)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # nn.init functions take ``tensor=`` as a keyword
        is_init = name.endswith("_") and not name.endswith("__") and name != "requires_grad_"
        if is_init and isinstance(target, Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def _part_of(name: str) -> str:
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("sem_seg_head.pixel_decoder."):
        return "pixel_decoder"
    if name.startswith("sem_seg_head.predictor.lang_encoder."):
        return "language_encoder"
    if name.startswith(INTERACTIVE_PREFIXES):
        return "interactive"
    if name.startswith("sem_seg_head.predictor."):
        return "decoder"
    return "other"
