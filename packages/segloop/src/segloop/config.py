"""What the loop does each round, validated when it is built (not after an hour of generation)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seemadapt import TrainConfig, evaluate

__all__ = ["PLAN_KEYS", "LoopConfig", "config_differences", "jsonable"]

#: Options of :func:`diffsynth.plan_from_metrics` that a loop config may set.
PLAN_KEYS = frozenset({"floor", "variety", "power", "scenes", "templates"})


def _check_flags(config: LoopConfig) -> None:
    if isinstance(config.budget, bool) or not isinstance(config.budget, int) or config.budget < 1:
        raise ValueError(f"LoopConfig.budget must be an int >= 1 (images per round), got {config.budget!r}.")
    for name in ("accumulate", "warm_start", "baseline"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"LoopConfig.{name} must be true or false, got {getattr(config, name)!r}.")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int) or config.seed < 0:
        raise ValueError(f"LoopConfig.seed must be an int >= 0, got {config.seed!r}.")


def _option_map(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"LoopConfig.{name} must be a mapping of options, got {type(value).__name__}.")
    return dict(value)


def _check_options(config: LoopConfig) -> None:
    """Options the loop sets itself are refused; finetune/evaluate options must exist downstream."""
    reserved = {"classes", "num_images", "seed", "plan", "output_dir"} & set(config.generate)
    if reserved:
        raise ValueError(
            f"LoopConfig.generate sets {sorted(reserved)}, which the loop sets itself each round; "
            "use LoopConfig.classes / budget / seed / plan instead."
        )
    reserved = {"output_dir", "resume_from"} & set(config.finetune)
    if reserved:
        raise ValueError(
            f"LoopConfig.finetune sets {sorted(reserved)}; the loop puts each round in output_dir/round_k/."
        )
    unknown = sorted(set(config.plan) - PLAN_KEYS)
    if unknown:
        raise ValueError(f"LoopConfig.plan has unknown keys {unknown}; valid: {sorted(PLAN_KEYS)}.")
    TrainConfig.resolve(None, **{**config.finetune, "output_dir": "unused"})
    accepted = set(inspect.signature(evaluate).parameters) - {"model", "dataset"}
    unknown = sorted(set(config.evaluate) - accepted)
    if unknown:
        raise ValueError(f"LoopConfig.evaluate has unknown options {unknown}; valid: {sorted(accepted)}.")


@dataclass
class LoopConfig:
    """What the loop does each round.

    Args:
        classes: the classes to generate (diffsynth adds ``background``); their names must match the evaluation
            data's class names for the IoU to steer the plan.
        eval: evaluation data (folder, parquet, Hub id, Dataset): the per-class IoU on it drives the loop.
        train: real training data mixed with the synthetic data of each round (optional).
        budget: synthetic images generated per round.
        model: the SEEM base (checkpoint, Hub reference or preset).
        strategy: adapter strategy (see :func:`seemadapt.finetune`).
        accumulate: train each round on the synthetic data of all rounds so far (else only the newest round's).
        warm_start: start round ``k``'s adapters from round ``k-1``'s (else from the base model each round).
        baseline: evaluate the base model first (round 0) and plan round 1 from it (else round 1 is uniform).
        seed: base seed; round ``k`` generates with ``seed + k``.
        generate: :func:`diffsynth.generate` options (``model`` = the SD pipeline, ``num_inference_steps``,
            ``min_quality``, ``batch_size``, ``templates``, ``context``, masker settings ...).
        plan: :func:`diffsynth.plan_from_metrics` options (``floor``, ``variety``, ``power``, ``scenes``,
            ``templates``).
        finetune: :class:`seemadapt.TrainConfig` fields (``max_steps``, ``lr``, ``batch_size`` ...).
        evaluate: :func:`seemadapt.evaluate` options (``batch_size``, ``image_size``, ``max_images`` ...).
    """

    classes: list[str]
    eval: Any
    train: list[Any] = field(default_factory=list)
    budget: int = 100
    model: str = "xdecoder/SEEM:seem_focalt_v1.pt"
    strategy: str = "adapter-backbone/full-head"
    accumulate: bool = True
    warm_start: bool = False
    baseline: bool = True
    seed: int = 0
    generate: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or not self.classes:
            raise ValueError(
                "LoopConfig.classes must be a non-empty list of class names, e.g. [mold, stain]."
            )
        self.classes = [str(c) for c in self.classes]
        if self.eval is None:
            raise ValueError(
                "LoopConfig.eval is required: the loop plans each round from the per-class IoU on it."
            )
        if self.train is None:
            self.train = []
        elif isinstance(self.train, str | os.PathLike) or not isinstance(self.train, list | tuple):
            self.train = [self.train]
        self.train = list(self.train)
        _check_flags(self)
        for name in ("generate", "plan", "finetune", "evaluate"):
            setattr(self, name, _option_map(getattr(self, name), name))
        _check_options(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"loop config has unknown keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**dict(data))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LoopConfig:
        """Read a YAML or JSON file (see ``docs/quality_loop.md`` for an example)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"loop config {str(path)!r} does not exist.")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ValueError(
                f"loop config {str(path)!r} must hold a mapping of keys, got {type(data).__name__}."
            )
        return cls.from_dict(data)

    @classmethod
    def resolve(cls, config: LoopConfig | Mapping[str, Any] | str | os.PathLike) -> LoopConfig:
        if isinstance(config, LoopConfig):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        if isinstance(config, str | os.PathLike):
            return cls.from_file(config)
        raise TypeError(f"config must be a LoopConfig, a dict or a YAML path, got {type(config).__name__}.")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record; in-memory datasets are described, not stored."""
        return jsonable(dataclasses.asdict(self))


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (paths as strings, in-memory datasets as a short description)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "num_rows") and hasattr(value, "column_names"):
        return {"in_memory_dataset": {"rows": int(value.num_rows), "columns": list(value.column_names)}}
    return repr(value)


def config_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Human-readable differences between two :meth:`LoopConfig.to_json` records."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += config_differences(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: folder has {json.dumps(old)[:60]}, now {json.dumps(new)[:60]}"]
    return []
