"""The evaluation tasks seemadapt scores (a light module: the training config checks names against it)."""

from __future__ import annotations

__all__ = ["TASKS"]

TASKS = ("semantic", "panoptic")
