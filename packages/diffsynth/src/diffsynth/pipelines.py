"""Loading and running Stable Diffusion 1.x / 2.x / SDXL, SD3 / SD3.5 and FLUX.1 pipelines, text-to-image and
image-to-image (the diffusion transformers' specifics live in :mod:`diffsynth.dit_pipelines`).

One loaded pipeline serves both modes: the image-to-image pipeline is built from the same components
(``AutoPipelineForImage2Image.from_pipe``), so weights and attention processors are shared. Every sample
gets its own CPU ``torch.Generator`` seeded from its own seed, so any sample can be re-made alone from its
seed and a batch equals the same samples run one by one.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image, AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from diffsynth.attention import AttentionStore, capture_attention, unet_downsampling
from diffsynth.dit_attention import DiTStore, capture_dit_attention
from diffsynth.dit_pipelines import (
    DIT_PIPELINES,
    TINY_DIT_MODELS,
    dit_call_kwargs,
    dit_default_size,
    is_dit,
    patch_factor,
)
from diffsynth.testing import tiny_pipeline

logger = logging.getLogger(__name__)

TINY_MODELS = {"tiny": "sd1", "tiny-sd1": "sd1", "tiny-sd2": "sd2", "tiny-sdxl": "sdxl", **TINY_DIT_MODELS}

# name -> (diffusers scheduler class, extra config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm++_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
_SCHEDULER_ALIASES = {
    "dpm": "dpm++",
    "dpmsolver++": "dpm++",
    "dpmsolvermultistep": "dpm++",
    "dpm++ karras": "dpm++_karras",
    "euler-ancestral": "euler_a",
    "euler_ancestral": "euler_a",
    "euler a": "euler_a",
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

_SUPPORTED = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    *DIT_PIPELINES,
)


def check_supported(pipe: Any) -> None:
    """Raise, naming the class and the supported ones, unless ``pipe`` is a pipeline diffsynth can capture
    (checked up front: other classes would fail later with an unrelated attribute error)."""
    if not any(cls.__name__ in _SUPPORTED for cls in type(pipe).__mro__):
        raise ValueError(
            f"pipeline of type {type(pipe).__name__} cannot be captured; diffsynth supports "
            f"{', '.join(_SUPPORTED)}."
        )


def resolve_dtype(dtype: Any = None, torch_dtype: Any = None) -> torch.dtype | None:
    """``dtype`` and ``torch_dtype`` are aliases (diffusers says ``torch_dtype``); strings like "fp16" work."""
    if dtype is not None and torch_dtype is not None and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
        raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass only one of them.")
    value = dtype if dtype is not None else torch_dtype
    if value is None or isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"dtype={value!r} is not one of {sorted(_DTYPES)}.")
    return _DTYPES[key]


def is_sdxl(pipe: Any) -> bool:
    return "StableDiffusionXL" in type(pipe).__name__ or getattr(pipe, "text_encoder_2", None) is not None


def is_img2img(pipe: Any) -> bool:
    return "Img2Img" in type(pipe).__name__


def set_scheduler(pipe: Any, name: str) -> Any:
    """Swap the pipeline's scheduler for ``name`` (ddim, ddpm, pndm, lms, euler, euler_a, heun, dpm++,
    dpm++_karras, unipc), built from the current scheduler's config so betas and offsets are kept."""
    key = _SCHEDULER_ALIASES.get(name.lower().strip(), name.lower().strip())
    if key not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is unknown; choose one of {sorted(SCHEDULERS)}.")
    cls_name, extra = SCHEDULERS[key]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **extra)
    return pipe


def size_multiple(pipe: Any) -> int:
    """Image sizes must be multiples of this: the VAE factor times the UNet's own downsampling, so every
    attention grid is exact (64 for SD 1.x/2.x, 32 for SDXL, 16 for SD3 and FLUX)."""
    if is_dit(pipe):
        return patch_factor(pipe)
    return int(pipe.vae_scale_factor) * unet_downsampling(pipe.unet)


def default_size(pipe: Any) -> tuple[int, int]:
    """The (height, width) a pipeline was trained at: ``unet.config.sample_size * vae_scale_factor``."""
    if is_dit(pipe):
        return dit_default_size(pipe)
    sample = pipe.unet.config.sample_size
    h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    return int(h) * pipe.vae_scale_factor, int(w) * pipe.vae_scale_factor


