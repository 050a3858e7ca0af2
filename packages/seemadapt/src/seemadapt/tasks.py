"""The evaluation tasks seemadapt scores (a light module: the training config and the CLI check names against it)."""

from __future__ import annotations

__all__ = ["DEFAULT_TASKS", "TASKS"]

TASKS = ("semantic", "panoptic", "instance")
#: What ``evaluate`` scores unless told otherwise (instance AP is opt-in: COCOeval adds its own time).
DEFAULT_TASKS = ("semantic", "panoptic")
