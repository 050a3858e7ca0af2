"""``evaluate()``: score a SEEM model (base or adapted) on any contract dataset, with or without training.

The loop is deliberately plain: rows are decoded from the contract (image, panoptic PNG + ``segments_info``,
semantic PNG, grounding sentences), images go through ``model.predict`` in batches at their own size (an optional
``image_size`` resizes them inside the model; predictions always come back at the original size), and the metric
accumulators of :mod:`seemadapt.metrics` count against the ground truth at full resolution:

* semantic: one confusion matrix over the whole set, ground-truth 255 ignored (the thesis's mIoU, mean precision and
  mean recall; see :class:`~seemadapt.metrics.SemanticMetrics`);
* panoptic: PQ / SQ / RQ with the COCO rules, crowd segments and void respected
  (:class:`~seemadapt.metrics.PanopticMetrics`);
* instance (opt-in task): COCO mask AP of the thing classes by pycocotools' ``COCOeval``, ground-truth instances from
  the panoptic segments of thing classes, crowd respected (:class:`~seemadapt.metrics.InstanceMetrics`);
* grounding (opt-in): each grounded segment's first sentence against the segment's mask.

A :class:`~seemadapt.model.SEEM` gives every task of a batch, grounding included, from one run of the backbone and
pixel decoder (``predict(task=[...], grounding=...)``); any other model is called once per task (and ``ground`` once
per image).

With ``distributed=True`` under ``accelerate launch`` / ``torchrun``, each process scores every ``world_size``-th row
and the metric sums are all-reduced once at the end, so every process returns the same :class:`EvalResult`.

Anything with a ``predict(images, classes, task=..., thing_classes=...)`` method (and ``ground`` for grounding)
can be evaluated; that is also how the bookkeeping is tested independently of the model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from seemadapt.data.sources import load_source
from seemadapt.heap import freed_memory_kept
from seemadapt.hub import load_model
from seemadapt.metrics import (
    GroundingMetrics,
    GroundingResults,
    InstanceMetrics,
    InstanceResults,
    PanopticMetrics,
    PanopticResults,
    SemanticMetrics,
    SemanticResults,
    format_table,
    to_json,
)
from seemadapt.metrics.distributed import sum_across_processes
from seemadapt.model.seem import SEEM
from seemadapt.plots import plot_per_class
from seemadapt.tasks import DEFAULT_TASKS, TASKS
from seemadapt.visualize import draw_panoptic, draw_semantic
from seemadapt.workers import worker_pool
from segcontract import COLUMNS, class_names_of, decode_row, iter_raw_rows, read_categories

__all__ = ["TASKS", "EvalExample", "EvalResult", "evaluate", "image_size_kwargs"]

logger = logging.getLogger(__name__)

IGNORE = 255
#: SEEM's evaluation resize keeps the longest edge at most this multiple of the shortest (800 / 1333).
MAX_SIZE_RATIO = 1333 / 800


# ----------------------------------------------------------------------------------------------- results


@dataclass
class EvalExample:
    """One evaluated image kept for overlays: the image, the ground truth and the predictions (numpy, CPU)."""

    file_name: str
    image: np.ndarray
    semantic_gt: np.ndarray
    semantic_pred: np.ndarray | None = None
    panoptic_seg: np.ndarray | None = None
    segments_info: list[dict[str, Any]] | None = None


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        classes: the class names the model was prompted with (index = class id in every result).
        semantic, panoptic, instance, grounding: the metric results of each task that ran (``None`` otherwise).
        num_images: rows scored (over all processes).
        seconds: wall time of the evaluation loop on this process.
        examples: a few images with predictions, for :meth:`save`'s overlays (this process's rows only).
    """

    classes: tuple[str, ...]
    semantic: SemanticResults | None = None
    panoptic: PanopticResults | None = None
    grounding: GroundingResults | None = None
    num_images: int = 0
    seconds: float = 0.0
    examples: list[EvalExample] = field(default_factory=list, repr=False)
    instance: InstanceResults | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """A flat ``{name: fraction}`` dict (NaN = undefined), ready for loggers and model cards.

        Summary keys (lower case, as ``TrainConfig.best_metric`` names them): ``miou``, ``mean_precision``,
        ``mean_recall``, ``pixel_accuracy``, ``fwiou``, ``pq``, ``sq``, ``rq``, ``pq_things``, ``pq_stuff``,
        ``ap``, ``ap50``, ``ap75``, ``grounding_miou``, ``grounding_ciou``, ``grounding_precision@0.5`` ...; per
        class: ``iou/<class>``, ``precision/<class>``, ``recall/<class>``, ``pq/<class>``, ``ap/<class>``.
        """
        out: dict[str, float] = {}
        if self.semantic is not None:
            s = self.semantic
            out.update(
                {
                    "miou": s.miou,
                    "mean_precision": s.mean_precision,
                    "mean_recall": s.mean_recall,
                    "pixel_accuracy": s.pixel_accuracy,
                    "fwiou": s.fwiou,
                }
            )
        if self.panoptic is not None:
            p = self.panoptic
            out.update(
                {
                    "pq": p.all.pq,
                    "sq": p.all.sq,
                    "rq": p.all.rq,
                    "pq_things": p.things.pq,
                    "pq_stuff": p.stuff.pq,
                }
            )
        if self.instance is not None:
            out.update({"ap": self.instance.ap, "ap50": self.instance.ap50, "ap75": self.instance.ap75})
        if self.grounding is not None:
            g = self.grounding
            out.update({"grounding_miou": g.miou, "grounding_ciou": g.ciou})
            out.update({f"grounding_precision@{t:g}": v for t, v in g.precision.items()})
        if self.semantic is not None:
            s = self.semantic
            for k, name in enumerate(s.class_names):
                out[f"iou/{name}"] = float(s.iou[k])
                out[f"precision/{name}"] = float(s.precision[k])
                out[f"recall/{name}"] = float(s.recall[k])
        if self.panoptic is not None:
            for row in self.panoptic.per_class:
                out[f"pq/{row.name}"] = row.pq
        if self.instance is not None:
            for row in self.instance.per_class:
                out[f"ap/{row.name}"] = row.ap
        return out

    def _sections(self) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        if self.semantic is not None:
            sections["Semantic segmentation"] = self.semantic
        if self.panoptic is not None:
            sections["Panoptic segmentation"] = self.panoptic
        if self.instance is not None:
            sections["Instance segmentation"] = self.instance
        if self.grounding is not None:
            sections["Grounding"] = self.grounding
        return sections

    def table(self, digits: int = 2) -> str:
        """Markdown tables (percentages) of every task that ran."""
        sections = self._sections()
        if not sections:
            return "(no task was evaluated)"
        return format_table(sections, digits=digits)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dict: the flat metrics plus each task's full results (undefined scores as None)."""
        sections = {
            key: value
            for key, value in (
                ("semantic", self.semantic),
                ("panoptic", self.panoptic),
                ("instance", self.instance),
                ("grounding", self.grounding),
            )
            if value is not None
        }
        payload: dict[str, Any] = json.loads(to_json(sections)) if sections else {}
        return {
            "classes": list(self.classes),
            "num_images": self.num_images,
            "seconds": round(self.seconds, 3),
            "metrics": {k: (None if math.isnan(v) else v) for k, v in self.metrics.items()},
            **payload,
        }

    def save(self, folder: str | Path, *, overlays: bool = True) -> Path:
        """Write ``results.json``, ``results.md``, per-class bar plots and (with ``overlays``) a few prediction
        overlays under ``overlays/`` into ``folder``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        header = f"# Evaluation\n\n{self.num_images} images, classes: {', '.join(self.classes)}.\n\n"
        (folder / "results.md").write_text(header + self.table() + "\n")
        if self.semantic is not None:
            plot_per_class(self.semantic, folder / "per_class_semantic.png", title="semantic segmentation")
        if self.panoptic is not None:
            plot_per_class(self.panoptic, folder / "per_class_panoptic.png", title="panoptic quality")
        if self.instance is not None and self.instance.per_class:
            scores = {c.name: {"AP": c.ap, "AP50": c.ap50, "AP75": c.ap75} for c in self.instance.per_class}
            plot_per_class(scores, folder / "per_class_instance.png", title="instance mask AP")
        if overlays and self.examples:
            self._save_overlays(folder / "overlays")
        return folder

    def _save_overlays(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for example in self.examples:
            stem = Path(example.file_name).stem or "image"
            draw_semantic(example.image, example.semantic_gt, self.classes).save(
                folder / f"{stem}_ground_truth.png"
            )
            if example.semantic_pred is not None:
                draw_semantic(example.image, example.semantic_pred, self.classes).save(
                    folder / f"{stem}_semantic.png"
                )
            if example.panoptic_seg is not None:
                draw_panoptic(
                    example.image, example.panoptic_seg, example.segments_info or [], self.classes
                ).save(folder / f"{stem}_panoptic.png")


# ----------------------------------------------------------------------------------------------- helpers


def _check_tasks(tasks: Sequence[str] | str) -> tuple[str, ...]:
    tasks = (tasks,) if isinstance(tasks, str) else tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"evaluate: tasks {unknown} are unknown; choose among {list(TASKS)}.")
    return tuple(dict.fromkeys(tasks))


def image_size_kwargs(image_size: int | Sequence[int] | None) -> dict[str, int]:
    """``predict`` / ``ground`` keyword arguments for ``image_size``: the shortest edge (longest at most 1333/800
    of it), or ``(shortest, longest)``; ``{}`` for ``None``."""
    if image_size is None:
        return {}
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        short, longest = image_size, round(image_size * MAX_SIZE_RATIO)
    elif isinstance(image_size, Sequence) and len(image_size) == 2:
        short, longest = (int(v) for v in image_size)
    else:
        raise ValueError(
            f"evaluate: image_size must be an int (shortest edge) or (shortest, longest), got {image_size!r}."
        )
    if short < 8 or longest < short:
        raise ValueError(f"evaluate: image_size needs 8 <= shortest <= longest, got {image_size!r}.")
    return {"short_edge": short, "max_size": longest}


def _key(name: str) -> str:
    return " ".join(str(name).strip().lower().split())


def _class_lookup(
    dataset_names: Sequence[str], classes: Sequence[str] | Mapping[str, str] | None
) -> tuple[list[str], np.ndarray]:
    """The prompt names and the lookup ``dataset class index -> evaluated class index`` (-1 = not evaluated).

    ``classes``: ``None`` (the dataset's classes), a subset / reordering of the dataset's class names (matched
    case-insensitively), or ``{dataset name: prompt text}`` to prompt with other words.
    """
    by_key = {_key(name): index for index, name in enumerate(dataset_names)}
    if classes is None:
        return list(dataset_names), np.arange(len(dataset_names), dtype=np.int64)
    if isinstance(classes, str):
        raise TypeError("evaluate: classes must be a list of class names (or a dict), not one string.")
    if isinstance(classes, Mapping):
        wanted, prompts = list(classes.keys()), [str(v) for v in classes.values()]
    else:
        wanted = list(classes)
        prompts = [str(dataset_names[by_key[_key(n)]]) if _key(n) in by_key else str(n) for n in wanted]
    if not wanted:
        raise ValueError("evaluate: classes is empty; name at least one class of the dataset.")
    unknown = [n for n in wanted if _key(n) not in by_key]
    if unknown:
        raise ValueError(
            f"evaluate: classes {unknown} are not classes of the dataset ({list(dataset_names)}). Pass a subset of "
            "the dataset's class names, or {dataset name: prompt text} to prompt with other words."
        )
    indices = [by_key[_key(n)] for n in wanted]
    if len(set(indices)) != len(indices):
        raise ValueError(f"evaluate: classes {wanted} name a dataset class twice.")
    lookup = np.full(len(dataset_names), -1, dtype=np.int64)
    lookup[indices] = np.arange(len(indices))
    return prompts, lookup


def _unwrap(model: Any) -> Any:
    """The module inside DDP / accelerate wrappers (``predict`` lives on the bare model)."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
        not hasattr(model, "predict") and hasattr(model, "module")
    ):
        model = model.module
    return model


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _as_list(output: Any, count: int, task: str) -> list[dict[str, Any]]:
    outputs = [output] if isinstance(output, Mapping) else list(output)
    if len(outputs) != count:
        raise ValueError(
            f"evaluate: model.predict(task={task!r}) returned {len(outputs)} results for {count} images."
        )
    return outputs


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


