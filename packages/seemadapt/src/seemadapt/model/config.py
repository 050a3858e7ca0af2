"""Configuration dataclasses for SEEM v1 and the named presets ``focalt``, ``focall`` and ``tiny``.

Every field mirrors a value of the official SEEM v1 configs (``configs/seem/focalt_unicl_lang_v1.yaml`` and
``focall_unicl_lang_v1.yaml`` in the SEEM repository); the presets
reproduce the official checkpoints' geometry exactly so their state dicts load with every key used.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

BlockVariant = Literal["focal", "focal_dw"]

#: ``tiny``'s initial log classifier scale: CLIP/UniCL's ``log(1 / 0.07)`` (a scale of 14.3), where contrastive text
#: encoders start; the official code's 1.0 (scale 2.7) caps class probabilities near 0.4 with a frozen scale.
TINY_LOGIT_SCALE = math.log(1 / 0.07)
#: ``tiny``'s backbone layer scale: trained FocalNets keep theirs far above the 1e-4 they start from, and adapters,
#: which act before the layer scale, get no gradient through 1e-4.
TINY_LAYERSCALE = 0.1


def _check_positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}.")


@dataclass
class BackboneConfig:
    """FocalNet backbone (``backbone.*``).

    ``variant="focal"`` is Focal-L's ``focal.py`` (res-post-norm blocks, stem padding 2);
    ``variant="focal_dw"`` is Focal-T's ``focal_dw.py`` (depthwise positional convs ``dw1``/``dw2``,
    LayerNorm after the residual sum, stem padding 3).
    """

    variant: BlockVariant = "focal_dw"
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    focal_levels: tuple[int, ...] = (3, 3, 3, 3)
    focal_windows: tuple[int, ...] = (3, 3, 3, 3)
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    layerscale_init: float = 1e-4
    normalize_modulator: bool = True
    patch_size: int = 4

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        self.focal_levels = tuple(self.focal_levels)
        self.focal_windows = tuple(self.focal_windows)
        if self.variant not in ("focal", "focal_dw"):
            raise ValueError(f"BackboneConfig.variant must be 'focal' or 'focal_dw', got {self.variant!r}.")
        if not (len(self.depths) == len(self.focal_levels) == len(self.focal_windows) == 4):
            raise ValueError(
                "BackboneConfig.depths, focal_levels and focal_windows must each have 4 entries."
            )
        _check_positive("BackboneConfig", embed_dim=self.embed_dim, mlp_ratio=self.mlp_ratio)
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"BackboneConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}.")

    @property
    def stem_padding(self) -> int:
        return 3 if self.variant == "focal_dw" else 2

    @property
    def channels(self) -> tuple[int, int, int, int]:
        """Channels of res2..res5."""
        return tuple(self.embed_dim * 2**i for i in range(4))  # type: ignore[return-value]


@dataclass
class PixelDecoderConfig:
    """Transformer-encoder FPN (``sem_seg_head.pixel_decoder.*``)."""

    conv_dim: int = 512
    mask_dim: int = 512
    num_encoder_layers: int = 6
    num_heads: int = 8
    dim_feedforward: int = 2048
    norm_groups: int = 32

    def __post_init__(self) -> None:
        _check_positive(
            "PixelDecoderConfig",
            conv_dim=self.conv_dim,
            mask_dim=self.mask_dim,
            num_heads=self.num_heads,
            dim_feedforward=self.dim_feedforward,
        )
        if self.conv_dim % self.norm_groups:
            raise ValueError(
                f"PixelDecoderConfig.conv_dim ({self.conv_dim}) must be divisible by norm_groups ({self.norm_groups})."
            )
        if self.conv_dim % self.num_heads:
            raise ValueError("PixelDecoderConfig.conv_dim must be divisible by num_heads.")


@dataclass
class LanguageConfig:
    """UniCL/CLIP-style causal text transformer (``sem_seg_head.predictor.lang_encoder.*``).

    ``logit_scale_init`` is the initial *log* classifier scale (logits are ``exp(logit_scale) * cosine``); the
    official code starts from 1.0 and checkpoints bring their trained value. ``class_word_init`` starts the prompt
    templates' own words, the start/end tokens and the positions at zero, so that the pooled text state is a random
    function of the class words alone: distinct words get distinct embeddings, as in a trained text encoder.
    Both only set the random initialisation; loaded weights replace them.
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    heads: int = 8
    layers: int = 12
    dim_proj: int = 512
    layernorm_eps: float = 1e-12
    logit_scale_init: float = 1.0
    class_word_init: bool = False

    def __post_init__(self) -> None:
        _check_positive(
            "LanguageConfig",
            vocab_size=self.vocab_size,
            context_length=self.context_length,
            width=self.width,
            heads=self.heads,
            layers=self.layers,
            dim_proj=self.dim_proj,
        )
        if self.width % self.heads:
            raise ValueError("LanguageConfig.width must be divisible by heads.")


