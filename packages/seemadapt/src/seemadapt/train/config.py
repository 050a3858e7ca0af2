"""``TrainConfig``: every knob of a fine-tuning run, validated up front.

Defaults follow the SEEM v1 recipe as the thesis ran it: AdamW, lr 1e-4 (1e-3 for adapter-only placements),
weight decay 0.05 (none on norms, embeddings and biases), gradient-norm clip 5.0, 256 px LSJ crops, batch 4,
30 epochs. Two deliberate departures: every parameter group gets the same learning rate unless
``lr_multipliers`` says otherwise (the fork's 0.1 on the backbone would have starved the backbone adapters), and the
default schedule is cosine (``schedule="multistep"`` is the official x0.1 at 88.9% and 96.3% of the run).

Field names map 1:1 onto ``finetune(**overrides)`` and the CLI flags.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from seemadapt.adapters.names import GROUPS
from seemadapt.tasks import TASKS
from seemadapt.train.criterion_config import CriterionConfig

__all__ = ["QUIET_RUN", "SCHEDULES", "TRACKERS", "TrainConfig"]

SCHEDULES = ("cosine", "multistep", "constant")
TRACKERS = ("tensorboard", "wandb")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
OFFICIAL_MILESTONES = (0.88889, 0.96296)  # SEEM v1: x0.1 at 8/9 and 26/27 of MAX_ITER
#: TrainConfig fields of a small CPU run with no side work (loader workers, tracker, progress bar, evaluation,
#: checkpoints would cost more than its steps): the toy fine-tuning recipe and the step-time benchmarks.
QUIET_RUN: Mapping[str, Any] = MappingProxyType(
    {
        "num_workers": 0,
        "tracker": None,
        "progress": False,
        "eval_every": 0,
        "save_every": 0,
    }
)

Schedule = Literal["cosine", "multistep", "constant"]
Precision = Literal["auto", "no", "fp16", "bf16"]


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run.

    Optimisation:
        lr: AdamW's learning rate; ``None`` (default) = the placement's
            :func:`~seemadapt.adapters.strategies.default_lr`: 1e-4 (the SEEM recipe) when base weights train, 1e-3
            when only adapters do (they need the larger step; see ``docs/adapters.md``).
        weight_decay, betas, eps: AdamW. Weight decay is 0 for norm layers, embeddings, biases and other
            1-d parameters (see :func:`seemadapt.train.optim.param_groups`).
        lr_multipliers: per adapter-report group (``"backbone adapters"``, ``"decoder"``, ... see
            :data:`seemadapt.adapters.GROUPS`) a factor on ``lr``; unnamed groups get 1.0.
        schedule: ``"cosine"`` (to 0), ``"multistep"`` (x ``gamma`` at the ``milestones`` fractions of the run;
            the official recipe) or ``"constant"``.
        warmup_steps, warmup_factor: linear warm-up from ``warmup_factor * lr`` over the first optimizer steps.
        max_steps: optimizer steps; overrides ``epochs`` when set.
        epochs: passes over the training set (per-process batches x processes x ``grad_accum`` samples per step).
        batch_size: images per process and forward pass; ``grad_accum`` forward passes make one optimizer step.
        clip: gradient-norm clip over all trainable parameters (0 = off).
        mixed_precision: ``"auto"`` = bf16 where the device runs it natively (GPUs that support it, CPUs with AMX
            or AVX512-BF16), else ``"no"``; or ``"no"``/``"fp16"``/``"bf16"``.
        seed: seeds Python, NumPy and torch (accelerate's ``set_seed``), the data order, the augmentations, the
            prompt templates and the loss points.

    Data:
        image_size: square LSJ crop (the thesis used 256, SEEM 1024); min_scale, max_scale, flip: LSJ settings.
        grounding: train the grounding (referring) queries too; max_grounding: texts per image (1..n drawn).
        spatial: train the visual-prompt (interactive) branch too, with prompts sampled inside the instances
            (SEEM's point/polygon/scribble/circle sampler) and ``0..spatial_max_iter`` no-grad corrective-click
            rounds first; ``spatial_max_candidate`` instances per image. Off by default.
        num_workers: data-loading processes per training process.
        cache_dir: where registered datasets are materialised (default: the seemadapt cache).

    Loss: criterion (a :class:`CriterionConfig` or a dict of its fields).

    Bookkeeping:
        output_dir: checkpoints (``checkpoints/step_*``), the best adapters (``best/``), logs and the report.
        log_every, eval_every, save_every: in optimizer steps. ``eval_every``/``save_every`` ``None`` = once per
            epoch, 0 = only at the end. The run always evaluates (when eval data is given) and saves at the end.
        save_total_limit: checkpoints kept (the newest ones); the best adapters are kept apart.
        best_metric: evaluation key that picks the best checkpoint (higher is better), e.g. ``"miou"``.
        eval_batch_size, eval_tasks, eval_image_size: passed to :func:`seemadapt.evaluation.evaluate`
            (``eval_tasks``: any of ``semantic``, ``panoptic``, ``instance``, e.g. with ``best_metric="ap"`` for mask
            AP; ``eval_image_size``: shortest edge the images are resized to inside the model; ``None`` = own size).
        tracker: ``"tensorboard"`` (default), ``"wandb"`` or ``None``; project_name: the tracker's run name.
        resume_from: ``"latest"`` (newest complete checkpoint in ``output_dir``, or a fresh start if none) or a
            checkpoint folder.
        progress: tqdm bar on the main process.
    """

    lr: float | None = None
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    schedule: Schedule = "cosine"
    milestones: tuple[float, ...] = OFFICIAL_MILESTONES
    gamma: float = 0.1
    warmup_steps: int = 0
    warmup_factor: float = 0.001
    max_steps: int | None = None
    epochs: float = 30.0
    batch_size: int = 4
    grad_accum: int = 1
    clip: float = 5.0
    mixed_precision: Precision = "auto"
    seed: int = 0
    image_size: int = 256
    min_scale: float = 0.1
    max_scale: float = 2.0
    flip: bool = True
    grounding: bool = True
    max_grounding: int = 4
    spatial: bool = False
    spatial_max_candidate: int = 10
    spatial_max_iter: int = 1
    num_workers: int = 2
    cache_dir: str | None = None
    criterion: CriterionConfig = field(default_factory=CriterionConfig)
    output_dir: str = "seemadapt-output"
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    save_total_limit: int = 2
    best_metric: str = "miou"
    eval_batch_size: int = 4
    eval_tasks: tuple[str, ...] = ("semantic", "panoptic")
    eval_image_size: int | None = None
    tracker: str | None = "tensorboard"
    project_name: str = "seemadapt"
    resume_from: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.criterion, dict):
            self.criterion = CriterionConfig(**self.criterion)
        if not isinstance(self.criterion, CriterionConfig):
            raise ValueError(
                f"TrainConfig.criterion must be a CriterionConfig or a dict of its fields, got {self.criterion!r}."
            )
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.milestones = tuple(self.milestones)
        self.eval_tasks = (self.eval_tasks,) if isinstance(self.eval_tasks, str) else tuple(self.eval_tasks)
        self.lr_multipliers = dict(self.lr_multipliers)
        if isinstance(self.output_dir, os.PathLike):
            self.output_dir = os.fspath(self.output_dir)
        if isinstance(self.cache_dir, os.PathLike):
            self.cache_dir = os.fspath(self.cache_dir)
        if isinstance(self.resume_from, os.PathLike):
            self.resume_from = os.fspath(self.resume_from)
        self._validate()

    # ------------------------------------------------------------------ validation

    def _validate(self) -> None:
        if self.lr is not None:
            _positive("lr", self.lr)
        _at_least("weight_decay", self.weight_decay, 0.0)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}.")
        _positive("eps", self.eps)
        for group, factor in self.lr_multipliers.items():
            if group not in GROUPS:
                raise ValueError(
                    f"TrainConfig.lr_multipliers: unknown group {group!r}; groups are {list(GROUPS)}."
                )
            _at_least(f"lr_multipliers[{group!r}]", factor, 0.0)
        self._validate_schedule()
        self._validate_data()
        self._validate_run()

    def _validate_schedule(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}.")
        if self.schedule == "multistep":
            if not self.milestones or not all(0.0 < m < 1.0 for m in self.milestones):
                raise ValueError(
                    "TrainConfig.milestones must be fractions of the run in (0, 1), e.g. the official "
                    f"{OFFICIAL_MILESTONES}; got {self.milestones!r}."
                )
            if list(self.milestones) != sorted(self.milestones):
                raise ValueError(f"TrainConfig.milestones must increase, got {self.milestones!r}.")
        _positive("gamma", self.gamma)
        _int_at_least("warmup_steps", self.warmup_steps, 0)
        if not 0.0 < self.warmup_factor <= 1.0:
            raise ValueError(f"TrainConfig.warmup_factor must be in (0, 1], got {self.warmup_factor!r}.")
        if self.max_steps is not None:
            _int_at_least("max_steps", self.max_steps, 1)
        _positive("epochs", self.epochs)
        _int_at_least("batch_size", self.batch_size, 1)
        _int_at_least("grad_accum", self.grad_accum, 1)
        _at_least("clip", self.clip, 0.0)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"TrainConfig.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}."
            )
        _int_at_least("seed", self.seed, 0)

    def _validate_data(self) -> None:
        _int_at_least("image_size", self.image_size, 32)
        if not 0.0 < self.min_scale <= self.max_scale:
            raise ValueError(
                "TrainConfig: need 0 < min_scale <= max_scale (LSJ scale range), got "
                f"min_scale={self.min_scale}, max_scale={self.max_scale}."
            )
        for name in ("flip", "grounding", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        _int_at_least("max_grounding", self.max_grounding, 1)
        _int_at_least("spatial_max_candidate", self.spatial_max_candidate, 1)
        _int_at_least("spatial_max_iter", self.spatial_max_iter, 0)
        _int_at_least("num_workers", self.num_workers, 0)

    def _validate_run(self) -> None:
        _int_at_least("log_every", self.log_every, 1)
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if value is not None:
                _int_at_least(name, value, 0, hint="None = once per epoch, 0 = only at the end")
        _int_at_least("save_total_limit", self.save_total_limit, 1)
        if not isinstance(self.best_metric, str) or not self.best_metric:
            raise ValueError(
                f"TrainConfig.best_metric must name an evaluation metric, got {self.best_metric!r}."
            )
        _int_at_least("eval_batch_size", self.eval_batch_size, 1)
        if self.eval_image_size is not None:
            _int_at_least("eval_image_size", self.eval_image_size, 32)
        if not self.eval_tasks:
            raise ValueError("TrainConfig.eval_tasks must name at least one task, e.g. ('semantic',).")
        unknown = [task for task in self.eval_tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"TrainConfig.eval_tasks: {unknown} are unknown; choose among {list(TASKS)}.")
        if self.tracker is not None and self.tracker not in TRACKERS:
            raise ValueError(
                f"TrainConfig.tracker must be one of {TRACKERS} or None (no tracking), got {self.tracker!r}."
            )
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(f"TrainConfig.output_dir must be a folder path, got {self.output_dir!r}.")
        if self.resume_from is not None and (not isinstance(self.resume_from, str) or not self.resume_from):
            raise ValueError(
                f"TrainConfig.resume_from must be None, 'latest' or a checkpoint folder, got {self.resume_from!r}."
            )

    # ------------------------------------------------------------------ derived values

    def with_default_lr(self, placement: Any) -> TrainConfig:
        """This config, with ``lr`` set to the placement's default if it is ``None``."""
        if self.lr is not None:
            return self
        from seemadapt.adapters.strategies import default_lr

        return self.replace(lr=default_lr(placement))

    def resolved_mixed_precision(self) -> str:
        """``"auto"`` made concrete: bf16 where the device computes it natively (a CUDA device that supports it,
        or a CPU with AMX / AVX512-BF16 through oneDNN), else ``"no"`` (older CPUs and GPUs)."""
        if self.mixed_precision != "auto":
            return self.mixed_precision
        import torch  # start-up speed: the CLI validates a config without loading torch

        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "no"
        return "bf16" if _cpu_has_native_bf16() else "no"

    def total_steps(self, num_samples: int, num_processes: int = 1) -> int:
        """Optimizer steps of the run: ``max_steps``, else ``ceil(epochs * samples / samples per step)``."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * num_samples / self.samples_per_step(num_processes)))

    def samples_per_step(self, num_processes: int = 1) -> int:
        return self.batch_size * self.grad_accum * num_processes

    def steps_per_epoch(self, num_samples: int, num_processes: int = 1) -> int:
        return max(1, math.ceil(num_samples / self.samples_per_step(num_processes)))

    # ------------------------------------------------------------------ conversion

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists); :meth:`from_dict` inverts it."""
        data = asdict(self)
        return json.loads(json.dumps(data))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict, refusing unknown keys (a typo would otherwise be a silent default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}; known fields are {sorted(known)}.")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` file holding the fields."""
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(
                f"TrainConfig.from_file: {path} must hold a mapping of fields, got {type(data).__name__}."
            )
        return cls.from_dict(data)

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with some fields changed (validated; unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown fields {unknown}; known fields are {sorted(known)}.")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def resolve(
        cls, config: TrainConfig | dict[str, Any] | str | os.PathLike | None, **overrides: Any
    ) -> TrainConfig:
        """What ``finetune`` accepts: a config, a dict, a JSON/YAML path or ``None``, plus field overrides."""
        if config is None:
            base = cls()
        elif isinstance(config, TrainConfig):
            base = config
        elif isinstance(config, dict):
            base = cls.from_dict(config)
        elif isinstance(config, str | os.PathLike):
            base = cls.from_file(config)
        else:
            raise TypeError(
                f"config must be a TrainConfig, a dict, a JSON/YAML path or None, got {type(config).__name__}."
            )
        return base.replace(**overrides) if overrides else base


def _positive(name: str, value: Any) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"TrainConfig.{name} must be a positive number, got {value!r}.")


def _at_least(name: str, value: Any, low: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < low
    ):
        raise ValueError(f"TrainConfig.{name} must be a number >= {low}, got {value!r}.")


def _cpu_has_native_bf16() -> bool:
    """True on CPUs whose oneDNN kernels run bf16 natively (AMX or AVX512-BF16): there bf16 autocast is faster."""
    import torch  # start-up speed: the CLI validates a config without loading torch

    try:
        # torch has no public query for native bf16 kernels; this is the check its own bf16 CPU tests use
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _int_at_least(name: str, value: Any, low: int, hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        extra = f" ({hint})" if hint else ""
        raise ValueError(f"TrainConfig.{name} must be an integer >= {low}{extra}, got {value!r}.")