@dataclass
class _Row:
    """A decoded contract row, ground truth already in evaluated class indices."""

    file_name: str
    image: np.ndarray  # [H, W, 3] uint8
    semantic: np.ndarray  # [H, W] int64, 255 = ignore
    panoptic: np.ndarray  # [H, W] int64 segment ids, 0 = void
    segments: list[dict[str, Any]]
    grounding: list[tuple[str, np.ndarray]]  # (first sentence, the segment's mask)


def _decode(
    index: int, raw: Mapping[str, Any], categories: Sequence[Any], lookup: np.ndarray, with_grounding: bool
) -> _Row:
    decoded = decode_row(index, raw, len(categories), name="evaluation dataset", categories=categories)
    image = np.asarray(decoded.image.convert("RGB"), dtype=np.uint8)
    table = np.full(256, IGNORE, dtype=np.int64)
    valid = lookup >= 0
    table[np.nonzero(valid)[0]] = lookup[valid]
    semantic = table[decoded.semantic.astype(np.int64)]
    ids = decoded.panoptic_ids.astype(np.int64, copy=True)
    segments = []
    for seg in raw["segments_info"]:
        label = int(lookup[int(seg["category_id"])])
        if label < 0:  # a class left out of the evaluation: its pixels are void, not errors
            ids[ids == int(seg["id"])] = 0
            continue
        segments.append({"id": int(seg["id"]), "category_id": label, "iscrowd": int(seg.get("iscrowd", 0))})
    grounding = [
        (str(g["sentences"][0]), decoded.panoptic_ids == int(g["segment_id"]))
        for g in (raw.get("grounding") or [] if with_grounding else [])
        if g.get("sentences")
    ]
    return _Row(str(raw.get("file_name") or f"{index:06d}"), image, semantic, ids, segments, grounding)


