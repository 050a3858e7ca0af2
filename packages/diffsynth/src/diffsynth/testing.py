"""Tiny, offline, random-weight Stable Diffusion pipelines for tests, demos and CI.

``tiny_pipeline(kind)`` builds an SD 1.x, SD 2.x-style or SDXL pipeline from configs, never touching the
Hub (``"sd3"`` and ``"flux"``: diffusion transformers, built by :mod:`diffsynth.testing_dit`). Its tokenizer is the *real* CLIP BPE tokenizer (the vocabulary ships inside the ``open-clip-torch``
wheel), so prompts tokenize exactly as with ``openai/clip-vit-large-patch14`` and class-token spans are
realistic. Weights come from fixed seeds: the same call always builds the same pipeline. Images come out
as noise: these models show the mechanics, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffsynth.testing_dit import DIT_KINDS, tiny_dit_pipeline
from diffsynth.tiny_tokenizers import clip_tokenizer
from segcontract import CLIP_VOCAB_SIZE

Kind = Literal["sd1", "sd2", "sdxl", "sd3", "flux"]
KINDS: tuple[str, ...] = ("sd1", "sd2", "sdxl")  # UNet kinds; DIT_KINDS are the transformers


def _text_encoder(seed: int, *, with_projection: bool = False, hidden_act: str = "quick_gelu"):

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act=hidden_act,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _vae(seed: int):

    torch.manual_seed(seed)
    # Four blocks, like the real VAE: the latent is 1/8 of the image, so size rules match real models.
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=128,
    ).eval()


ATTENTION_SHARPNESS = 4.0


def _sharpen_attention(unet: torch.nn.Module, factor: float = ATTENTION_SHARPNESS) -> torch.nn.Module:
    """Scale query and key weights so random-weight attention is peaked rather than near-uniform.

    With default init, softmax(QK^T) of a random UNet is almost uniform, so (A_S)^tau flattens every class
    map to a constant and the masks come out empty. Peaked attention gives tiny models masks with structure
    (still meaningless), so demos and tests exercise every labelling path.
    """
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith(("attn1", "attn2")):
                module.to_q.weight.mul_(factor)
                module.to_k.weight.mul_(factor)
    return unet


def _unet(kind: Kind, seed: int):
    torch.manual_seed(seed)
    return _sharpen_attention(_build_unet(kind))


def _build_unet(kind: Kind):

    if kind == "sdxl":
        # SDXL layout: no attention at the first (largest) level, text-time conditioning, two encoders (32 + 32).
        return UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4, 4),
            transformer_layers_per_block=(1, 1, 2),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            cross_attention_dim=64,
            norm_num_groups=8,
        ).eval()
    # SD 1.x / 2.x layout: attention at the three largest levels, none at the smallest (plus the mid block).
    return UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 4, 4, 4) if kind == "sd2" else 4,
        use_linear_projection=kind == "sd2",
        cross_attention_dim=32,
        norm_num_groups=8,
    ).eval()


def _scheduler(kind: Kind):

    common = dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        num_train_timesteps=1000,
    )
    if kind == "sdxl":
        return EulerDiscreteScheduler(**common, timestep_spacing="leading")
    prediction = "v_prediction" if kind == "sd2" else "epsilon"
    return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, prediction_type=prediction)


def tiny_pipeline(kind: Kind = "sd1", img2img: bool = False, seed: int = 0):
    """Build a tiny random-weight pipeline: ``"sd1"``, ``"sd2"`` (linear projection, v-prediction), ``"sdxl"``,
    ``"sd3"`` (MM-DiT, CLIP + T5) or ``"flux"`` (double + single stream, guidance embedding, T5).

    The txt2img and img2img pipelines share the same components (weights are identical for a given seed).
    Default image size: 128x128 (latent 16x16, VAE factor 8 as in the real models).
    """
    if kind not in KINDS + DIT_KINDS:
        raise ValueError(f"tiny_pipeline: kind must be one of {KINDS + DIT_KINDS}, got {kind!r}.")
    if kind in DIT_KINDS:
        return tiny_dit_pipeline(kind, img2img=img2img, seed=seed)  # type: ignore[arg-type]

    with torch.random.fork_rng(devices=[]):
        unet = _unet(kind, seed)
        vae = _vae(seed + 1)
        if kind == "sdxl":
            components = dict(
                unet=unet,
                vae=vae,
                scheduler=_scheduler(kind),
                text_encoder=_text_encoder(seed + 2, hidden_act="gelu"),
                text_encoder_2=_text_encoder(seed + 3, with_projection=True, hidden_act="gelu"),
                tokenizer=clip_tokenizer(),
                tokenizer_2=clip_tokenizer(pad_token="!"),
            )
            if img2img:
                pipe = StableDiffusionXLImg2ImgPipeline(**components, requires_aesthetics_score=False)
            else:
                pipe = StableDiffusionXLPipeline(**components)
        else:
            components = dict(
                unet=unet,
                vae=vae,
                scheduler=_scheduler(kind),
                text_encoder=_text_encoder(seed + 2, hidden_act="gelu" if kind == "sd2" else "quick_gelu"),
                tokenizer=clip_tokenizer(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
            pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(folder: str | Path, kind: Kind = "sd1", seed: int = 0) -> Path:
    """Write a tiny pipeline with ``save_pretrained`` so code can load it like a real model folder."""
    folder = Path(folder)
    tiny_pipeline(kind, seed=seed).save_pretrained(folder)
    (folder / "diffsynth_tiny.json").write_text(json.dumps({"kind": kind, "seed": seed}))
    return folder
