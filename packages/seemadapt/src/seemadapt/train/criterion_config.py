"""The loss weights of :class:`~seemadapt.train.criterion.SEEMCriterion`, as plain data (no torch import: the
CLI validates a training config before the library loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

__all__ = ["CriterionConfig"]


@dataclass
class CriterionConfig:
    """Loss weights and point sampling (defaults: SEEM v1 configs). The matcher uses the mask-loss weights
    (``class_weight``, ``mask_weight``, ``dice_weight``) as its costs in every mode, as the official code does.

    ``grounding_missing`` decides what an image without grounding masks does: ``"skip_image"`` (default) leaves it
    out of the grounding losses; ``"zero_batch"`` reproduces the official code, which zeroes the grounding losses of
    the whole batch as soon as one image has none.
    """

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    grounding_class_weight: float = 0.4
    grounding_mask_weight: float = 1.0
    grounding_dice_weight: float = 1.0
    spatial_class_weight: float = 0.4
    spatial_mask_weight: float = 1.0
    spatial_dice_weight: float = 1.0
    no_object_weight: float = 0.1
    grounding_mode_weights: dict[str, float] = field(default_factory=lambda: {"text": 2.0, "class": 0.5})
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    deep_supervision: bool = True
    grounding_missing: Literal["skip_image", "zero_batch"] = "skip_image"

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name.endswith("_weight") and value < 0:
                raise ValueError(f"CriterionConfig.{name} must be >= 0, got {value}.")
        if self.class_weight == self.mask_weight == self.dice_weight == 0:
            raise ValueError(
                "CriterionConfig: class_weight, mask_weight and dice_weight are also the matching costs; "
                "they cannot all be 0."
            )
        if not self.grounding_mode_weights or min(self.grounding_mode_weights.values()) < 0:
            raise ValueError(
                "CriterionConfig.grounding_mode_weights must map each grounding_mode "
                "('text', 'class') to a weight >= 0."
            )
        if self.num_points < 1:
            raise ValueError(
                f"CriterionConfig.num_points must be >= 1 (SEEM uses 12544), got {self.num_points}."
            )
        if self.oversample_ratio < 1:
            raise ValueError(f"CriterionConfig.oversample_ratio must be >= 1, got {self.oversample_ratio}.")
        if not 0 <= self.importance_sample_ratio <= 1:
            raise ValueError(
                f"CriterionConfig.importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}."
            )
        if self.grounding_missing not in ("skip_image", "zero_batch"):
            raise ValueError(
                "CriterionConfig.grounding_missing must be 'skip_image' or 'zero_batch', "
                f"got {self.grounding_missing!r}."
            )

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each loss, by name without the layer suffix."""
        return {
            "loss_mask_ce": self.class_weight,
            "loss_mask_bce": self.mask_weight,
            "loss_mask_dice": self.dice_weight,
            "loss_grounding_ce": self.grounding_class_weight,
            "loss_grounding_bce": self.grounding_mask_weight,
            "loss_grounding_dice": self.grounding_dice_weight,
            "loss_spatial_ce": self.spatial_class_weight,
            "loss_spatial_bce": self.spatial_mask_weight,
            "loss_spatial_dice": self.spatial_dice_weight,
        }