def _load_dataset(dataset: Any, split: str | None) -> Any:
    if isinstance(dataset, datasets.Dataset):
        return dataset
    return load_source(dataset, split=split)


# ----------------------------------------------------------------------------------------------- entry point


def evaluate(  # noqa: PLR0913 (the public signature: one keyword per option)
    model: Any,
    dataset: Any,
    *,
    classes: Sequence[str] | Mapping[str, str] | None = None,
    batch_size: int = 2,
    device: torch.device | str | None = None,
    tasks: Sequence[str] | str = DEFAULT_TASKS,
    image_size: int | Sequence[int] | None = None,
    grounding: bool = False,
    progress: bool = True,
    split: str | None = None,
    max_images: int | None = None,
    num_examples: int = 4,
    distributed: bool = False,
) -> EvalResult:
    """Score ``model`` on ``dataset``.

    Args:
        model: a :class:`~seemadapt.model.SEEM` (base or with adapters; DDP-wrapped is fine), a model name or
            checkpoint that :func:`seemadapt.hub.load_model` understands, or any object with a ``predict`` method of
            the same signature (and ``ground`` for grounding).
        dataset: anything :func:`seemadapt.data.load_source` accepts: a contract ``Dataset``, a folder, a Hub id, or
            a list of sources (mixed by class name).
        classes: the classes to prompt and score. ``None``: the dataset's classes. A subset or reordering of the
            dataset's class names: ground truth of the other classes becomes ignore / void. ``{dataset name:
            prompt text}``: prompt with other words.
        batch_size: images per ``predict`` call.
        device: moves the model there first; ``None`` keeps it where it is.
        tasks: any of ``"semantic"``, ``"panoptic"``, ``"instance"`` (COCO mask AP of the thing classes); default
            semantic and panoptic. All come from one forward pass per batch.
        image_size: resize inside the model before the network: the shortest edge (longest at most 1333/800 of
            it), or ``(shortest, longest)``. ``None``: the images' own size. Scoring is always at the original size.
        grounding: also score text grounding (the first sentence of every grounded segment), from the same
            forward pass as the tasks for a SEEM.
        progress: a tqdm bar on the main process.
        split: which split of a multi-split source.
        max_images: score only the first N rows (quick checks).
        num_examples: images kept (with predictions) for :meth:`EvalResult.save`'s overlays.
        distributed: call it on *every* process of an initialised ``torch.distributed`` group (``accelerate
            launch``): each scores every ``world_size``-th row and the sums are all-reduced. Leave it False when
            only one process evaluates (e.g. the main process during training): a collective that the other
            processes never join would hang.

    Returns:
        an :class:`EvalResult`; identical on every process when run distributed.
    """
    tasks = _check_arguments(tasks, grounding, batch_size, max_images)
    sizes = image_size_kwargs(image_size)
    model = _prepare_model(model, grounding, device)
    ds = _load_dataset(dataset, split)
    if len(ds) == 0:
        raise ValueError("evaluate: the dataset has no rows; give at least one annotated image.")
    setup = _Setup.create(ds, classes, tasks, grounding, sizes)
    rank, world = _rank_world() if distributed else (0, 1)
    total = len(ds) if max_images is None else min(len(ds), max_images)
    indices = list(range(rank, total, world))
    start = time.perf_counter()
    # One heap for every batch's masks on CPU (see seemadapt/heap.py).
    with freed_memory_kept(getattr(model, "device", None)):
        examples = _score_rows(model, setup, ds, indices, batch_size, num_examples, progress and rank == 0)
    seconds = time.perf_counter() - start

    count = torch.tensor([float(len(indices))], dtype=torch.float64)
    if world > 1:
        count = sum_across_processes(count)
    metrics = setup.metrics
    result = EvalResult(
        classes=tuple(setup.names),
        semantic=_reduce(metrics.semantic, world),
        panoptic=_reduce(metrics.panoptic, world),
        instance=_reduce(metrics.instance, world),
        grounding=_reduce(metrics.grounding, world),
        num_images=int(count.item()),
        seconds=seconds,
        examples=examples,
    )
    logger.info("evaluated %d images in %.1f s: %s", result.num_images, seconds, _summary(result))
    return result