def validate_size(pipe: Any, height: int, width: int) -> None:
    multiple = size_multiple(pipe)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:

        def near(v: int) -> int:
            return max(multiple, round(v / multiple) * multiple)

        raise ValueError(
            f"height={height} and width={width} must be positive multiples of {multiple} (VAE factor "
            f"{pipe.vae_scale_factor} x {_downsampling(pipe)}) for this model; "
            f"e.g. height={near(height)}, width={near(width)}."
        )


def _downsampling(pipe: Any) -> str:
    if is_dit(pipe):
        return f"transformer patch {patch_factor(pipe) // int(pipe.vae_scale_factor)}"
    return f"UNet downsampling {unet_downsampling(pipe.unet)}"


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per sample: a sample depends on its own seed only (and not on the device)."""
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def _tiny(kind: str) -> Any:
    return tiny_pipeline(kind)  # type: ignore[arg-type]


def _from_pretrained(model: str, dtype: torch.dtype | None, safety_checker: bool, **kwargs: Any) -> Any:
    lookup = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
    config = DiffusionPipeline.load_config(model, **{k: v for k, v in kwargs.items() if k in lookup})
    class_name = config.get("_class_name", "")
    if class_name not in _SUPPORTED:
        raise ValueError(
            f"model={model!r} is a {class_name or 'unknown'} pipeline; diffsynth supports SD 1.x/2.x, SDXL, SD3 and FLUX "
            f"({', '.join(_SUPPORTED)})."
        )
    if "safety_checker" in config and not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["dtype"] = dtype  # diffusers 0.42 name (torch_dtype is deprecated there)
    return AutoPipelineForText2Image.from_pretrained(model, **kwargs)


def load_pipeline(
    model: Any = "tiny",
    *,
    dtype: Any = None,
    torch_dtype: Any = None,
    device: str | torch.device | None = None,
    scheduler: str | None = None,
    safety_checker: bool = False,
    progress: bool = True,
    **from_pretrained_kwargs: Any,
) -> Any:
    """A text-to-image SD 1.x/2.x/SDXL, SD3/SD3.5 or FLUX.1 pipeline from a Hub id, a local folder or a pipeline.

    ``model="tiny"`` / ``"tiny-sd2"`` / ``"tiny-sdxl"`` / ``"tiny-sd3"`` / ``"tiny-flux"`` builds an offline random-weight pipeline
    (:mod:`diffsynth.testing`). An image-to-image pipeline given here is turned into its text-to-image
    sibling (same components). The safety checker is off unless ``safety_checker=True``: it replaces
    flagged images with black ones silently, which would leave masks paired with blank images.
    Extra keyword arguments (``variant``, ``revision``, ``token``, ``local_files_only``...) go to
    ``from_pretrained``.
    """
    resolved = resolve_dtype(dtype, torch_dtype)
    if isinstance(model, str | os.PathLike) and str(model) in TINY_MODELS:
        pipe = _tiny(TINY_MODELS[str(model)])
    elif isinstance(model, str | os.PathLike):
        pipe = _from_pretrained(str(model), resolved, safety_checker, **from_pretrained_kwargs)
    elif hasattr(model, "components"):
        check_supported(model)
        pipe = text2img(model)
    else:
        raise TypeError(
            f"model must be a Hub id, a local folder or a DiffusionPipeline, got {type(model).__name__}."
        )
    if getattr(pipe, "safety_checker", None) is not None and not safety_checker:
        pipe.safety_checker = None
    if not safety_checker and "safety_checker" in getattr(pipe, "_optional_components", []):
        logger.warning(
            "diffsynth: the safety checker is off (it silently returns black images for flagged samples, "
            "which would pair masks with blank images). Pass safety_checker=True to keep it; flagged samples "
            "are then reported in the metadata as nsfw."
        )
    if scheduler is not None:
        set_scheduler(pipe, scheduler)
    if resolved is not None or device is not None:
        pipe.to(device=device, dtype=resolved)
    set_progress(pipe, progress)
    return pipe


def set_progress(pipe: Any, enabled: bool) -> None:
    """Show or hide the pipeline's tqdm bar over denoising steps."""
    config = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    config["disable"] = not enabled
    pipe.set_progress_bar_config(**config)


_VARIANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _variant(pipe: Any, want_img2img: bool) -> Any:
    if is_img2img(pipe) == want_img2img:
        return pipe
    cached = _VARIANTS.setdefault(pipe, {}).get(want_img2img)
    if cached is not None and all(cached.components.get(k) is v for k, v in pipe.components.items()):
        return cached
    auto = AutoPipelineForImage2Image if want_img2img else AutoPipelineForText2Image
    variant = auto.from_pipe(pipe)
    variant.set_progress_bar_config(**dict(getattr(pipe, "_progress_bar_config", {}) or {}))
    _VARIANTS[pipe][want_img2img] = variant
    return variant


def text2img(pipe: Any) -> Any:
    """The text-to-image pipeline sharing ``pipe``'s components (``pipe`` itself when it is one)."""
    return _variant(pipe, False)


def img2img(pipe: Any) -> Any:
    """The image-to-image pipeline sharing ``pipe``'s components (``pipe`` itself when it is one)."""
    return _variant(pipe, True)


def prepare_images(images: Sequence[Any], height: int, width: int) -> list[Image.Image]:
    """RGB PIL images at (height, width); arrays ``[H, W, 3]`` (uint8 or floats in [0, 1]) are accepted."""
    prepared = []
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray):
            array = (
                image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
            )
            image = Image.fromarray(array)
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"init_images[{index}] must be a PIL image or a numpy array, got {type(image).__name__}."
            )
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        prepared.append(image)
    return prepared


@dataclass
class PipelineRun:
    """What one pipeline call produced: images, the safety flags (None when no checker ran), and the
    number of denoising steps the pipeline executed."""

    images: list[Image.Image]
    nsfw: list[bool] | None
    executed_steps: int


def run_pipeline(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    init_images: Sequence[Any] | None = None,
    strength: float = 0.4,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    store: AttentionStore | DiTStore | None = None,
    progress: bool | None = None,
) -> PipelineRun:
    """Draw one image per prompt, each from its own seed; image-to-image when ``init_images`` are given
    (the pipeline then runs ``int(num_inference_steps * strength)`` steps). With a ``store``, attention
    is captured during the call and the user's processors are restored afterwards. SD3 / FLUX get the
    store's ``max_sequence_length`` T5 positions (their pipeline default without one)."""
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(
            f"prompts ({len(prompts)}) and seeds ({len(seeds)}) must be non-empty and equally long."
        )
    default_h, default_w = default_size(pipe)
    height, width = height or default_h, width or default_w
    validate_size(pipe, height, width)
    kwargs: dict[str, Any] = dict(
        prompt=list(prompts),
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=generators(seeds),
        output_type="pil",
    )
    if is_dit(pipe):
        kwargs.update(
            dit_call_kwargs(pipe, negative_prompt, len(prompts), getattr(store, "max_sequence_length", None))
        )
    elif negative_prompt is not None:
        kwargs["negative_prompt"] = [negative_prompt] * len(prompts)
    if init_images is not None:
        if len(init_images) != len(prompts):
            raise ValueError(
                f"init_images has {len(init_images)} images for {len(prompts)} prompts; give one each."
            )
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}.")
        if int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"strength={strength} x num_inference_steps={num_inference_steps} runs no denoising step; "
                "raise one of them."
            )
        runner = img2img(pipe)
        kwargs.update(image=prepare_images(init_images, height, width), strength=strength)
        if "height" in inspect.signature(runner.__call__).parameters:
            kwargs.update(height=height, width=width)  # FLUX img2img draws its own default size otherwise
    else:
        runner = text2img(pipe)
        kwargs.update(height=height, width=width)
    if progress is not None:
        set_progress(runner, progress)
    if store is None:
        output = runner(**kwargs)
        steps = int(getattr(runner, "_num_timesteps", 0) or 0)
    else:
        with _capture(runner, store):
            output = runner(**kwargs)
        steps = store.executed_steps
    nsfw = getattr(output, "nsfw_content_detected", None)
    return PipelineRun(list(output.images), list(nsfw) if nsfw is not None else None, steps)


def _capture(runner: Any, store: AttentionStore | DiTStore) -> Any:
    """The capture context for a store: UNet layers or DiT blocks (wrapping the blocks' own processors)."""

    def steps() -> int | None:
        return getattr(runner, "_num_timesteps", None)

    if isinstance(store, DiTStore):
        return capture_dit_attention(runner.transformer, store, steps)
    return capture_attention(runner.unet, store, steps)
