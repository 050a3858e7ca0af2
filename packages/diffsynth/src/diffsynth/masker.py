"""AttentionMasker: images plus attention-derived masks for a batch of prompts, in one pipeline call.

Per image: the cross-attention of its class tokens (averaged over the chosen layers and executed steps)
is refined by the averaged self-attention, ``A* = (A_S)^tau . A_C`` (Dataset Diffusion), normalised per
class, upsampled to the image and thresholded into a label map.

Label values. Each image has its own class list; ``soft_maps[k]`` is always the map of
``result.classes[k]``. The label map writes ``result.class_ids[k]`` for class ``k``,
``result.background_id`` for background and ``ignore_index`` (255) for uncertain pixels. Without
``categories`` the ids are local (``0..K-1``, background ``K``); with a global ``categories`` list they
are global contiguous indices (``categories.index(name)``, background ``len(categories)``), which is
what a dataset with one ClassLabel wants. With ``background=False`` background pixels are ignored too.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from diffsynth import dataset_diffusion as dd
from diffsynth.attention import AttentionStore, available_resolutions, grid_size
from diffsynth.dit_attention import DiTStore
from diffsynth.dit_masks import check_dit_settings, dit_pool, dit_soft_maps
from diffsynth.dit_pipelines import is_dit, max_sequence_length, token_grid
from diffsynth.dit_tokens import joint_token_spans
from diffsynth.masks import (
    check_thresholds,
    class_columns,
    label,
    soft_maps_from_attention,
    to_grid,
    upsample,
)
from diffsynth.pipelines import (
    check_supported,
    default_size,
    is_sdxl,
    load_pipeline,
    run_pipeline,
    validate_size,
)
from diffsynth.prompts import (
    TokenSpan,
    class_prompt,
    class_token_spans,
    pipeline_tokenizers,
    with_class_names,
)

Resolution = float | int


def _check_resolution(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"MaskerConfig.{name} must be a float fraction of the latent side or an int side, got {value!r}."
        )
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(
            f"MaskerConfig.{name}={value} must be a fraction in (0, 1] of the latent side (0.5 = latent/2) "
            "or an int grid side (e.g. 32)."
        )
    if isinstance(value, int) and value < 1:
        raise ValueError(f"MaskerConfig.{name}={value} must be >= 1 when given as a grid side.")


@dataclass
class MaskerConfig:
    """Settings of attention capture and mask extraction.

    Defaults: 50 steps, guidance 7.5, no negative prompt, self-attention at latent/2 and cross-attention at
    latent/4 over all executed steps, ``tau = 4``, thresholds 0.6 / 0.5, and the cross-attention of the *caption's
    own* class tokens (``class_prompt=False``). The refinement, thresholds and resolutions are Dataset Diffusion's; the
    step count (half the cost) and the caption tokens (class names need not be appended) are not. For Dataset
    Diffusion's exact recipe (100 steps, its fixed negative prompt, keys from the class-only prompt "cat dog" while
    the image is drawn from "caption; cat dog") use :meth:`dataset_diffusion`.

    Resolutions: a float is a fraction of the latent's short side (``0.5`` = latent/2: 32x32 self-attention
    for 512 px SD 1.5, 64x64 for SDXL); an int is the attention grid's short side (e.g. ``32``).
    ``cross_resolution`` may list several; their maps are resized (bicubic, not clamped, as Dataset Diffusion)
    to the self grid and averaged.

    Steps: ``step_window = (start, end)`` keeps executed steps ``floor(start*T) <= i < ceil(end*T)`` of the
    ``T`` steps the pipeline actually ran (``int(steps * strength)`` in image-to-image);
    ``step_indices = (first, stop)`` selects executed-step indices instead.

    Softmax: ``"full"`` takes it over the whole 77-token sequence (the start token soaks up attention and
    acts as a background sink); ``"classes"`` renormalises over the class tokens only - degenerate for a
    single one-token class (the map is 1 everywhere, so it normalises to 0 and all pixels are background)
    and forcing every pixel onto some class otherwise.

    Class prompt (Dataset Diffusion's way): with ``class_prompt=True`` the captured cross-attention uses
    keys from a class-only prompt (the names joined by ``class_separator``: "mold, stain" by default, "mold stain"
    in Dataset Diffusion) encoded by the pipeline's text encoder, while the image is drawn from the caption (plus
    "; " and the class names when ``append_class_names``). Class names then need not appear in the caption.

    Diffusion transformers (SD3 / SD3.5, FLUX.1; the resolution fields above are UNet-only): the image->text
    block of the joint softmax is the cross-attention, the image->image block the self-attention.
    ``dit_joint_blocks`` / ``dit_single_blocks`` are fractional windows over the joint (double-stream) blocks and
    FLUX's single-stream blocks (None: none); ``dit_grid`` is the short side of the pooled token grid the maps are
    summed on (e.g. 32: 1024 px FLUX/SD3 tokens 64x64 pooled 2x2); ``dit_renormalize`` rescales each image->image
    row to sum to 1 before ``(A_S)^tau`` (the rest of its mass went to text keys). ``max_sequence_length``: T5
    positions (pipeline default: SD3 256, FLUX 512).
    """

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    self_resolution: Resolution = 0.5
    cross_resolution: Resolution | tuple[Resolution, ...] = 0.25
    tau: int = 4
    threshold: float = 0.6
    uncertainty_threshold: float = 0.5
    step_window: tuple[float, float] = (0.0, 1.0)
    step_indices: tuple[int, int | None] | None = None
    softmax: Literal["full", "classes"] = "full"
    class_prompt: bool = False
    append_class_names: bool = True
    class_separator: str = ", "
    background: bool = True
    keep_soft_maps: bool = True
    ignore_index: int = 255
    progress: bool = True
    chunk_mb: float = 16.0
    dit_joint_blocks: tuple[float, float] | None = (0.5, 1.0)
    dit_single_blocks: tuple[float, float] | None = None
    dit_grid: int = 32
    dit_renormalize: bool = True
    max_sequence_length: int | None = None

    @classmethod
    def dataset_diffusion(cls, **overrides: Any) -> MaskerConfig:
        """Dataset Diffusion's recipe (:mod:`diffsynth.dataset_diffusion`): 100 steps, its negative prompt, keys
        from the class-only prompt "cat dog" while the image is drawn from "caption; cat dog"; ``overrides``
        replace single fields (e.g. ``height``)."""
        recipe: dict[str, Any] = dict(
            num_inference_steps=dd.NUM_INFERENCE_STEPS,
            guidance_scale=dd.GUIDANCE_SCALE,
            negative_prompt=dd.NEGATIVE_PROMPT,
            self_resolution=dd.SELF_RESOLUTION,
            cross_resolution=dd.CROSS_RESOLUTION,
            tau=dd.TAU,
            threshold=dd.THRESHOLD,
            uncertainty_threshold=dd.UNCERTAINTY_THRESHOLD,
            step_window=(0.0, 1.0),
            step_indices=None,
            softmax="full",
            class_prompt=True,
            append_class_names=True,
            class_separator=dd.CLASS_SEPARATOR,
        )
        return cls(**{**recipe, **overrides})

    def __post_init__(self) -> None:
        check_dit_settings(self)
        self._check_sampling()
        self._check_resolutions()
        self._check_masks()
        self._check_steps()
        if self.softmax not in ("full", "classes"):
            raise ValueError(f"MaskerConfig.softmax must be 'full' or 'classes', got {self.softmax!r}.")
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"MaskerConfig.ignore_index must fit uint8 (0..255), got {self.ignore_index}.")
        if self.chunk_mb <= 0:
            raise ValueError(f"MaskerConfig.chunk_mb must be > 0, got {self.chunk_mb}.")

    def _check_sampling(self) -> None:
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(
                f"MaskerConfig.num_inference_steps must be an int >= 1, got {self.num_inference_steps!r}."
            )
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(
                f"MaskerConfig.guidance_scale must be finite and >= 0, got {self.guidance_scale}."
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(
                    f"MaskerConfig.{name} must be a positive int or None (model default), got {value!r}."
                )

    def _check_resolutions(self) -> None:
        """Check the resolutions; ``cross_resolution`` becomes a tuple."""
        _check_resolution("self_resolution", self.self_resolution)
        if not isinstance(self.cross_resolution, tuple | list):
            self.cross_resolution = (self.cross_resolution,)
        self.cross_resolution = tuple(self.cross_resolution)
        if not self.cross_resolution:
            raise ValueError("MaskerConfig.cross_resolution is empty; give at least one resolution.")
        for value in self.cross_resolution:
            _check_resolution("cross_resolution", value)

    def _check_masks(self) -> None:
        if not isinstance(self.tau, int) or isinstance(self.tau, bool) or self.tau < 0:
            raise ValueError(
                f"MaskerConfig.tau must be an int >= 0 (Dataset Diffusion uses 4), got {self.tau!r}."
            )
        try:
            check_thresholds(self.threshold, self.uncertainty_threshold)
        except ValueError as error:
            raise ValueError(f"MaskerConfig: {error}") from None

    def _check_steps(self) -> None:
        """Check the step selection; ``step_window`` becomes a tuple of floats."""
        start, end = self.step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(
                f"MaskerConfig.step_window={self.step_window} must satisfy 0 <= start < end <= 1 (fractions of "
                "the executed steps); use step_indices for index ranges."
            )
        self.step_window = (float(start), float(end))
        if self.step_indices is not None:
            first, stop = self.step_indices
            if first < 0 or (stop is not None and stop <= first):
                raise ValueError(
                    f"MaskerConfig.step_indices={self.step_indices} must be (first >= 0, stop > first or None)."
                )


@dataclass
class MaskResult:
    """One generated image with its masks.

    ``label_map``: uint8 ``[H, W]`` (values: ``class_ids``, ``background_id``, ``ignore_index``).
    ``soft_maps``: float32 ``[K, H, W]`` refined maps in [0, 1], in ``classes`` order (None if not kept); clamped
    after labelling, so ``label(soft_maps)`` can differ from ``label_map`` only where two maps are both 1.
    ``cross_maps``: float32 ``[K, H, W]`` raw cross-attention, normalised per class and upsampled.
    ``metadata``: prompt, seed, classes, class_ids, token spans, steps executed and captured, layers,
    resolutions and settings - JSON-serialisable.
    """

    image: Image.Image
    label_map: np.ndarray
    soft_maps: np.ndarray | None
    cross_maps: np.ndarray | None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.metadata["prompt"]

    @property
    def seed(self) -> int:
        return self.metadata["seed"]

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]

    @property
    def class_ids(self) -> list[int]:
        return self.metadata["class_ids"]

    @property
    def background_id(self) -> int:
        return self.metadata["background_id"]

    @property
    def ignore_index(self) -> int:
        return self.metadata["ignore_index"]


class AttentionMasker:
    """Generate images with a Stable Diffusion pipeline and extract per-class masks from its attention.

    ``pipeline`` is a loaded SD 1.x/2.x/SDXL, SD3/SD3.5 or FLUX.1 pipeline (text-to-image or image-to-image) or
    anything :func:`diffsynth.pipelines.load_pipeline` accepts (a Hub id, a local folder, ``"tiny"``, ``"tiny-flux"``).
    """

    def __init__(self, pipeline: Any, config: MaskerConfig | None = None, **load_kwargs: Any) -> None:
        self.config = config or MaskerConfig()
        if isinstance(pipeline, str | os.PathLike) or load_kwargs:
            pipeline = load_pipeline(pipeline, progress=self.config.progress, **load_kwargs)
        check_supported(pipeline)
        self.pipe = pipeline
        if is_dit(pipeline):
            self._init_dit()
            return
        self.size = (
            self.config.height or default_size(pipeline)[0],
            self.config.width or default_size(pipeline)[1],
        )
        validate_size(pipeline, *self.size)
        self.latent_size = (
            self.size[0] // pipeline.vae_scale_factor,
            self.size[1] // pipeline.vae_scale_factor,
        )
        self.self_factor = self._factor(self.config.self_resolution, "self")
        self.cross_factors = tuple(sorted({self._factor(r, "cross") for r in self.config.cross_resolution}))

    def _init_dit(self) -> None:
        """Sizes and the pooled token grid of a diffusion transformer; UNet-only settings are refused."""
        cfg = self.config
        if cfg.class_prompt or cfg.softmax != "full":
            raise ValueError(
                f"{type(self.pipe).__name__}: class_prompt and softmax='classes' are UNet-only settings; the joint "
                "softmax of a diffusion transformer is captured as it is (leave class_prompt=False, softmax='full')."
            )
        self.size = (
            cfg.height or default_size(self.pipe)[0],
            cfg.width or default_size(self.pipe)[1],
        )
        validate_size(self.pipe, *self.size)
        self.latent_size = token_grid(self.pipe, *self.size)
        self.pool = dit_pool(self.latent_size, cfg.dit_grid)
        self.sequence = max_sequence_length(self.pipe, cfg.max_sequence_length)

    # -- resolutions ---------------------------------------------------------------------------------
    def _factor(self, resolution: Resolution, kind: str) -> int:
        short = min(self.latent_size)
        offered = available_resolutions(self.pipe.unet)[kind]  # type: ignore[index]
        if isinstance(resolution, float):
            factor = round(1.0 / resolution)
            exact = math.isclose(factor * resolution, 1.0, rel_tol=1e-6)
        else:
            factor = short // resolution if resolution else 0
            exact = factor > 0 and min(grid_size(self.latent_size, factor)) == resolution
        if not exact or factor not in offered:
            sides = [min(grid_size(self.latent_size, f)) for f in offered]
            raise ValueError(
                f"MaskerConfig.{kind}_resolution={resolution!r}: the UNet has {kind}-attention only at latent/"
                f"{offered} (grid short sides {sides} for latent {self.latent_size}); pick one of those "
                f"(fractions {[1 / f for f in offered]})."
            )
        return factor

    def resolutions(self) -> dict[str, Any]:
        """Grid sizes (h, w) of the captured self and cross layers for the configured image size."""
        if is_dit(self.pipe):
            pooled = [self.latent_size[0] // self.pool, self.latent_size[1] // self.pool]
            return {"tokens": list(self.latent_size), "self": pooled, "cross": [pooled]}
        return {
            "latent": list(self.latent_size),
            "self": list(grid_size(self.latent_size, self.self_factor)),
            "cross": [list(grid_size(self.latent_size, f)) for f in self.cross_factors],
        }

    # -- main entry ----------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[str],
        classes: Sequence[Sequence[str]],
        seeds: Sequence[int],
        init_images: Sequence[Any] | None = None,
        strength: float = 0.4,
        categories: Sequence[str] | None = None,
    ) -> list[MaskResult]:
        """Draw ``len(prompts)`` images in one pipeline call and return their masks.

        ``classes[i]`` are the class names of image ``i`` (each must occur in ``prompts[i]`` unless
        class-prompt mode is on); ``seeds[i]`` alone determines image ``i``. ``init_images`` switches to
        image-to-image at ``strength``. ``categories`` makes label ids global (see the module docstring).
        """
        cfg = self.config
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        classes = [list(c) for c in classes]
        _check_batch(prompts, classes, seeds, init_images)
        label_ids = self._label_ids(classes, categories)
        tokenizers = pipeline_tokenizers(self.pipe)
        key_prompts, image_prompts = self._prompts(prompts, classes)
        batch = _Batch(
            captions=prompts,
            image_prompts=image_prompts,
            key_prompts=key_prompts,
            seeds=seeds,
            classes=classes,
            spans=[self.token_spans(p, c, tokenizers) for p, c in zip(key_prompts, classes)],
            label_ids=label_ids,
            strength=strength if init_images is not None else None,
        )
        store = self._store(batch, tokenizers[0])
        started = time.perf_counter()
        run = run_pipeline(
            self.pipe,
            image_prompts,
            seeds,
            init_images=init_images,
            strength=strength,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            height=self.size[0],
            width=self.size[1],
            negative_prompt=cfg.negative_prompt,
            store=store,
            progress=cfg.progress,
        )
        generation_s = time.perf_counter() - started
        if not store.captured_steps:
            raise RuntimeError(
                f"the step window (step_window={cfg.step_window}, step_indices={cfg.step_indices}) captured none "
                f"of the {store.executed_steps} executed steps; widen it."
            )

        started = time.perf_counter()
        soft, cross = self.soft_maps(store, batch.spans)
        results = [self._result(batch, i, run, store, soft[i], cross[i]) for i in range(len(prompts))]
        postprocess_s = time.perf_counter() - started
        for result in results:
            result.metadata["timing_s"] = {"generation": generation_s, "postprocess": postprocess_s}
        return results

    def _prompts(self, prompts: list[str], classes: list[list[str]]) -> tuple[list[str], list[str]]:
        """``(key prompts, image prompts)``: the prompts whose class tokens are attended to, and those drawn."""
        cfg = self.config
        if not cfg.class_prompt:
            return prompts, prompts
        key_prompts = [class_prompt(c, cfg.class_separator) for c in classes]
        image_prompts = [
            with_class_names(p, c, cfg.class_separator) if cfg.append_class_names else p
            for p, c in zip(prompts, classes)
        ]
        return key_prompts, image_prompts

    def token_spans(
        self, prompt: str, classes: list[str], tokenizers: list[Any] | None = None
    ) -> list[TokenSpan]:
        """Where each class sits in the text keys of the pipeline's cross (UNet) or joint (DiT) attention;
        raises naming the prompt when a class is missing or the prompt is over a text encoder's limit."""
        if is_dit(self.pipe):
            return joint_token_spans(self.pipe, prompt, classes, self.sequence)
        return class_token_spans(tokenizers or pipeline_tokenizers(self.pipe), prompt, classes)

    def _store(self, batch: _Batch, tokenizer: Any) -> AttentionStore | DiTStore:
        cfg = self.config
        if is_dit(self.pipe):
            return DiTStore(
                len(batch.captions),
                self.latent_size,
                self.pool,
                step_window=cfg.step_window,
                step_indices=cfg.step_indices,
                joint_blocks=cfg.dit_joint_blocks,
                single_blocks=cfg.dit_single_blocks,
                max_sequence_length=self.sequence,
                chunk_bytes=int(cfg.chunk_mb * 2**20),
            )
        return AttentionStore(
            len(batch.captions),
            self.latent_size,
            self.self_factor,
            self.cross_factors,
            step_window=cfg.step_window,
            step_indices=cfg.step_indices,
            class_embeddings=self._encode(batch.key_prompts) if cfg.class_prompt else None,
            class_columns=self._column_mask(batch.spans, tokenizer) if cfg.softmax == "classes" else None,
            chunk_bytes=int(cfg.chunk_mb * 2**20),
        )

    def _result(
        self,
        batch: _Batch,
        i: int,
        run: Any,
        store: AttentionStore | DiTStore,
        soft: torch.Tensor,
        cross: torch.Tensor,
    ) -> MaskResult:
        """Image ``i`` of a drawn batch: its label map, soft maps and metadata."""
        cfg = self.config
        ids, background_id = batch.label_ids[i]
        metadata = {
            "prompt": batch.image_prompts[i],
            "caption": batch.captions[i],
            "key_prompt": batch.key_prompts[i],
            "seed": batch.seeds[i],
            "classes": batch.classes[i],
            "class_ids": ids,
            "background_id": background_id,
            "ignore_index": cfg.ignore_index,
            "token_spans": [s.to_dict() for s in batch.spans[i]],
            "mode": "txt2img" if batch.strength is None else "img2img",
            "strength": batch.strength,
            "steps_executed": store.executed_steps,
            "steps_captured": list(store.captured_steps),
            "timesteps": list(store.timesteps),
            "layers": store.layers_used(),
            "resolutions": self.resolutions(),
            "nsfw": run.nsfw[i] if run.nsfw is not None else None,
            "config": _jsonable(asdict(cfg)),
        }
        return MaskResult(
            image=run.images[i],
            label_map=self._labels(soft, ids, background_id),  # from the unclamped maps, as Dataset Diffusion
            soft_maps=soft.clamp(0.0, 1.0).numpy() if cfg.keep_soft_maps else None,
            cross_maps=cross.numpy() if cfg.keep_soft_maps else None,
            metadata=metadata,
        )

    # -- pieces --------------------------------------------------------------------------------------
    def soft_maps(
        self, store: AttentionStore | DiTStore, spans: Sequence[Sequence[TokenSpan]]
    ) -> tuple[list, list]:
        """Refined and raw cross soft maps ``[K, H, W]`` (fp32 CPU tensors) for every image of a store.

        The refined maps keep the final bicubic resize's overshoot past [0, 1]: labels are their argmax, as in
        Dataset Diffusion (clamped, two classes overshooting past 1 would tie and the first would win).
        :class:`MaskResult` stores them clamped."""
        if isinstance(store, DiTStore):
            return dit_soft_maps(store, spans, self.size, self.config.tau, self.config.dit_renormalize)
        self_grid = grid_size(self.latent_size, self.self_factor)
        self_attn = store.mean("self", self.self_factor)
        refined_all, cross_all = [], []
        for i, image_spans in enumerate(spans):
            positions = [s.positions for s in image_spans]
            cross = self._cross_on_grid(store, i, positions, self_grid)
            refined, raw = soft_maps_from_attention(
                self_attn[i], cross, self_grid, self.size, self.config.tau, clamp=False
            )
            refined_all.append(refined.float().cpu())
            cross_all.append(raw.float().cpu())
        return refined_all, cross_all

    def _cross_on_grid(
        self, store: AttentionStore, index: int, positions: list, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Class maps ``[N_self, K]``: each cross resolution's mean, resized to the self grid, weighted by
        how many layer calls it averages."""
        total, weight = None, 0
        for factor in self.cross_factors:
            maps = class_columns(store.mean("cross", factor)[index], positions)  # [N_c, K]
            maps = to_grid(maps, grid_size(self.latent_size, factor))
            if tuple(maps.shape[-2:]) != tuple(grid):
                maps = upsample(maps, grid, clamp=False)  # as Dataset Diffusion: bicubic over/undershoot kept
            count = store.count("cross", factor)
            total = maps * count if total is None else total + maps * count
            weight += count
        assert total is not None
        merged = total / weight
        return merged.reshape(merged.shape[0], -1).transpose(0, 1)

    def _labels(self, soft: torch.Tensor, ids: list[int], background_id: int) -> np.ndarray:
        cfg = self.config
        k = soft.shape[0]
        local = label(
            soft,
            cfg.threshold,
            cfg.uncertainty_threshold,
            ignore_index=cfg.ignore_index,
            background_index=k if cfg.background else cfg.ignore_index,
        )
        lut = np.full(256, cfg.ignore_index, dtype=np.uint8)
        lut[:k] = ids
        if cfg.background:
            lut[k] = background_id
        return lut[local]

    def _label_ids(
        self, classes: list[list[str]], categories: Sequence[str] | None
    ) -> list[tuple[list[int], int]]:
        """Per image: the label value of each class and of background (see the module docstring)."""
        cfg = self.config
        out = []
        if categories is not None:
            categories = list(categories)
            if len(set(categories)) != len(categories):
                raise ValueError("categories lists a name twice; give each category once.")
            index = {name: i for i, name in enumerate(categories)}
            for i, image_classes in enumerate(classes):
                missing = [c for c in image_classes if c not in index]
                if missing:
                    raise ValueError(
                        f"classes[{i}] = {image_classes} has {missing}, which are not in categories {categories}; "
                        "add them to categories."
                    )
                out.append(([index[c] for c in image_classes], len(categories)))
        else:
            out = [(list(range(len(c))), len(c)) for c in classes]
        for _, background_id in out:
            if background_id >= cfg.ignore_index:
                raise ValueError(
                    f"{background_id} classes leave no room for background below ignore_index={cfg.ignore_index}; "
                    "use fewer classes or categories."
                )
        if not cfg.background:
            out = [(ids, cfg.ignore_index) for ids, _ in out]
        return out

    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Conditional text-encoder states ``[B, 77, D]`` for the class prompts, exactly as the pipeline
        encodes prompts (SDXL: both encoders concatenated)."""
        device = self.pipe.unet.device
        with torch.no_grad():
            if is_sdxl(self.pipe):
                out = self.pipe.encode_prompt(
                    prompt=texts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
            else:
                out = self.pipe.encode_prompt(texts, device, 1, False)
        return out[0]

    @staticmethod
    def _column_mask(spans: Sequence[Sequence[TokenSpan]], tokenizer: Any) -> torch.Tensor:
        mask = torch.zeros(len(spans), int(tokenizer.model_max_length), dtype=torch.bool)
        for i, image_spans in enumerate(spans):
            for span in image_spans:
                mask[i, list(span.positions)] = True
        return mask


@dataclass
class _Batch:
    """One pipeline call's per-image inputs (``strength`` is None for text-to-image)."""

    captions: list[str]
    image_prompts: list[str]
    key_prompts: list[str]
    seeds: list[int]
    classes: list[list[str]]
    spans: list[list[TokenSpan]]
    label_ids: list[tuple[list[int], int]]
    strength: float | None


def _check_batch(
    prompts: list[str], classes: list[list[str]], seeds: list[int], init_images: Sequence[Any] | None
) -> None:
    if not prompts or not (len(prompts) == len(classes) == len(seeds)):
        raise ValueError(
            f"prompts ({len(prompts)}), classes ({len(classes)}) and seeds ({len(seeds)}) must be non-empty "
            "and equally long (one entry per image)."
        )
    if init_images is not None and len(init_images) != len(prompts):
        raise ValueError(
            f"init_images has {len(init_images)} images for {len(prompts)} prompts; give one each."
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["AttentionMasker", "MaskResult", "MaskerConfig"]
