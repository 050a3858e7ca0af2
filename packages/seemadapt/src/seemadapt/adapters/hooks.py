"""Where adapters plug into SEEM: the hook points the model leaves empty, and the adapters' base type.

The model has empty hook points: every backbone block's ``adapter`` attribute and the decoder's hook lists
(:data:`DECODER_ADAPTER_HOOKS`); :mod:`seemadapt.adapters` fills them with :class:`AdapterModule` instances. The model
only needs to recognise them (their state-dict keys are not in official checkpoints). This module imports nothing of
seemadapt, so the adapters never import the model: the model sits above them and can load them.
"""

from __future__ import annotations

from torch import nn

__all__ = ["DECODER_ADAPTER_HOOKS", "AdapterModule", "is_adapter_key"]

#: the decoder's adapter hook lists (attributes of :class:`~seemadapt.model.decoder.SEEMDecoder`)
DECODER_ADAPTER_HOOKS = (
    "cross_attention_adapters",
    "self_attention_adapters",
    "ffn_adapters",
    "mask_embed_adapters",
)


class AdapterModule(nn.Module):
    """Base class of seemadapt's adapters.

    The placement code finds adapters by this type, never by name: official SEEM checkpoints already contain keys
    with "adapter" in them (``sem_seg_head.pixel_decoder.adapter_1``, the FPN laterals), so names cannot tell.
    """


def is_adapter_key(key: str, adapter_prefixes: tuple[str, ...]) -> bool:
    """Whether a state-dict ``key`` belongs to an adapter: under an :class:`AdapterModule` (``adapter_prefixes``, its
    module names with a trailing dot), a LoRA weight, a backbone block's ``adapter`` hook or a decoder hook list."""
    parts = key.split(".")
    return (
        key.startswith(adapter_prefixes)
        or "lora_" in key
        or (parts[0] == "backbone" and "adapter" in parts)
        or (key.startswith("sem_seg_head.predictor.") and parts[2] in DECODER_ADAPTER_HOOKS)
    )
