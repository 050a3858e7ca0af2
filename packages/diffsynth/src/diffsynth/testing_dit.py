"""Tiny, offline, random-weight diffusion-transformer pipelines: SD3 (MM-DiT) and FLUX.1 (double + single stream).

Built from configs like the UNet kit (:mod:`diffsynth.testing`): real CLIP BPE tokenizers, a small T5 Unigram
tokenizer (:mod:`diffsynth.tiny_tokenizers`), random weights from fixed seeds, attention sharpened so maps have
structure. Default image size 128x128: latent 16x16, 8x8 = 64 image tokens. Text: SD3 joins 77 CLIP positions
and 256 T5 positions (333 text keys), FLUX uses 512 T5 positions - the real models' sequence lengths.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from diffsynth.tiny_tokenizers import clip_tokenizer, t5_tokenizer
from segcontract import CLIP_VOCAB_SIZE

DiTKind = Literal["sd3", "flux"]
DIT_KINDS: tuple[str, ...] = ("sd3", "flux")
ATTENTION_SHARPNESS = 4.0
IMAGE_SIZE = 128
LATENT_CHANNELS = 4
#: widths of the tiny text encoders: the transformers' text inputs are sized from them
CLIP_WIDTH = 16
T5_WIDTH = 32
#: what both transformers share: depth, and the joint text states they attend to (T5's width; SD3 pads its two
#: CLIP encoders' states, 2 x CLIP_WIDTH, to it)
_SHARED_TRANSFORMER = dict(num_layers=2, joint_attention_dim=T5_WIDTH)


def _clip(seed: int, *, with_projection: bool) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=CLIP_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=CLIP_WIDTH,
        hidden_act="gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _t5(seed: int, vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_WIDTH,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def _vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _sharpen(transformer: torch.nn.Module, factor: float = ATTENTION_SHARPNESS) -> torch.nn.Module:
    """Scale every query/key projection so random-weight attention is peaked (see ``testing._sharpen_attention``)."""
    names = ("to_q", "to_k", "add_q_proj", "add_k_proj")
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.rsplit(".", 1)[-1] in names and isinstance(module, torch.nn.Linear):
                module.weight.mul_(factor)
    return transformer


def _sd3_components(seed: int) -> dict:
    torch.manual_seed(seed)
    heads, head_dim = 4, 8
    transformer = SD3Transformer2DModel(
        **_SHARED_TRANSFORMER,
        sample_size=IMAGE_SIZE // 8,  # the VAE's latent
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        caption_projection_dim=heads * head_dim,  # text tokens join the image tokens' width
        pooled_projection_dim=2 * CLIP_WIDTH,  # both CLIP encoders' pooled outputs, side by side
        pos_embed_max_size=32,
    ).eval()
    tokenizer_3 = t5_tokenizer()
    return dict(
        transformer=_sharpen(transformer),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(seed + 1),
        text_encoder=_clip(seed + 2, with_projection=True),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_clip(seed + 3, with_projection=True),
        tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=_t5(seed + 4, len(tokenizer_3)),
        tokenizer_3=tokenizer_3,
    )


def _flux_components(seed: int, guidance: bool) -> dict:
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        **_SHARED_TRANSFORMER,
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # FLUX packs 2 x 2 latent pixels into one token
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        pooled_projection_dim=CLIP_WIDTH,
        guidance_embeds=guidance,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    ).eval()
    tokenizer_2 = t5_tokenizer()
    return dict(
        transformer=_sharpen(transformer),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=_vae(seed + 1),
        text_encoder=_clip(seed + 2, with_projection=False),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_t5(seed + 4, len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
    )


def tiny_dit_pipeline(kind: DiTKind = "flux", img2img: bool = False, seed: int = 0, guidance: bool = True):
    """A tiny random-weight ``"sd3"`` or ``"flux"`` pipeline (text-to-image or image-to-image).

    ``guidance`` (FLUX only): a guidance-embedding transformer like FLUX.1-dev; ``False`` is schnell-like.
    """
    if kind not in DIT_KINDS:
        raise ValueError(f"tiny_dit_pipeline: kind must be one of {DIT_KINDS}, got {kind!r}.")
    with torch.random.fork_rng(devices=[]):
        if kind == "sd3":
            cls = StableDiffusion3Img2ImgPipeline if img2img else StableDiffusion3Pipeline
            pipe = cls(**_sd3_components(seed))
        else:
            cls = FluxImg2ImgPipeline if img2img else FluxPipeline
            pipe = cls(**_flux_components(seed, guidance))
    pipe.set_progress_bar_config(disable=True)
    return pipe
