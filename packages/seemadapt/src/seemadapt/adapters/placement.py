"""Which adapters go where in SEEM and which parameters train: :class:`AdapterPlacement`.

The sets it selects are the thesis' *intended* ones, not the fork's accidental ones: backbone adapters really train;
with adapter heads the base decoder weights stay frozen; the text encoder is frozen always. :func:`apply_adapters`
(:mod:`seemadapt.adapters.apply`) carries a placement out; :mod:`seemadapt.adapters.strategies` names the four thesis
placements.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from seemadapt.adapters.lora_spec import LoRASpec
from seemadapt.adapters.names import ALL_DECODER_SITES, DECODER_HOOKS, DecoderSite, text_encoder_message

__all__ = ["AdapterPlacement"]


@dataclass
class AdapterPlacement:
    """Which adapters to insert and which parameters to train. Everything not selected is frozen.

    Backbone (channel+spatial adapter inside FocalNet blocks, on the focal-modulation output):
        backbone_adapters: insert them.
        backbone_reduction: channel-attention reduction (4 in the thesis).
        backbone_spatial_reduction: hidden channels of the spatial branch are ``C // this`` (1 in the thesis).
        backbone_stages: stages (0..3) that get adapters.
        backbone_blocks: glob patterns over block names ``layers.{stage}.blocks.{index}``; each must match a block.

    Decoder (VL-adapters, residual bottlenecks on the whole sequence after each decoder layer's sub-layer):
        decoder_adapters: sites among ``"cross_attention"``, ``"self_attention"``, ``"ffn"``.
        decoder_bottleneck: hidden width, default ``hidden_dim // 2``.

    Mask head (AdaptFormer branch added to ``mask_embed(d)`` in every prediction):
        head_adapters: insert them.
        head_bottleneck: hidden width, default ``hidden_dim // 2``.
        head_scale, head_learnable_scale: the branch scale (0.1, fixed).

    Training:
        train_norms: also train the decoder's LayerNorms (every ``nn.LayerNorm`` of the predictor outside the text
            encoder: the cross/self/FFN layers' ``norm`` and ``decoder_norm``), as the thesis did with VL-adapters.
        train_full: glob patterns over parameter or module names whose parameters train fully, e.g.
            ``"sem_seg_head.predictor"`` (the full head). A pattern selects a parameter if it matches its name or a
            module above it. The text encoder (``sem_seg_head.predictor.lang_encoder``) is always skipped: broad
            patterns leave it out, and a pattern that selects only text-encoder parameters is an error.
        lora: optional :class:`LoRASpec` (peft LoRA on named Linear/Conv2d layers); LoRA weights train.
        fork_faithful: build the thesis fork's adapter modules (kaiming init, not identities) for reproduction.
        frozen_drop_path: keep stochastic depth on in a backbone whose own weights are frozen (official recipe).
    """

    backbone_adapters: bool = False
    backbone_reduction: int = 4
    backbone_spatial_reduction: int = 1
    backbone_stages: tuple[int, ...] = (0, 1, 2, 3)
    backbone_blocks: tuple[str, ...] = ("*",)
    decoder_adapters: tuple[DecoderSite, ...] = ()
    decoder_bottleneck: int | None = None
    head_adapters: bool = False
    head_bottleneck: int | None = None
    head_scale: float = 0.1
    head_learnable_scale: bool = False
    train_norms: bool = False
    train_full: tuple[str, ...] = ()
    lora: LoRASpec | None = None
    fork_faithful: bool = False
    frozen_drop_path: bool = False

    def __post_init__(self) -> None:
        for name in ("backbone_stages", "backbone_blocks", "decoder_adapters", "train_full"):
            value = getattr(self, name)
            setattr(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        if isinstance(self.lora, dict):
            self.lora = LoRASpec(**self.lora)
        self._check_types()
        self._check_backbone()
        bad = [s for s in self.decoder_adapters if s not in DECODER_HOOKS]
        if bad or len(set(self.decoder_adapters)) != len(self.decoder_adapters):
            raise ValueError(
                f"AdapterPlacement.decoder_adapters must be distinct sites among {ALL_DECODER_SITES}, "
                f"got {self.decoder_adapters!r}."
            )
        if (
            not isinstance(self.head_scale, (int, float))
            or not math.isfinite(self.head_scale)
            or self.head_scale == 0
        ):
            raise ValueError(
                f"AdapterPlacement.head_scale must be a finite non-zero number, got {self.head_scale!r}."
            )
        self._check_train_full()
        if self.lora is not None and not isinstance(self.lora, LoRASpec):
            raise ValueError(f"AdapterPlacement.lora must be a LoRASpec, a dict or None, got {self.lora!r}.")
        self._reject_unused_settings()

    def _check_types(self) -> None:
        for name in (
            "backbone_adapters",
            "head_adapters",
            "head_learnable_scale",
            "train_norms",
            "fork_faithful",
            "frozen_drop_path",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"AdapterPlacement.{name} must be True or False, got {getattr(self, name)!r}."
                )
        for name in ("backbone_reduction", "backbone_spatial_reduction"):
            _check_int(name, getattr(self, name))
        for name in ("decoder_bottleneck", "head_bottleneck"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))

    def _check_backbone(self) -> None:
        stages = self.backbone_stages
        if not stages or len(set(stages)) != len(stages) or not all(s in (0, 1, 2, 3) for s in stages):
            raise ValueError(
                f"AdapterPlacement.backbone_stages must be distinct stages among 0..3, got {stages!r}."
            )
        if not self.backbone_blocks or not all(isinstance(p, str) and p for p in self.backbone_blocks):
            raise ValueError(
                "AdapterPlacement.backbone_blocks must be non-empty glob strings over block names such as "
                f"'layers.2.blocks.*', got {self.backbone_blocks!r}."
            )

    def _check_train_full(self) -> None:
        for pattern in self.train_full:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"AdapterPlacement.train_full must hold non-empty glob strings, got {pattern!r}."
                )
            if "lang_encoder" in pattern:
                raise ValueError(text_encoder_message(f"AdapterPlacement.train_full pattern {pattern!r}"))

    def _reject_unused_settings(self) -> None:
        """Settings of a part that is switched off are silent no-ops: refuse them instead."""
        defaults = {f.name: f.default for f in fields(self)}
        groups = {
            "backbone_adapters": (
                "backbone_reduction",
                "backbone_spatial_reduction",
                "backbone_stages",
                "backbone_blocks",
            ),
            "decoder_adapters": ("decoder_bottleneck",),
            "head_adapters": ("head_bottleneck", "head_scale", "head_learnable_scale"),
        }
        for switch, names in groups.items():
            if getattr(self, switch):
                continue
            for name in names:
                if getattr(self, name) != defaults[name]:
                    raise ValueError(
                        f"AdapterPlacement.{name} is set but {switch} is off, so it would do nothing; "
                        f"turn {switch} on or leave {name} at its default."
                    )
        if self.fork_faithful and not (self.backbone_adapters or self.decoder_adapters or self.head_adapters):
            raise ValueError(
                "AdapterPlacement.fork_faithful is set but the placement inserts no adapter module."
            )

    @property
    def has_adapters(self) -> bool:
        return bool(self.backbone_adapters or self.decoder_adapters or self.head_adapters or self.lora)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); :meth:`from_dict` inverts it."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        if self.lora is not None:
            data["lora"] = self.lora.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterPlacement:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"AdapterPlacement: unknown fields {sorted(unknown)}; known fields are {sorted(known)}."
            )
        return cls(**data)


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"AdapterPlacement.{name} must be a positive integer, got {value!r}.")
