"""Training: matching, losses, the run configuration, optimizer and schedule, the accelerate loop, run results."""

from seemadapt.train.criterion import CriterionConfig, SEEMCriterion
from seemadapt.train.matcher import HungarianMatcher, SEEMTarget

__all__ = ["CriterionConfig", "HungarianMatcher", "SEEMCriterion", "SEEMTarget"]

from seemadapt.train.config import TrainConfig
from seemadapt.train.optim import LRSchedule, build_optimizer, build_scheduler, param_groups
from seemadapt.train.run import Run
from seemadapt.train.trainer import NonFiniteLossError, Trainer, TrainState, build_targets

__all__ += [
    "LRSchedule",
    "NonFiniteLossError",
    "Run",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "build_targets",
    "param_groups",
]
