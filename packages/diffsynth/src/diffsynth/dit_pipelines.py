"""Diffusion-transformer pipelines diffsynth can capture: SD3 / SD3.5 and FLUX.1, text-to-image and image-to-image.

Sizes: the transformer sees the latent (image / ``vae_scale_factor``) in 2x2 patches (SD3's ``patch_size=2``,
FLUX's 2x2 packing), so the image-token grid is the image side / 16 and sizes must be multiples of 16.
"""

from __future__ import annotations

from typing import Any

DIT_PIPELINES: tuple[str, ...] = (
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
    "FluxPipeline",
    "FluxImg2ImgPipeline",
)
TINY_DIT_MODELS = {"tiny-sd3": "sd3", "tiny-flux": "flux"}
# T5 positions that enter the joint attention when the caller does not say (the pipelines' own defaults).
DEFAULT_MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512}


def is_dit(pipe: Any) -> bool:
    """Whether ``pipe`` is one of the supported diffusion-transformer pipelines (or a subclass)."""
    return any(cls.__name__ in DIT_PIPELINES for cls in type(pipe).__mro__)


def dit_family(pipe: Any) -> str:
    """``"flux"`` or ``"sd3"``."""
    return "flux" if any(c.__name__.startswith("Flux") for c in type(pipe).__mro__) else "sd3"


def patch_factor(pipe: Any) -> int:
    """Image pixels per token side: the VAE factor times the transformer's patch (FLUX packs 2x2 latents)."""
    patch = int(getattr(pipe.transformer.config, "patch_size", 1) or 1)
    return int(pipe.vae_scale_factor) * (2 * patch if dit_family(pipe) == "flux" else patch)


def token_grid(pipe: Any, height: int, width: int) -> tuple[int, int]:
    factor = patch_factor(pipe)
    return height // factor, width // factor


def dit_default_size(pipe: Any) -> tuple[int, int]:
    """The (height, width) a DiT pipeline draws when none is given."""
    if dit_family(pipe) == "flux":
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
    else:
        side = int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)
    return side, side


def max_sequence_length(pipe: Any, requested: int | None) -> int:
    """T5 positions in the joint attention: ``requested`` or the pipeline's default (SD3 256, FLUX 512)."""
    return int(requested) if requested is not None else DEFAULT_MAX_SEQUENCE_LENGTH[dit_family(pipe)]


def dit_call_kwargs(
    pipe: Any, negative_prompt: str | None, batch: int, sequence: int | None
) -> dict[str, Any]:
    """Family-specific pipeline arguments: SD3 takes a negative prompt into its CFG batch; FLUX has no
    unconditional batch (guidance embedding), and its "true CFG" would run the transformer twice per step, so a
    negative prompt is refused for FLUX."""
    kwargs: dict[str, Any] = {"max_sequence_length": max_sequence_length(pipe, sequence)}
    if negative_prompt is not None:
        if dit_family(pipe) == "flux":
            raise ValueError(
                "negative_prompt is not supported with FLUX (it switches FLUX to true CFG, two transformer calls "
                "per step, which diffsynth does not capture); leave MaskerConfig.negative_prompt=None."
            )
        kwargs["negative_prompt"] = [negative_prompt] * batch
    return kwargs
