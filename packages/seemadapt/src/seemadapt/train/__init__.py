"""Training: matching, losses, the run configuration, optimizer and schedule, the accelerate loop, run results.

Every name is imported on first access (start-up speed: the CLI builds its flags from :class:`TrainConfig` and
validates a config without loading torch, accelerate or detectron2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seemadapt.lazy import lazy_attributes

if TYPE_CHECKING:
    from seemadapt.train.checkpoints import TrainState
    from seemadapt.train.config import TrainConfig
    from seemadapt.train.criterion import SEEMCriterion
    from seemadapt.train.criterion_config import CriterionConfig
    from seemadapt.train.matcher import HungarianMatcher, SEEMTarget
    from seemadapt.train.optim import LRSchedule, build_optimizer, build_scheduler, param_groups
    from seemadapt.train.run import Run
    from seemadapt.train.step import NonFiniteLossError
    from seemadapt.train.targets import build_targets
    from seemadapt.train.trainer import Trainer

#: public name -> the module defining it (imported on first access)
_LAZY = {
    "CriterionConfig": "seemadapt.train.criterion_config",
    "HungarianMatcher": "seemadapt.train.matcher",
    "LRSchedule": "seemadapt.train.optim",
    "SEEMCriterion": "seemadapt.train.criterion",
    "SEEMTarget": "seemadapt.train.matcher",
    "TrainConfig": "seemadapt.train.config",
    "build_optimizer": "seemadapt.train.optim",
    "build_scheduler": "seemadapt.train.optim",
    "param_groups": "seemadapt.train.optim",
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


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