@dataclass
class _Setup:
    """What one evaluation scores: the prompted classes, the ground-truth lookup, predict options, accumulators."""

    names: list[str]
    thing_classes: list[str]
    categories: list[Any]
    lookup: np.ndarray
    sizes: dict[str, int]
    grounding: bool
    metrics: _Metrics

    @classmethod
    def create(
        cls,
        ds: Any,
        classes: Sequence[str] | Mapping[str, str] | None,
        tasks: tuple[str, ...],
        grounding: bool,
        sizes: dict[str, int],
    ) -> _Setup:
        categories = read_categories(ds)
        names, lookup = _class_lookup(class_names_of(ds), classes)
        isthing = {int(lookup[c.id]): c.isthing for c in categories if lookup[c.id] >= 0}
        thing_classes = [names[k] for k in range(len(names)) if isthing.get(k, False)]
        metrics = _Metrics.create(names, isthing, tasks, grounding)
        return cls(names, thing_classes, categories, lookup, sizes, grounding, metrics)


def _score_rows(
    model: Any,
    setup: _Setup,
    ds: Any,
    indices: list[int],
    batch_size: int,
    num_examples: int,
    progress: bool,
) -> list[EvalExample]:
    """Decode and score the rows ``indices`` of ``ds`` in batches; returns the examples kept for overlays.

    A batch's rows are decoded side by side on :func:`~seemadapt.workers.worker_pool`: PNG decoding releases the
    GIL, and nothing else runs meanwhile (a 480x640 row costs about 12 ms, on one core otherwise).
    """
    subset = ds.select(indices) if len(indices) != len(ds) else ds
    examples: list[EvalExample] = []
    bar = tqdm(total=len(indices), desc="evaluate", unit="img", disable=not progress)
    pending: list[tuple[int, Mapping[str, Any]]] = []

    def decode(item: tuple[int, Mapping[str, Any]]) -> _Row:
        return _decode(indices[item[0]], item[1], setup.categories, setup.lookup, setup.grounding)

    def flush() -> None:
        batch = list(map(decode, pending)) if len(pending) == 1 else list(worker_pool().map(decode, pending))
        pending.clear()
        _score(model, batch, setup, examples, num_examples)
        bar.update(len(batch))

    try:
        for item in iter_raw_rows(subset, _columns(ds), batch_size=max(batch_size, 8)):
            pending.append(item)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
        # The last masks' encoding ends here, before evaluate hands the heap back (malloc_trim and the encoder's
        # mallocs would wait on each other).
        if setup.metrics.instance is not None:
            setup.metrics.instance.settled()
    finally:
        bar.close()
    return examples


