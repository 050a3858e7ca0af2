"""Where and how to add LoRA, as plain data: placements and configs read it without importing torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LoRASpec"]


@dataclass
class LoRASpec:
    """Where and how to add LoRA.

    Args:
        targets: glob patterns (``fnmatch``) over module names, e.g. ``"backbone.layers.*.blocks.*.mlp.fc?"`` or
            ``"sem_seg_head.predictor.transformer_ffn_layers.*.linear*"``. Matched modules must be exactly
            ``nn.Linear`` or ``nn.Conv2d`` (subclasses that fold a norm or activation into ``forward`` are skipped:
            LoRA's update would land after them); a pattern that selects none is an error.
        r: LoRA rank.
        alpha: LoRA scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the LoRA input.
    """

    targets: tuple[str, ...]
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        self.targets = tuple(self.targets)
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoRASpec.targets must be non-empty glob strings, got {self.targets!r}.")
        for target in self.targets:
            if "lang_encoder" in target:
                raise ValueError(
                    f"LoRASpec.targets: {target!r} names the language encoder, which always stays frozen (SEEM's class "
                    "embeddings come from the frozen text encoder); target backbone or decoder layers instead."
                )
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRASpec.r must be a positive integer, got {self.r!r}.")
        if self.alpha <= 0:
            raise ValueError(f"LoRASpec.alpha must be > 0, got {self.alpha!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRASpec.dropout must be in [0, 1), got {self.dropout!r}.")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data