@dataclass
class DecoderConfig:
    """SEEM v1 decoder (``sem_seg_head.predictor.*``, language encoder excluded)."""

    hidden_dim: int = 512
    dim_proj: int = 512
    mask_dim: int = 512
    num_queries: int = 101
    num_heads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10  # 9 transformer layers + the prediction on the initial queries
    num_feature_levels: int = 3
    spatial_memories: int = 32
    query_number: int = 3
    max_spatial_len: tuple[int, ...] = (512, 512, 512, 512)
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8

    def __post_init__(self) -> None:
        self.max_spatial_len = tuple(self.max_spatial_len)
        _check_positive(
            "DecoderConfig",
            hidden_dim=self.hidden_dim,
            dim_proj=self.dim_proj,
            mask_dim=self.mask_dim,
            num_queries=self.num_queries,
            num_heads=self.num_heads,
            dim_feedforward=self.dim_feedforward,
        )
        if self.dec_layers < 2:
            raise ValueError(f"DecoderConfig.dec_layers must be >= 2, got {self.dec_layers}.")
        if self.hidden_dim % self.num_heads:
            raise ValueError("DecoderConfig.hidden_dim must be divisible by num_heads.")

    @property
    def num_transformer_layers(self) -> int:
        return self.dec_layers - 1


@dataclass
class SEEMConfig:
    """The whole model. ``num_classes`` only sizes ``criterion.empty_weight``: classes come from text."""

    name: str = "focalt"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    num_classes: int = 133
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)
    no_object_weight: float = 0.1
    seed: int | None = None  # set for ``tiny``: weights are drawn from this seed, so builds are reproducible

    def __post_init__(self) -> None:
        for name, kind in (
            ("backbone", BackboneConfig),
            ("pixel_decoder", PixelDecoderConfig),
            ("language", LanguageConfig),
            ("decoder", DecoderConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind(**value))
        self.pixel_mean = tuple(self.pixel_mean)  # type: ignore[assignment]
        self.pixel_std = tuple(self.pixel_std)  # type: ignore[assignment]
        if self.num_classes < 1:
            raise ValueError(f"SEEMConfig.num_classes must be >= 1, got {self.num_classes}.")
        if self.pixel_decoder.conv_dim != self.decoder.hidden_dim:
            raise ValueError(
                "SEEMConfig: pixel_decoder.conv_dim must equal decoder.hidden_dim (SEEM v1 has no decoder input "
                f"projection); got {self.pixel_decoder.conv_dim} and {self.decoder.hidden_dim}."
            )
        if self.pixel_decoder.mask_dim != self.decoder.mask_dim:
            raise ValueError("SEEMConfig: pixel_decoder.mask_dim must equal decoder.mask_dim.")
        if self.language.dim_proj != self.decoder.dim_proj:
            raise ValueError("SEEMConfig: language.dim_proj must equal decoder.dim_proj.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SEEMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"SEEMConfig: unknown fields {sorted(unknown)}; known fields are {sorted(known)}."
            )
        return cls(**data)


def focalt_config(num_classes: int = 133) -> SEEMConfig:
    """Geometry of the official ``seem_focalt_v1.pt`` (164,619,249 parameters)."""
    return SEEMConfig(name="focalt", backbone=BackboneConfig(), num_classes=num_classes)


def focall_config(num_classes: int = 133) -> SEEMConfig:
    """Geometry of the official ``seem_focall_v1.pt`` (341,181,177 parameters)."""
    backbone = BackboneConfig(
        variant="focal",
        embed_dim=192,
        depths=(2, 2, 18, 2),
        focal_levels=(4, 4, 4, 4),
        focal_windows=(3, 3, 3, 3),
    )
    return SEEMConfig(name="focall", backbone=backbone, num_classes=num_classes)


def tiny_config(num_classes: int = 133, variant: BlockVariant = "focal_dw") -> SEEMConfig:
    """About 1M parameters with a 512-token vocabulary (4M with the real CLIP vocabulary); every path runs.

    The real CLIP vocabulary (49408) is kept so the real tokenizer works offline; only the widths shrink.
    """
    return SEEMConfig(
        name="tiny",
        backbone=BackboneConfig(
            variant=variant,
            embed_dim=16,
            depths=(1, 1, 1, 1),
            focal_levels=(2, 2, 2, 2),
            focal_windows=(3, 3, 3, 3),
            drop_path_rate=0.1,
            layerscale_init=TINY_LAYERSCALE,
        ),
        pixel_decoder=PixelDecoderConfig(
            conv_dim=64, mask_dim=64, num_encoder_layers=1, num_heads=4, dim_feedforward=128
        ),
        language=LanguageConfig(
            vocab_size=49408,
            context_length=77,
            width=64,
            heads=4,
            layers=2,
            dim_proj=64,
            logit_scale_init=TINY_LOGIT_SCALE,
            class_word_init=True,
        ),
        decoder=DecoderConfig(
            hidden_dim=64,
            dim_proj=64,
            mask_dim=64,
            num_queries=8,
            num_heads=4,
            dim_feedforward=128,
            dec_layers=4,
            spatial_memories=4,
            query_number=2,
            max_spatial_len=(16, 16, 16, 16),
        ),
        num_classes=num_classes,
        seed=0,
    )


PRESETS = {"focalt": focalt_config, "focall": focall_config, "tiny": tiny_config}


def get_config(name: str, num_classes: int = 133) -> SEEMConfig:
    """A preset by name: ``focalt``, ``focall`` or ``tiny``."""
    if name not in PRESETS:
        raise ValueError(f"Unknown SEEM config {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name](num_classes=num_classes)


def config_to_dict(config: Any) -> dict[str, Any]:
    return asdict(config) if is_dataclass(config) else dict(config)