def _check_arguments(
    tasks: Sequence[str] | str, grounding: bool, batch_size: Any, max_images: Any
) -> tuple[str, ...]:
    tasks = _check_tasks(tasks)
    if not tasks and not grounding:
        raise ValueError(f"evaluate: nothing to do; give tasks (any of {list(TASKS)}) or grounding=True.")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be a positive int, got {batch_size!r}.")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"evaluate: max_images must be None or a positive int, got {max_images!r}.")
    return tasks


def _prepare_model(model: Any, grounding: bool, device: torch.device | str | None) -> Any:
    """The bare model to call (loaded when given by name), checked and moved to ``device``."""
    if isinstance(model, str):
        model = load_model(model)
    model = _unwrap(model)
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"evaluate: model must have a predict() method (a SEEM), got {type(model).__name__}.")
    if grounding and not callable(getattr(model, "ground", None)):
        raise TypeError("evaluate: grounding=True needs a model with a ground() method (a SEEM).")
    if device is not None and isinstance(model, torch.nn.Module):
        model.to(device)
    return model


def _columns(ds: Any) -> list[str]:
    """The contract columns the evaluation reads (those the dataset has)."""
    return [c for c in COLUMNS if c in ds.column_names]


@dataclass
class _Metrics:
    """The metric accumulators of the requested tasks (``None`` = not evaluated)."""

    semantic: SemanticMetrics | None
    panoptic: PanopticMetrics | None
    instance: InstanceMetrics | None
    grounding: GroundingMetrics | None

    @classmethod
    def create(
        cls, names: list[str], isthing: dict[int, bool], tasks: tuple[str, ...], grounding: bool
    ) -> _Metrics:
        categories = [{"id": k, "name": n, "isthing": isthing.get(k, False)} for k, n in enumerate(names)]
        return cls(
            SemanticMetrics(len(names), names, ignore_index=IGNORE) if "semantic" in tasks else None,
            PanopticMetrics(categories) if "panoptic" in tasks else None,
            InstanceMetrics(categories, encode_in_background=True) if "instance" in tasks else None,
            GroundingMetrics() if grounding else None,
        )

    @property
    def tasks(self) -> list[str]:
        """The prediction tasks scored, in :data:`TASKS` order."""
        return [task for task in TASKS if getattr(self, task) is not None]


