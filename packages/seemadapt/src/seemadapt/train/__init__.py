"""Training: matching, losses, the run configuration, optimizer and schedule, the accelerate loop, run results.

The trainer and its run results (accelerate, detectron2's data loading, the adapter files) are imported on first
access, so that reading :class:`TrainConfig` (the CLI builds its flags from it) does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from seemadapt.train.config import TrainConfig
from seemadapt.train.criterion import CriterionConfig, SEEMCriterion
from seemadapt.train.matcher import HungarianMatcher, SEEMTarget
from seemadapt.train.optim import LRSchedule, build_optimizer, build_scheduler, param_groups

if TYPE_CHECKING:
    from seemadapt.train.checkpoints import TrainState
    from seemadapt.train.run import Run
    from seemadapt.train.step import NonFiniteLossError
    from seemadapt.train.targets import build_targets
    from seemadapt.train.trainer import Trainer

#: public name -> the module defining it (imported on first access)
_LAZY = {
    "NonFiniteLossError": "seemadapt.train.step",
    "Run": "seemadapt.train.run",
    "TrainState": "seemadapt.train.checkpoints",
    "Trainer": "seemadapt.train.trainer",
    "build_targets": "seemadapt.train.targets",
}

__all__ = [
    "CriterionConfig",
    "HungarianMatcher",
    "LRSchedule",
    "NonFiniteLossError",
    "Run",
    "SEEMCriterion",
    "SEEMTarget",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "build_targets",
    "param_groups",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'seemadapt.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
