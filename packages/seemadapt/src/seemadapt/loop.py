"""The closed loop: generate synthetic data -> fine-tune SEEM -> evaluate -> plan the next round from the weak classes.

Each round spends ``budget`` synthetic images. Round 1 follows the base model's per-class IoU (``baseline``, evaluated
as round 0) or a uniform plan; round ``k`` follows round ``k-1``'s IoU through :func:`diffsynth.plan_from_metrics`, so
the classes the model segments worst get more, and more varied, images. Every round keeps its artefacts::

    output_dir/
        loop_config.json                 the configuration (a resumed run must match it)
        round_0/metrics.json, DONE       baseline evaluation (with baseline=True)
        round_k/plan.json                the generation plan and why (IoU, shares, weak classes)
        round_k/dataset/                 the synthetic data (save_to_disk + categories.json)
        round_k/train/                   fine-tuning checkpoints and report
        round_k/adapters/                the adapter weights (seemadapt.load_adapters / load_model)
        round_k/eval/                    results.json, results.md, per-class plots
        round_k/metrics.json, DONE       per-class IoU and all metrics; DONE is written last
        iou_over_rounds.png, summary.json, summary.md

A run interrupted anywhere resumes where it stopped (``resume=True``): finished rounds (``DONE``) are skipped, a
round's finished dataset and adapters are reused, and an interrupted fine-tuning resumes from its last checkpoint.

diffsynth is needed only here (seemadapt does not depend on it otherwise); it is imported when the loop runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LoopConfig", "LoopResult", "RoundResult", "add_loop_parser", "cmd_loop", "run_loop"]

CONFIG_FILE = "loop_config.json"
DONE = "DONE"
_GENERATION_LOAD_KEYS = ("dtype", "torch_dtype", "device", "scheduler")


def _diffsynth() -> Any:
    try:
        import diffsynth
    except ImportError as error:  # pragma: no cover - diffsynth is installed in the workspace
        raise ImportError(
            "seemadapt.loop generates its training data with diffsynth, which is not installed. "
            "Fix: pip install diffsynth (or `uv add diffsynth`)."
        ) from error
    return diffsynth


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
        finetune: :class:`~seemadapt.train.config.TrainConfig` fields (``max_steps``, ``lr``, ``batch_size`` ...).
        evaluate: :func:`seemadapt.evaluation.evaluate` options (``batch_size``, ``image_size``, ``max_images`` ...).
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
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(
                f"LoopConfig.budget must be an int >= 1 (images per round), got {self.budget!r}."
            )
        for name in ("accumulate", "warm_start", "baseline"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LoopConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"LoopConfig.seed must be an int >= 0, got {self.seed!r}.")
        for name in ("generate", "plan", "finetune", "evaluate"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, Mapping):
                raise ValueError(
                    f"LoopConfig.{name} must be a mapping of options, got {type(value).__name__}."
                )
            else:
                setattr(self, name, dict(value))
        reserved = {"classes", "num_images", "seed", "plan", "output_dir"} & set(self.generate)
        if reserved:
            raise ValueError(
                f"LoopConfig.generate sets {sorted(reserved)}, which the loop sets itself each round; "
                "use LoopConfig.classes / budget / seed / plan instead."
            )
        reserved = {"output_dir", "resume_from"} & set(self.finetune)
        if reserved:
            raise ValueError(
                f"LoopConfig.finetune sets {sorted(reserved)}; the loop puts each round in output_dir/round_k/."
            )
        plan_keys = {"floor", "variety", "power", "scenes", "templates"}
        unknown = sorted(set(self.plan) - plan_keys)
        if unknown:
            raise ValueError(f"LoopConfig.plan has unknown keys {unknown}; valid: {sorted(plan_keys)}.")
        # Fail now, not after an hour of generation, on finetune/evaluate options that do not exist.
        from seemadapt.train.config import TrainConfig

        TrainConfig.resolve(None, **{**self.finetune, "output_dir": "unused"})
        import inspect

        from seemadapt.evaluation import evaluate

        accepted = set(inspect.signature(evaluate).parameters) - {"model", "dataset"}
        unknown = sorted(set(self.evaluate) - accepted)
        if unknown:
            raise ValueError(f"LoopConfig.evaluate has unknown options {unknown}; valid: {sorted(accepted)}.")

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
        import yaml

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
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "num_rows") and hasattr(value, "column_names"):
        return {"in_memory_dataset": {"rows": int(value.num_rows), "columns": list(value.column_names)}}
    return repr(value)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "(absent)"), new.get(key, "(absent)"), f"{prefix}{key}.")
        return out
    if old != new and not (
        isinstance(old, dict)
        and "in_memory_dataset" in old
        and isinstance(new, dict)
        and "in_memory_dataset" in new
    ):
        return [f"{prefix.rstrip('.')}: folder has {json.dumps(old)[:60]}, now {json.dumps(new)[:60]}"]
    return []


# ------------------------------------------------------------------------------------------------ results
@dataclass
class RoundResult:
    """One finished round: its per-class IoU and where its artefacts are."""

    round: int
    iou: dict[str, float]
    metrics: dict[str, float | None]
    folder: Path

    @property
    def miou(self) -> float:
        values = [v for v in self.iou.values() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan


@dataclass
class LoopResult:
    """Every finished round (round 0 = baseline when evaluated) and the loop's files."""

    rounds: list[RoundResult]
    output_dir: Path
    plot: Path | None = None

    def table(self) -> str:
        """Per-class IoU (%) per round, Markdown."""
        names = list(dict.fromkeys(n for r in self.rounds for n in r.iou))
        lines = ["| round | " + " | ".join(names) + " | mIoU |", "|---" * (len(names) + 2) + "|"]
        for r in self.rounds:
            cells = [_pct(r.iou.get(n, math.nan)) for n in names]
            lines.append(f"| {r.round} | " + " | ".join(cells) + f" | {_pct(r.miou)} |")
        return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