def _reduce(metrics: Any, world: int) -> Any:
    if metrics is None:
        return None
    return (metrics.all_reduce() if world > 1 else metrics).compute()


def _summary(result: EvalResult) -> str:
    keys = ("miou", "pq", "ap", "grounding_miou")
    return ", ".join(f"{k} {100 * result.metrics[k]:.2f}" for k in keys if k in result.metrics)


def _predict(
    model: Any,
    images: list[torch.Tensor],
    rows: list[_Row],
    setup: _Setup,
) -> dict[str, list[Any]]:
    """``{task: one result per image}`` for the tasks being scored, plus ``"grounding"`` (one ``ground`` result
    or ``None`` per image) when grounding is scored.

    A :class:`~seemadapt.model.SEEM` gives everything from one forward pass (``predict(task=[...],
    grounding=...)``); any other model with a ``predict`` method is called once per task with a single task name,
    and its ``ground`` once per image with sentences.
    """
    tasks, sizes = setup.metrics.tasks, setup.sizes
    things = {"thing_classes": setup.thing_classes}
    sentences = [[sentence for sentence, _ in row.grounding] for row in rows]
    grounding = setup.metrics.grounding is not None
    if isinstance(model, SEEM):
        if not tasks and not grounding:
            return {}
        extra = {"grounding": sentences} if grounding else {}
        combined = model.predict(images, setup.names, task=tasks, **things, **sizes, **extra)
        combined = _as_list(combined, len(images), "+".join(tasks))
        keys = tasks + (["grounding"] if grounding else [])
        return {key: [output[key] for output in combined] for key in keys}
    outputs: dict[str, list[Any]] = {
        task: _as_list(
            model.predict(images, setup.names, task=task, **(things if task != "semantic" else {}), **sizes),
            len(images),
            task,
        )
        for task in tasks
    }
    if grounding:
        outputs["grounding"] = [
            model.ground(image, texts, **sizes) if texts else None for image, texts in zip(images, sentences)
        ]
    return outputs


