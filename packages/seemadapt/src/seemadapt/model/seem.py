"""SEEM v1 assembled: FocalNet backbone, pixel decoder and SEEM decoder, with input handling and inference.

Module names equal the official checkpoint's (``backbone.*``, ``sem_seg_head.pixel_decoder.*``,
``sem_seg_head.predictor.*``, ``dilation_kernel``), so official weights load with every key used
(:mod:`seemadapt.model.checkpoint`). Entry points:

* :meth:`SEEM.from_config` / :meth:`SEEM.from_pretrained` / :meth:`SEEM.save_pretrained`;
* :meth:`SEEM.predict` (semantic / panoptic / instance from class names), :meth:`SEEM.ground` (masks for
  referring sentences) and :meth:`SEEM.segment` (visual prompts), on the model's device, under
  ``torch.inference_mode``: they call :class:`~seemadapt.model.predictor.SEEMPredictor`;
* :meth:`SEEM.summary` / :meth:`SEEM.parameter_counts`: :mod:`seemadapt.model.summary`;
* :meth:`SEEM.forward_train` (= ``forward``, so DDP wraps it): the decoder outputs for the criterion, with a random
  prompt template per class and grounding texts encoded at token level.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from seemadapt.adapter_files import load_adapters as load_adapter_folder
from seemadapt.model.backbone import FocalNet
from seemadapt.model.checkpoint import load_pretrained, save_pretrained
from seemadapt.model.config import SEEMConfig, get_config
from seemadapt.model.decoder import SEEMDecoder
from seemadapt.model.grounding import GroundingPrompts, encode_grounding, text_hash
from seemadapt.model.images import ImageBatch, ImageInput, as_image_list, batch_images
from seemadapt.model.language import LanguageEncoder
from seemadapt.model.pixel_decoder import TransformerEncoderPixelDecoder
from seemadapt.model.predictor import TASKS, SEEMPredictor, Task
from seemadapt.model.summary import adapter_state_keys, parameter_counts, summary_table
from seemadapt.model.templates import Rng

if TYPE_CHECKING:
    from seemadapt.model.checkpoint import LoadReport

__all__ = ["SEEM", "TASKS", "GroundingPrompts", "SEEMHead", "Task", "text_hash"]


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

    # Load an official SEEM ``.pt`` or a folder written by :meth:`save_pretrained`, locally or from the Hub:
    # ``SEEM.from_pretrained(repo_or_path, filename=None, ..., strict=True)``; one implementation, documented in
    # :func:`seemadapt.model.checkpoint.load_pretrained` (the class is its first argument).
    from_pretrained = classmethod(load_pretrained)

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Write ``model.safetensors`` and ``seemadapt_config.json`` into ``folder``; returns the folder."""
        return str(save_pretrained(self, folder))

    def load_adapters(
        self,
        repo_or_folder: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> SEEM:
        """Apply and load adapters written by :func:`seemadapt.hub.save_adapters` (a folder or a Hub repo); the work is
        :func:`seemadapt.load_adapters`'."""
        load_adapter_folder(self, repo_or_folder, revision=revision, token=token)
        return self

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
        """Normalise and pad images into an :class:`ImageBatch` on the model's device and dtype.

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
        """Encode each image's grounding texts for the decoder and the criterion (see
        :func:`seemadapt.model.grounding.encode_grounding`; default hashes by :func:`text_hash`)."""
        return encode_grounding(self.language_encoder, texts, hashes)

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
        """Training forward: decoder outputs plus what the criterion needs.

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

    # ------------------------------------------------------------------ inference (see seemadapt.model.predictor)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: Sequence[str],
        task: Task | Sequence[Task] = "semantic",
        thing_classes: Sequence[str | int] | None = None,
        **options: Any,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Open-vocabulary segmentation of ``images`` into ``classes``, outputs at each image's own size.

        Args:
            images: one image or a list (any sizes; see :meth:`preprocess`). A single image gives a single result.
            classes: class names (COCO suffixes like ``-merged`` are stripped for the text); each is embedded as the
                mean over SEEM's 81 prompt templates (cached per class list).
            task: ``"semantic"`` -> ``{"sem_seg": [K, H, W] scores, "labels": [H, W] int64}``;
                ``"panoptic"`` -> ``{"panoptic_seg": [H, W] int32, "segments_info": [...]}`` (see
                :func:`~seemadapt.model.postprocess.panoptic_inference`);
                ``"instance"`` -> ``{"masks": bool [N, H, W], "scores": [N], "labels": [N]}``. ``masks`` (and
                ``sem_seg``) are column-major views (``masks.transpose(1, 2)`` is contiguous: COCO's RLE order, which
                ``evaluate`` encodes without a copy); call ``.contiguous()`` where row-major storage is needed.
                A list of tasks (e.g. ``["semantic", "panoptic", "instance"]``) gives ``{task: that result}`` per
                image, all from one forward pass and one resize of the masks (the same values as one call per task).
            thing_classes: names or indices of the classes that are things (panoptic: every other class is stuff and
                merged per class; instance: only things are kept). ``None``: all classes are things.
            options (keyword only; the signature is :meth:`seemadapt.model.predictor.SEEMPredictor.predict`'s):
            ``short_edge``, ``max_size``: optional resize before the network (detectron2 ``ResizeShortestEdge``).
            ``top_k``: instances per image (default 100). ``object_mask_threshold`` / ``overlap_threshold``: panoptic thresholds
                (default: the config's, 0.8 / 0.8).
            ``grounding``: one entry per image (a sentence, a list of sentences, or ``None``): each result then is
                ``{task: ..., "grounding": what :meth:`ground` gives for those sentences, or None}`` (``task`` may be
                ``[]`` for grounding alone). The backbone and pixel decoder run once for both; an image whose padding
                in the batch differs from its own (images of mixed sizes) is grounded by :meth:`ground`, so the masks
                are always those of :meth:`ground` (up to float rounding of the batched network).

        Runs in eval mode (restoring the caller's mode afterwards) under ``torch.inference_mode``; tensors are
        returned on the model's device.
        """
        return SEEMPredictor(self).predict(images, classes, task, thing_classes, **options)

    def ground(
        self,
        image: ImageInput,
        sentences: str | Sequence[str],
        *,
        short_edge: int | None = None,
        max_size: int | None = None,
        threshold: float = 0.0,
    ) -> dict[str, Tensor]:
        """Masks for referring ``sentences`` in one ``image`` (SEEM's text grounding).

        All sentences' valid tokens go into the decoder together; each sentence then takes the grounding query whose
        caption embedding is most similar to its sentence embedding.

        Returns ``{"masks": bool [n, H, W] (logit > threshold), "mask_logits": [n, H, W], "scores": [n],
        "query_indices": [n]}`` at the image's size; ``scores`` is the softmax over queries at the chosen query.
        """
        return SEEMPredictor(self).ground(
            image, sentences, short_edge=short_edge, max_size=max_size, threshold=threshold
        )

    def segment(self, image: ImageInput, *prompts: Any, **options: Any) -> dict[str, Any]:
        """Segment the objects given by visual prompts (and/or text) in one ``image``: SEEM's interactive mode.

        ``segment(image, points=None, boxes=None, scribbles=None, mask=None, text=None, *, rounds=1,
        prev_mask=None, prev_prompts=None, generator=None, short_edge=None, max_size=None, threshold=0.0,
        point_size=3, scribble_width=3)``: the arguments and the result are documented once, at
        :meth:`seemadapt.model.predictor.SEEMPredictor.segment`.
        """
        return SEEMPredictor(self).segment(image, *prompts, **options)

    # ------------------------------------------------------------------ bookkeeping (see seemadapt.model.summary)

    def adapter_state_keys(self) -> set[str]:
        """State-dict keys that belong to adapters (not in official checkpoints): modules of type
        :class:`~seemadapt.adapters.hooks.AdapterModule`, the backbone blocks' ``adapter`` hook, the decoder's
        adapter hook lists, and LoRA weights."""
        return adapter_state_keys(self)

    def parameter_counts(self, trainable_only: bool = False) -> dict[str, int]:
        """Parameters per part: ``backbone``, ``pixel_decoder``, ``language_encoder``, ``decoder`` (language encoder
        excluded; includes ``interactive``), ``interactive``, ``adapters``, ``other``, ``total``, ``trainable``,
        ``frozen``. With ``trainable_only`` the parts count only parameters with ``requires_grad``."""
        return parameter_counts(self, trainable_only)

    def summary(self) -> str:
        """A table of parameter counts per part, with the trainable share of each."""
        return summary_table(self)

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
