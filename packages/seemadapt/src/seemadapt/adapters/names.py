"""SEEM's module names that adapter placement relies on, and the one rule about the text encoder.

Adapters find their places by these names (SEEM v1 naming, equal to the official checkpoint's), so this package never
imports the model: ``backbone`` (FocalNet with ``blocks()``, a per-block ``adapter`` hook and ``freeze()``),
``sem_seg_head.pixel_decoder`` and ``sem_seg_head.predictor`` (the decoder with its adapter hook lists; its
``lang_encoder`` is the text encoder, which always stays frozen).
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ALL_DECODER_SITES",
    "BACKBONE",
    "DECODER_HOOKS",
    "GROUPS",
    "HEAD_HOOK",
    "LANGUAGE_ENCODER",
    "PIXEL_DECODER",
    "PREDICTOR",
    "DecoderSite",
    "in_language_encoder",
    "text_encoder_message",
]

BACKBONE = "backbone"
PIXEL_DECODER = "sem_seg_head.pixel_decoder"
PREDICTOR = "sem_seg_head.predictor"
LANGUAGE_ENCODER = "sem_seg_head.predictor.lang_encoder"

DecoderSite = Literal["cross_attention", "self_attention", "ffn"]
DECODER_HOOKS: dict[str, str] = {
    "cross_attention": "cross_attention_adapters",
    "self_attention": "self_attention_adapters",
    "ffn": "ffn_adapters",
}
HEAD_HOOK = "mask_embed_adapters"
ALL_DECODER_SITES: tuple[DecoderSite, ...] = ("cross_attention", "self_attention", "ffn")


def in_language_encoder(name: str) -> bool:
    """Whether a parameter or module name lies in the text encoder."""
    return name == LANGUAGE_ENCODER or name.startswith(LANGUAGE_ENCODER + ".")


def text_encoder_message(subject: str) -> str:
    """The error for a setting that would train the text encoder."""
    return (
        f"{subject} selects the language (text) encoder '{LANGUAGE_ENCODER}', which always stays frozen: SEEM's "
        "class and grounding embeddings come from it and are cached, and the thesis never tuned it. Train the "
        "decoder instead (e.g. 'sem_seg_head.predictor', which skips the text encoder)."
    )


#: the module groups of parameter reports and of ``TrainConfig.lr_multipliers``
GROUPS = (
    "backbone",
    "backbone adapters",
    "pixel decoder",
    "decoder",
    "decoder adapters",
    "head adapters",
    "language encoder",
    "LoRA",
    "other",
)