def _score(
    model: Any, rows: list[_Row], setup: _Setup, examples: list[EvalExample], num_examples: int
) -> None:
    metrics = setup.metrics
    images = [torch.from_numpy(np.ascontiguousarray(row.image.transpose(2, 0, 1))) for row in rows]
    keep = max(0, min(len(rows), num_examples - len(examples)))
    new = [EvalExample(row.file_name, row.image, row.semantic) for row in rows[:keep]]
    outputs = _predict(model, images, rows, setup)
    if metrics.instance is not None:  # first: the masks encode on the workers while the rest is scored
        for row, output in zip(rows, outputs["instance"]):
            metrics.instance.update(
                output["masks"], output["scores"], output["labels"], row.panoptic, row.segments
            )
    for k, row in enumerate(rows):
        if metrics.semantic is not None:
            labels = outputs["semantic"][k]["labels"]
            metrics.semantic.update(labels, row.semantic)
            if k < keep:
                new[k].semantic_pred = _to_numpy(labels)
        if metrics.panoptic is not None:
            output = outputs["panoptic"][k]
            segments = [
                {"id": int(s["id"]), "category_id": int(s["category_id"])} for s in output["segments_info"]
            ]
            metrics.panoptic.update(output["panoptic_seg"], segments, row.panoptic, row.segments)
            if k < keep:
                new[k].panoptic_seg = _to_numpy(output["panoptic_seg"])
                new[k].segments_info = [dict(s) for s in output["segments_info"]]
        if metrics.grounding is not None and row.grounding:
            predicted = outputs["grounding"][k]["masks"]
            metrics.grounding.update(predicted, np.stack([mask for _, mask in row.grounding]))
    examples.extend(new)
