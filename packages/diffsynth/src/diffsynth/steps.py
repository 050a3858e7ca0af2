"""Which executed denoising steps an attention capture aggregates (shared by the UNet and DiT stores).

Steps are counted as the pipeline evaluates its denoiser: step ``i`` of ``T`` executed steps is captured when
``floor(start * T) <= i < ceil(end * T)`` for a fractional ``step_window = (start, end)``, or when
``first <= i < stop`` for ``step_indices = (first, stop)``. img2img runs execute ``int(steps * strength)`` steps,
so fractions follow what actually ran.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["StepWindow"]

NO_END = 2**62


class StepWindow:
    """Step bookkeeping of a capture: the current executed step, its timesteps and whether it is captured."""

    def __init__(
        self,
        step_window: tuple[float, float] = (0.0, 1.0),
        step_indices: tuple[int, int | None] | None = None,
        *,
        owner: str = "AttentionStore",
    ) -> None:
        start, end = step_window
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"{owner}: step_window must satisfy 0 <= start < end <= 1, got {step_window}.")
        self.step_window = (float(start), float(end))
        self.step_indices = step_indices
        self.owner = owner
        self.step = -1
        self.total_steps: int | None = None
        self.timesteps: list[float] = []
        self.captured_steps: list[int] = []
        self._window: tuple[int, int] | None = None

    def advance(self, total_steps: int | None = None, timestep: Any = None) -> None:
        """Move to the next executed step (called before each denoiser evaluation)."""
        self.step += 1
        if self.step == 0 or self._window is None:
            self.total_steps = int(total_steps) if total_steps is not None else None
            self._window = self._resolve_window(self.total_steps)
        if timestep is not None:
            self.timesteps.append(
                float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
            )
        if self.active:
            self.captured_steps.append(self.step)

    def _resolve_window(self, total: int | None) -> tuple[int, int]:
        if self.step_indices is not None:
            first, stop = self.step_indices
            return int(first), (int(stop) if stop is not None else NO_END)
        if total is None:
            if self.step_window != (0.0, 1.0):
                raise RuntimeError(
                    f"{self.owner}: the pipeline did not report its number of steps, so a fractional "
                    "step_window cannot be resolved; use step_indices instead."
                )
            return 0, NO_END
        return math.floor(self.step_window[0] * total), math.ceil(self.step_window[1] * total)

    @property
    def executed_steps(self) -> int:
        return self.step + 1

    @property
    def active(self) -> bool:
        """Whether the current step is inside the window (processors skip all extra work otherwise)."""
        if self._window is None or self.step < 0:
            return False
        return self._window[0] <= self.step < self._window[1]