# ------------------------------------------------------------------------------------------------ files
def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(_jsonable(payload), indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)


def _nan_to_none(values: Mapping[str, float]) -> dict[str, float | None]:
    return {
        k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
        for k, v in values.items()
    }


def _read_round(folder: Path, index: int) -> RoundResult:
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    iou = {k: (math.nan if v is None else float(v)) for k, v in data["iou"].items()}
    return RoundResult(index, iou, data.get("metrics", {}), folder)


def _finish_round(folder: Path, index: int, result: Any, extra: Mapping[str, Any]) -> RoundResult:
    """Save the evaluation, write metrics.json, then the DONE marker (last: it is the round's commit)."""
    result.save(folder / "eval", overlays=False)
    semantic = result.semantic
    iou = {str(n): float(v) for n, v in zip(semantic.class_names, semantic.iou)}
    metrics = _nan_to_none(result.metrics)
    _write_json(
        folder / "metrics.json", {"round": index, "iou": _nan_to_none(iou), "metrics": metrics, **extra}
    )
    _write_json(folder / DONE, {"round": index, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return RoundResult(index, iou, metrics, folder)


# ------------------------------------------------------------------------------------------------ the loop
class _Loop:
    def __init__(self, config: LoopConfig, out: Path, pipeline: Any, progress: bool) -> None:
        self.config = config
        self.out = out
        self.pipeline = pipeline
        self.progress = progress

    # -- pieces ----------------------------------------------------------------------------------------
    def _train_config(self, folder: Path) -> dict[str, Any]:
        options = {"progress": self.progress, **self.config.finetune}
        return {**options, "output_dir": str(folder / "train"), "resume_from": "latest"}

    def _seed(self) -> int:
        from seemadapt.train.config import TrainConfig

        return TrainConfig.resolve(None, **{**self.config.finetune, "output_dir": "unused"}).seed

    def _base_model(self, seed: int) -> Any:
        """The SEEM base exactly as ``finetune`` builds it (seeded, so random presets repeat)."""
        import torch

        from seemadapt.finetuning import load_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return load_model(self.config.model)

    def _evaluate(self, model: Any) -> Any:
        from seemadapt.evaluation import evaluate

        options = {"progress": self.progress, **self.config.evaluate}
        result = evaluate(model, self.config.eval, **options)
        if result.semantic is None:
            raise ValueError(
                "the loop needs per-class IoU: LoopConfig.evaluate must keep the semantic task (tasks: [semantic])."
            )
        return result

    def _load_pipeline(self) -> Any:
        if self.pipeline is None:
            ds = _diffsynth()
            options = self.config.generate
            load = {k: options[k] for k in _GENERATION_LOAD_KEYS if options.get(k) is not None}
            self.pipeline = ds.load_pipeline(options.get("model", "tiny"), progress=self.progress, **load)
        return self.pipeline

    def _plan(self, previous: RoundResult | None) -> Any:
        ds = _diffsynth()
        if previous is None:
            return ds.GenerationPlan(
                {c: 1 for c in self.config.classes}, notes={"kind": "uniform", "reason": "no evaluation yet"}
            ).scaled(self.config.budget)
        plan = ds.plan_from_metrics(
            previous.iou, self.config.budget, classes=self.config.classes, **self.config.plan
        )
        plan.notes["from_round"] = previous.round
        return plan

    def _dataset(self, folder: Path, index: int, plan: Any) -> Path:
        """Generate the round's data into ``folder/dataset`` (atomically: a finished folder is reused)."""
        target = folder / "dataset"
        if (target / "dataset_info.json").is_file():
            return target
        ds = _diffsynth()
        from diffsynth.dataset import save_to_disk

        options = {
            k: v for k, v in self.config.generate.items() if k not in (*_GENERATION_LOAD_KEYS, "model")
        }
        data = ds.generate(
            self.config.classes,
            plan.num_images,
            model=self._load_pipeline(),
            seed=self.config.seed + index,
            plan=plan,
            progress=self.progress,
            **options,
        )
        tmp = folder / "dataset.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_to_disk(data, tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        return target

    def _train(self, folder: Path, index: int, sources: list[Any]) -> Any:
        """Fine-tune (resuming from the round's last checkpoint) and save the adapters; returns the model."""
        from seemadapt.finetuning import finetune
        from seemadapt.train.config import TrainConfig

        adapters = folder / "adapters"
        cfg = TrainConfig.resolve(None, **self._train_config(folder))
        if adapters.is_dir():  # renamed into place only once complete
            from seemadapt.hub import load_adapters

            return load_adapters(self._base_model(cfg.seed), adapters)
        model: Any = self.config.model
        strategy: Any = self.config.strategy
        previous = self.out / f"round_{index - 1}" / "adapters"
        if self.config.warm_start and index > 1 and previous.is_dir():
            from seemadapt.hub import load_adapters

            model, strategy = load_adapters(self._base_model(cfg.seed), previous), None
        run = finetune(
            train=list(self.config.train) + sources,
            eval=None,
            model=model,
            strategy=strategy,
            config=cfg,
        )
        tmp = folder / "adapters.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        run.save(tmp)
        shutil.rmtree(adapters, ignore_errors=True)
        os.replace(tmp, adapters)
        return run.model

    # -- rounds ----------------------------------------------------------------------------------------
    def baseline(self) -> RoundResult:
        folder = self.out / "round_0"
        if (folder / DONE).is_file():
            return _read_round(folder, 0)
        folder.mkdir(parents=True, exist_ok=True)
        result = self._evaluate(self._base_model(self._seed()))
        return _finish_round(folder, 0, result, {"model": self.config.model, "baseline": True})

    def round(self, index: int, previous: RoundResult | None) -> RoundResult:
        folder = self.out / f"round_{index}"
        if (folder / DONE).is_file():
            return _read_round(folder, index)
        folder.mkdir(parents=True, exist_ok=True)
        plan = self._plan(previous)
        _write_json(folder / "plan.json", plan.to_dict())
        dataset = self._dataset(folder, index, plan)
        rounds = range(1, index + 1) if self.config.accumulate else [index]
        sources = [str(self.out / f"round_{k}" / "dataset") for k in rounds if k != index] + [str(dataset)]
        model = self._train(folder, index, sources)
        result = self._evaluate(model)
        return _finish_round(
            folder,
            index,
            result,
            {"plan": plan.to_dict(), "train_sources": [*map(_jsonable, self.config.train), *sources]},
        )


def run_loop(
    config: LoopConfig | Mapping[str, Any] | str | os.PathLike,
    rounds: int,
    output_dir: str | os.PathLike,
    resume: bool = True,
    *,
    pipeline: Any = None,
    progress: bool = True,
) -> LoopResult:
    """Run ``rounds`` rounds of generate -> fine-tune -> evaluate into ``output_dir`` (see the module docstring).

    Args:
        config: a :class:`LoopConfig`, a dict of its fields, or a YAML/JSON file.
        rounds: rounds to have finished when this returns (a resumed run only runs the missing ones; a larger
            number extends a finished loop).
        output_dir: where every round's dataset, adapters and metrics go.
        resume: continue a loop found in ``output_dir`` (its configuration must match); ``False`` refuses a folder
            that already holds a loop.
        pipeline: an already loaded diffusers pipeline to generate with (default: load ``generate.model`` once).
        progress: progress bars.
    Returns the :class:`LoopResult` of every finished round; ``output_dir/iou_over_rounds.png`` plots them.
    """
    cfg = LoopConfig.resolve(config)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"run_loop: rounds must be an int >= 1, got {rounds!r}.")
    _diffsynth()  # fail before any work when diffsynth is missing
    out = Path(output_dir)
    record = cfg.to_json()
    saved = out / CONFIG_FILE
    if saved.is_file():
        if not resume:
            raise FileExistsError(
                f"output_dir={str(out)!r} already holds a loop; pass resume=True to continue it, or choose an empty "
                "folder."
            )
        diffs = _differences(json.loads(saved.read_text(encoding="utf-8")), record)
        if diffs:
            raise ValueError(
                f"output_dir={str(out)!r} holds a loop with another configuration; use a new folder or the same "
                "configuration:\n  " + "\n  ".join(diffs)
            )
    out.mkdir(parents=True, exist_ok=True)
    _write_json(saved, record)

    loop = _Loop(cfg, out, pipeline, progress)
    finished: list[RoundResult] = []
    previous = None
    if cfg.baseline:
        previous = loop.baseline()
        finished.append(previous)
    for index in range(1, rounds + 1):
        previous = loop.round(index, previous)
        finished.append(previous)
        _summarise(out, finished)
    return LoopResult(finished, out, out / "iou_over_rounds.png")


def _summarise(out: Path, finished: Sequence[RoundResult]) -> None:
    from seemadapt.plots import plot_iou_over_rounds

    result = LoopResult(list(finished), out)
    plot_iou_over_rounds(
        [r.iou for r in finished], out / "iou_over_rounds.png", title="per-class IoU over rounds"
    )
    _write_json(
        out / "summary.json",
        {
            "rounds": [
                {"round": r.round, "iou": _nan_to_none(r.iou), "miou": _nan_to_none({"m": r.miou})["m"]}
                for r in finished
            ]
        },
    )
    (out / "summary.md").write_text("# Closed loop\n\n" + result.table() + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------------ CLI
def add_loop_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``seemadapt loop --config loop.yaml --rounds N [--output-dir DIR] [--no-resume]`` to a CLI."""
    parser = subparsers.add_parser(
        "loop", help="closed loop: generate (diffsynth) -> fine-tune -> evaluate, for N rounds"
    )
    parser.add_argument("--config", required=True, help="loop YAML (see seemadapt.loop.LoopConfig)")
    parser.add_argument("--rounds", type=int, required=True, help="rounds to have finished")
    parser.add_argument("--output-dir", default="seemadapt-loop", help="where every round is kept")
    parser.add_argument("--no-resume", action="store_true", help="refuse a folder that already holds a loop")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_loop)
    return parser


def cmd_loop(args: argparse.Namespace) -> int:
    result = run_loop(
        args.config,
        args.rounds,
        args.output_dir,
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    print(result.table())
    print(f"plot: {result.plot}")
    return 0
