"""The training loop: SEEM + adapters + SEEM's losses on accelerate (one process, DDP, mixed precision).

One optimizer step = ``grad_accum`` micro-batches; each micro-batch is::

    mapper dicts -> SEEM.forward_train(images, class names, grounding texts)   # through the DDP wrapper
                 -> targets (labels, masks padded to the padded input, grounding embeddings from the frozen
                    text encoder) -> SEEMCriterion -> NaN/inf guard -> accelerator.backward

then gradient-norm clipping, the optimizer and the scheduler. What keeps it fast and correct:

* **Class prompts come from a cache.** The text encoder is frozen, so every (class, template) embedding is computed
  once per class list and each step draws one template per class from that cache
  (:meth:`~seemadapt.model.language.LanguageEncoder.class_embeddings`, mode ``"train"``). The official loop encoded
  every class prompt on every step, which was most of its step time. The trainer refuses a trainable text encoder.
* **Frozen parts stay outside autograd.** Parameters that do not train have ``requires_grad=False``; autograd
  records nothing for ops none of whose inputs require grad, so a frozen backbone and pixel decoder run without a
  graph (no saved activations) while backbone adapters still get gradients through the frozen blocks.
  :func:`~seemadapt.adapters.set_train_mode` replaces ``model.train()`` (frozen parts in eval mode: no stochastic
  depth or dropout where nothing can adapt to it).
* **Everything random is a function of the seed and the step**: data order and augmentations (per sample), the
  prompt templates and the loss points (per step and process), so a resumed run repeats the uninterrupted one.
  accelerate's ``save_state``/``load_state`` restores model, optimizer, scheduler, gradient scaler and RNGs; the
  trainer adds the step counter, the history and the best score (``trainer_state.json``, written last, marks a
  checkpoint complete). Checkpoints hold only the trained and adapter weights, not the frozen base.
* **The data loader shards itself.** :class:`~seemadapt.data.EpochSampler` gives each process its share of a
  seeded per-epoch permutation and the loader batches consecutive indices in the main process, so batches do not
  depend on ``num_workers`` and resuming skips exactly the consumed samples. That is why the loader is not passed
  through ``accelerator.prepare`` (which would shard it a second time).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.train.config import TrainConfig
from seemadapt.train.criterion import SEEMCriterion
from seemadapt.train.optim import LRSchedule, build_optimizer, build_scheduler

if TYPE_CHECKING:
    from seemadapt.adapters import AdapterReport
    from seemadapt.model.seem import SEEM
    from seemadapt.train.run import Run

__all__ = ["NonFiniteLossError", "TrainState", "Trainer", "build_targets", "find_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
BEST_DIR = "best"
REPORT_DIR = "report"
_LOSS_NAMES = (
    "loss_mask_ce",
    "loss_mask_bce",
    "loss_mask_dice",
    "loss_grounding_ce",
    "loss_grounding_bce",
    "loss_grounding_dice",
    "loss_spatial_ce",
    "loss_spatial_bce",
    "loss_spatial_dice",
)


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; the message names the terms and the step."""


@dataclass
class TrainState:
    """What the trainer adds to accelerate's checkpoint: counters, the history and the best evaluation."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    best_metric: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_metric": self.best_metric,
            "history": self.history,
            "eval_history": self.eval_history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: data[k] for k in cls().to_dict() if k in data})


# ---------------------------------------------------------------------- targets


def _pad_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad ``[N, h, w]`` masks bottom/right to ``size`` (as the images are padded)."""
    height, width = masks.shape[-2:]
    if (height, width) == tuple(size):
        return masks
    if height > size[0] or width > size[1]:
        raise ValueError(f"masks of {height}x{width} do not fit the padded input {size[0]}x{size[1]}.")
    return F.pad(masks, (0, size[1] - width, 0, size[0] - height))


def build_targets(
    batch: Sequence[dict[str, Any]],
    outputs: dict[str, Any],
    device: torch.device,
    grounding: bool = True,
) -> list[dict[str, Any]]:
    """:class:`~seemadapt.train.matcher.SEEMTarget` dicts from :class:`~seemadapt.data.SEEMTrainMapper` outputs.

    Masks are zero-padded to ``outputs["padded_size"]``; grounding targets take the EOT embeddings the model
    computed for the texts (``outputs["grounding_class_embs"]``) and the mapper's hashes (identical targets share
    one: same sentence, or same class in class mode). An image whose grounding has no mask (the mapper's
    ``["none"]``) has ``grounding_masks=None`` and is left out of the grounding losses.
    """
    size = tuple(outputs["padded_size"])
    targets = []
    for b, record in enumerate(batch):
        instances = record["instances"]
        masks = instances.gt_masks
        masks = getattr(masks, "tensor", masks)
        target: dict[str, Any] = {
            "labels": instances.gt_classes.to(device=device, dtype=torch.long),
            "masks": _pad_masks(masks.to(device), size),
        }
        if grounding:
            g = record["groundings"]
            g_masks = g["masks"]
            has = g_masks is not None and len(g_masks) > 0
            target["grounding_masks"] = _pad_masks(g_masks.to(device), size) if has else None
            embs = outputs["grounding_class_embs"][b]
            if has and (embs is None or len(embs) != len(g_masks)):
                raise ValueError(
                    f"image {record.get('file_name', b)}: {len(g_masks)} grounding masks but "
                    f"{0 if embs is None else len(embs)} grounding texts were encoded."
                )
            target["grounding_class_embs"] = embs
            target["grounding_hash"] = torch.as_tensor(g["hash"], dtype=torch.long)
            target["grounding_mode"] = g["mode"]
        targets.append(target)
    return targets


def _term_totals(losses: dict[str, Tensor]) -> dict[str, float]:
    """Weighted losses summed over the prediction layers, by term (``loss_mask_ce`` = sum of ``loss_mask_ce_*``)."""
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).cpu().tolist()  # one sync
    totals: dict[str, float] = {}
    for name, value in zip(losses, values):
        base = name.rsplit("_", 1)[0]
        totals[base] = totals.get(base, 0.0) + value
    return totals


_CHECKED_OUTPUTS = ("pred_logits", "pred_masks", "pred_gmasks", "pred_gtexts")


def _non_finite_outputs(outputs: dict[str, Any]) -> list[str]:
    """Names of prediction tensors (final and auxiliary layers) holding NaN or inf."""
    layers = [("", outputs), *((f"aux {i} ", aux) for i, aux in enumerate(outputs.get("aux_outputs") or []))]
    return [
        f"{prefix}{key}"
        for prefix, layer in layers
        for key in _CHECKED_OUTPUTS
        if isinstance(layer.get(key), Tensor) and not torch.isfinite(layer[key].detach()).all()
    ]


def _seed_of(*values: int) -> int:
    """A 63-bit seed from integers (seed, step, micro-batch, process): independent streams per combination."""
    return int(
        np.random.SeedSequence([int(v) & (2**63 - 1) for v in values]).generate_state(1, np.uint64)[0] >> 1
    )


# ---------------------------------------------------------------------- checkpoints


def _checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints (``trainer_state.json`` present), oldest first."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[-1]))


def find_checkpoint(output_dir: str | Path, resume_from: str) -> Path | None:
    """The checkpoint folder ``resume_from`` names: ``"latest"`` (``None`` when there is none yet) or a folder."""
    if resume_from == "latest":
        found = _checkpoint_dirs(Path(output_dir))
        return found[-1] if found else None
    path = Path(resume_from).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"TrainConfig.resume_from={resume_from!r} is not a complete seemadapt checkpoint (no {STATE_FILE}); "
            f"pass 'latest' or a folder like {Path(output_dir) / CHECKPOINTS / 'step_00000100'}."
        )
    return path


# ---------------------------------------------------------------------- data


class _MappedDataset(torch.utils.data.Dataset):
    """``mapper(dataset[i])``: the mapping runs in the loader's workers."""

    def __init__(self, dataset: torch.utils.data.Dataset, mapper: Any) -> None:
        self.dataset = dataset
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.dataset[index])


class _SkipSampler(torch.utils.data.Sampler):
    """The first ``skip`` indices of ``sampler`` left out (resuming mid-stream)."""

    def __init__(self, sampler: torch.utils.data.Sampler, skip: int) -> None:
        self.sampler = sampler
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


def _flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) metrics mapping as ``{"a/b": float}``."""
    out: dict[str, float] = {}
    if hasattr(metrics, "to_dict") and not isinstance(metrics, dict):
        metrics = metrics.to_dict()
    if not isinstance(metrics, dict):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_metrics(value, name + "/"))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float | np.integer | np.floating) or (
            isinstance(value, Tensor) and value.numel() == 1
        ):
            out[name] = float(value)
    return out


def pick_metric(metrics: dict[str, float], wanted: str) -> str | None:
    """The key of ``metrics`` that ``wanted`` names: exact, else the shortest key whose last part matches it
    (case-insensitive; ``"miou"`` finds ``"semantic/mIoU"``)."""
    if wanted in metrics:
        return wanted
    low = wanted.lower()
    hits = [k for k in metrics if k.lower().replace("-", "_").split("/")[-1] in (low, f"semantic_{low}")]
    hits += [k for k in metrics if k.lower().endswith(f"/{low}") and k not in hits]
    return min(hits, key=len) if hits else None


# ---------------------------------------------------------------------- trainer


class Trainer:
    """Fine-tunes a SEEM model whose adapter placement is already applied.

    Args:
        model: a :class:`~seemadapt.model.seem.SEEM` after :func:`~seemadapt.adapters.apply_adapters`.
        train: training data: a registered detectron2 dataset name, or anything
            :func:`seemadapt.data.register` accepts (Dataset, folder, Hub id, list of sources to mix).
        config: the run's :class:`TrainConfig`.
        eval: optional evaluation data (anything :func:`seemadapt.evaluate.evaluate` accepts); its categories are
            aligned to the training classes by name.
        classes: the class list (order = contiguous ids); default: the training data's.
        train_split, eval_split: splits to take from DatasetDicts / Hub repos.
        base_model: a description of the starting weights, recorded with saved adapters.
    """

    def __init__(
        self,
        model: SEEM,
        train: Any,
        config: TrainConfig | None = None,
        *,
        eval: Any = None,
        classes: Sequence[str] | None = None,
        train_split: str | None = "train",
        eval_split: str | None = "validation",
        base_model: str | None = None,
    ) -> None:
        from seemadapt.adapters import adapter_report

        self.config = config if config is not None else TrainConfig()
        self.model = model
        self.report: AdapterReport = adapter_report(model)
        self.config = self.config.with_default_lr(self.report.placement)
        text = [n for n in self.report.trainable if self.report.group_of.get(n) == "language encoder"]
        if text or any(p.requires_grad for p in model.language_encoder.parameters()):
            raise ValueError(
                "Trainer: the text encoder must stay frozen (its class-prompt embeddings are cached); "
                "re-apply the placement to a fresh model without selecting 'sem_seg_head.predictor.lang_encoder'."
            )
        self.base_model = base_model or getattr(model.config, "name", "seem")
        self._train_source = train
        self._eval_source = eval
        self._classes_arg = list(classes) if classes is not None else None
        self.train_split = train_split
        self.eval_split = eval_split
        self.state = TrainState()
        self.output_dir = Path(self.config.output_dir)
        self.report_dir = self.output_dir / REPORT_DIR
        self.eval_result: Any = None
        self.last_metrics: dict[str, float] = {}
        self._last_eval_step: int | None = None
        self._accelerator: Any = None

    # ------------------------------------------------------------------ set-up

    def _make_accelerator(self) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        config = self.config
        log_with = config.tracker
        if log_with == "wandb":
            from accelerate.utils import is_wandb_available

            if not is_wandb_available():
                raise ImportError(
                    "TrainConfig.tracker='wandb' needs the wandb package (pip install wandb); "
                    "or use tracker='tensorboard' or tracker=None."
                )
        project = ProjectConfiguration(
            project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
        )
        return Accelerator(
            mixed_precision=config.resolved_mixed_precision(),
            gradient_accumulation_steps=config.grad_accum,
            cpu=not torch.cuda.is_available(),
            log_with=log_with,
            project_config=project,
            step_scheduler_with_optimizer=False,
            # Interactive-only decoder parameters train with the "full head" but get no gradient without spatial
            # prompts; DDP must be told that some parameters may go unused.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )

    def _prepare_data(self, accelerator: Any) -> None:
        from seemadapt._detectron2 import DatasetCatalog, MetadataCatalog
        from seemadapt.data import EpochDataset, SEEMTrainMapper, register
        from seemadapt.data.register import registered_thing_classes

        config = self.config
        source = self._train_source
        if isinstance(source, str) and source in DatasetCatalog.list():
            name = source
        else:
            source = self._aligned(source, self.train_split)
            with accelerator.main_process_first():
                name = register(
                    source,
                    "seemadapt_train",
                    split=self.train_split,
                    cache_dir=self._cache_dir(),
                    overwrite=True,
                )
        self.train_name = name
        names = list(MetadataCatalog.get(name).stuff_classes)
        if self._classes_arg is not None and names != self._classes_arg:
            raise ValueError(
                f"Trainer: classes {self._classes_arg} differ from the registered dataset's {names}; pass the "
                "data itself (not a registered name) to have it aligned to the classes."
            )
        self.classes = names
        self.thing_classes = registered_thing_classes(name)
        if self._eval_source is not None:
            self.eval_data = self._aligned(self._eval_source, self.eval_split, names)
        else:
            self.eval_data = None
        records = DatasetCatalog.get(name)
        self.num_samples = len(records)
        self.mapper = SEEMTrainMapper(
            image_size=config.image_size,
            min_scale=config.min_scale,
            max_scale=config.max_scale,
            flip=config.flip,
            max_grounding=config.max_grounding,
            class_names=names,
            seed=config.seed,
        )
        self._records = EpochDataset(records)

    def _cache_dir(self) -> str | None:
        if self.config.cache_dir is None:
            return None
        return str(Path(self.config.cache_dir) / "datasets")

    def _aligned(self, source: Any, split: str | None, classes: Sequence[str] | None = None) -> Any:
        """``source`` loaded as a contract Dataset whose class order is ``classes`` (or the classes argument)."""
        from seemadapt.data import class_names_of, load_source, mix

        wanted = list(classes) if classes is not None else self._classes_arg
        dataset = load_source(source, split=split)
        if wanted is not None and class_names_of(dataset) != wanted:
            dataset = mix([dataset], split=split, classes=wanted, cache_dir=self.config.cache_dir)
        return dataset

    def _loader(self, start_step: int, num_processes: int) -> Iterator[list[dict]]:
        from seemadapt.data import EpochSampler, trivial_batch_collator

        config = self.config
        sampler = EpochSampler(len(self._records), seed=config.seed)
        consumed = start_step * config.grad_accum * config.batch_size
        batches = torch.utils.data.BatchSampler(
            _SkipSampler(sampler, consumed), config.batch_size, drop_last=True
        )
        loader = torch.utils.data.DataLoader(
            _MappedDataset(self._records, self.mapper),
            batch_sampler=batches,
            num_workers=config.num_workers,
            collate_fn=trivial_batch_collator,
            persistent_workers=config.num_workers > 0,
        )
        return iter(loader)

    # ------------------------------------------------------------------ checkpoint hooks

    def _checkpoint_keys(self) -> set[str]:
        from seemadapt.adapters import adapter_state_dict

        return set(adapter_state_dict(self.model))

    @staticmethod
    def _strip(key: str) -> str:
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        return key

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        keep = self._checkpoint_keys()
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if self._strip(k) in keep}

    def _load_hook(self, models: list, input_dir: str) -> None:
        from safetensors import safe_open

        path = Path(input_dir) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {input_dir} has no model.safetensors; it is not a seemadapt checkpoint."
            )
        with safe_open(str(path), framework="pt") as handle:
            saved = {self._strip(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        expected = self._checkpoint_keys()
        missing, unexpected = sorted(expected - saved), sorted(saved - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {input_dir} does not match this model and placement: {len(missing)} weights missing "
                f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}). Resume with the same "
                "model and strategy, or start a new output_dir."
            )

    # ------------------------------------------------------------------ the run

    def train(self) -> Run:
        """Run the training; returns a :class:`~seemadapt.train.run.Run`."""
        from accelerate.utils import set_seed

        from seemadapt.adapters import set_train_mode

        config = self.config
        accelerator = self._make_accelerator()
        self._accelerator = accelerator
        set_seed(config.seed)
        self._prepare_data(accelerator)
        num_processes = accelerator.num_processes
        self.total_steps = config.total_steps(self.num_samples, num_processes)
        self.steps_per_epoch = config.steps_per_epoch(self.num_samples, num_processes)
        eval_every = self.steps_per_epoch if config.eval_every is None else config.eval_every
        save_every = self.steps_per_epoch if config.save_every is None else config.save_every

        model = self.model
        optimizer = build_optimizer(model, config, self.report.group_of)
        scheduler = build_scheduler(optimizer, config, self.total_steps)
        criterion = SEEMCriterion(config.criterion)
        prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.model = accelerator.unwrap_model(prepared)
        criterion.to(accelerator.device)
        set_train_mode(self.model, True)
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

        if config.resume_from is not None:
            checkpoint = find_checkpoint(self.output_dir, config.resume_from)
            if checkpoint is not None:
                accelerator.load_state(str(checkpoint), strict=False)
                self.state = TrainState.from_dict(json.loads((checkpoint / STATE_FILE).read_text()))
                # The current config decides the run length (a resumed run may be extended).
                for schedule in scheduler.scheduler.lr_lambdas:
                    if isinstance(schedule, LRSchedule):
                        schedule.__dict__.update(LRSchedule(config, self.total_steps).__dict__)
                accelerator.step = self.state.step * config.grad_accum
                accelerator.print(f"Resumed from {checkpoint} at step {self.state.step}.")
            else:
                accelerator.print(f"No checkpoint in {self.output_dir / CHECKPOINTS}; starting from step 0.")

        if config.tracker is not None:
            accelerator.init_trackers(config.project_name, config=_tracker_config(config))
        try:
            self._fit(accelerator, prepared, optimizer, scheduler, criterion, eval_every, save_every)
            if self.eval_data is not None:  # e.g. resumed from the final checkpoint: still report the scores
                self._evaluate(accelerator)
        finally:
            # Not accelerator.end_training(): it also destroys the process group, which the caller may still use.
            for tracker in accelerator.trackers:
                tracker.finish()
        set_train_mode(self.model, False)
        return self._finish(accelerator)

    def _fit(self, accelerator, prepared, optimizer, scheduler, criterion, eval_every, save_every) -> None:
        from tqdm.auto import tqdm

        config = self.config
        params = [p for p in prepared.parameters() if p.requires_grad]
        batches = self._loader(self.state.step, accelerator.num_processes)
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.step,
            desc="fine-tuning",
            disable=not (accelerator.is_main_process and config.progress),
            dynamic_ncols=True,
        )
        window: list[dict[str, float]] = []
        start = self.state.step
        while self.state.step < self.total_steps:
            step = self.state.step
            began = time.perf_counter()
            totals: dict[str, float] = {}
            loss_sum = 0.0
            grad_norm = None
            data_time = 0.0
            for micro in range(config.grad_accum):
                fetched = time.perf_counter()
                batch = next(batches)
                data_time += time.perf_counter() - fetched
                with accelerator.accumulate(prepared):
                    losses = self._losses(accelerator, prepared, criterion, batch, step, micro)
                    loss = criterion.total(losses)
                    self._guard(accelerator, loss, losses, batch, step, micro)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.clip > 0:
                        grad_norm = accelerator.clip_grad_norm_(params, config.clip)
                        self._guard_grad(grad_norm, step)
                    optimizer.step()
                    if accelerator.sync_gradients and not optimizer.step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_sum += float(loss.detach()) / config.grad_accum
                for name, value in _term_totals(losses).items():
                    totals[name] = totals.get(name, 0.0) + value / config.grad_accum
            self.state.step = step + 1
            record = {"loss": loss_sum, **totals, "time": time.perf_counter() - began, "data_time": data_time}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            window.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}")
            done = self.state.step
            last = done == self.total_steps
            if done % config.log_every == 0 or last or done == start + 1:
                self._log(accelerator, window, scheduler)
                window = []
            if self.eval_data is not None and ((eval_every and done % eval_every == 0) or last):
                self._evaluate(accelerator)
            if (save_every and done % save_every == 0) or last:
                self._save_checkpoint(accelerator)
        bar.close()

    def _losses(self, accelerator, prepared, criterion, batch, step: int, micro: int) -> dict[str, Tensor]:
        config = self.config
        device = accelerator.device
        rank = accelerator.process_index
        images = [record["image"].to(device) for record in batch]
        grounding = [record["groundings"]["texts"] for record in batch] if config.grounding else None
        rng = random.Random(_seed_of(config.seed, step, micro, rank, 1))
        generator = torch.Generator().manual_seed(_seed_of(config.seed, step, micro, rank, 2))
        spatial = gt_spatial = None
        if config.spatial:
            from seemadapt.model.interactive import prepare_spatial_training

            spatial, gt_spatial = prepare_spatial_training(
                accelerator.unwrap_model(prepared),
                images,
                [record["instances"] for record in batch],
                max_candidate=config.spatial_max_candidate,
                max_iter=config.spatial_max_iter,
                generator=torch.Generator().manual_seed(_seed_of(config.seed, step, micro, rank, 3)),
            )
        outputs = prepared(images, self.classes, grounding, rng=rng, spatial=spatial)
        bad = _non_finite_outputs(outputs)
        if bad:  # the matcher cannot run on NaN; let the (collective) guard stop every process with the names
            return {f"output {name}": torch.tensor(math.nan, device=device) for name in bad}
        targets = build_targets(batch, outputs, device, grounding=config.grounding)
        if gt_spatial is not None:
            for target, masks in zip(targets, gt_spatial, strict=True):
                target["gt_spatial_masks"] = masks
        return criterion(outputs, targets, logit_scale=outputs["logit_scale"], generator=generator)

    def _guard(
        self, accelerator, loss: Tensor, losses: dict[str, Tensor], batch, step: int, micro: int
    ) -> None:
        """Stop on a non-finite loss, on every process together (so none waits in a collective forever)."""
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if accelerator.num_processes > 1:
            finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
        if bool(finite.item() == 1.0):
            return
        bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v.detach()).all()}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            where = f"non-finite loss terms: {terms}"
        elif torch.isfinite(loss.detach()):
            where = "the loss of another process is not finite"
        else:
            where = f"the total loss is {float(loss.detach())} (sum overflow)"
        files = [str(r.get("file_name", "?")) for r in batch]
        checkpoints = _checkpoint_dirs(self.output_dir)
        last = f" The last checkpoint is {checkpoints[-1]}." if checkpoints else ""
        raise NonFiniteLossError(
            f"Training stopped at step {step + 1} (micro-batch {micro}, process {accelerator.process_index}): "
            f"{where}. Images: {files}. Try a lower TrainConfig.lr, keep TrainConfig.clip > 0, use "
            f"mixed_precision 'bf16' or 'no' instead of 'fp16', and check those images' annotations.{last}"
        )

    def _guard_grad(self, grad_norm: Any, step: int) -> None:
        if self.config.resolved_mixed_precision() == "fp16":
            return  # the gradient scaler skips such steps by design
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            raise NonFiniteLossError(
                f"Training stopped at step {step + 1}: the gradient norm is {float(grad_norm)} although the loss is "
                "finite. Try a lower TrainConfig.lr or mixed_precision='no'."
            )

    # ------------------------------------------------------------------ logging, evaluation, saving

    def _log(self, accelerator, window: list[dict[str, float]], scheduler) -> None:
        keys = dict.fromkeys(k for record in window for k in record)
        values = {k: statistics.fmean(r[k] for r in window if k in r) for k in keys}
        if accelerator.num_processes > 1:
            names = sorted(k for k in values if k.startswith("loss"))
            packed = torch.tensor([values[k] for k in names], device=accelerator.device, dtype=torch.float64)
            packed = accelerator.reduce(packed, reduction="mean")
            values.update(dict(zip(names, packed.tolist())))
        values["lr"] = float(scheduler.get_last_lr()[0])
        record = {"step": self.state.step, **values}
        self.state.history.append(record)
        if self.config.tracker is not None:
            accelerator.log({f"train/{k}": v for k, v in values.items()}, step=self.state.step)

    def _evaluate(self, accelerator) -> None:
        from seemadapt.adapters import set_train_mode

        step = self.state.step
        if self._last_eval_step == step:
            return
        self._last_eval_step = step
        if accelerator.is_main_process:
            from seemadapt.evaluate import evaluate

            config = self.config
            result = evaluate(
                self.model,
                self.eval_data,
                classes=self.classes,
                batch_size=config.eval_batch_size,
                device=accelerator.device,
                tasks=config.eval_tasks,
                image_size=config.eval_image_size,
                progress=False,
            )
            set_train_mode(self.model, True)
            metrics = _flatten_metrics(getattr(result, "metrics", result))
            self.eval_result = result
            self.last_metrics = metrics
            self.state.eval_history.append({"step": step, **metrics})
            key = pick_metric(metrics, config.best_metric)
            if key is None:
                logger.warning(
                    "best_metric %r is not among the evaluation metrics %s; the best checkpoint is not tracked.",
                    config.best_metric,
                    sorted(metrics),
                )
            elif math.isfinite(metrics[key]):
                self.state.history.append({"step": step, f"eval_{config.best_metric}": metrics[key]})
                if self.state.best_score is None or metrics[key] > self.state.best_score:
                    self.state.best_score, self.state.best_step, self.state.best_metric = (
                        metrics[key],
                        step,
                        key,
                    )
                    self._save_adapters(self.output_dir / BEST_DIR, metrics)
            if config.tracker is not None:
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            summary = ", ".join(f"{k}={v:.4f}" for k, v in list(metrics.items())[:6])
            accelerator.print(f"step {step}: {summary}")
        accelerator.wait_for_everyone()

    def _save_adapters(self, folder: Path, metrics: dict[str, float] | None = None) -> Path:
        """Adapter weights + placement (+ metrics) into ``folder`` via :func:`seemadapt.hub.save_adapters`."""
        from seemadapt.train.run import save_adapter_folder

        return save_adapter_folder(
            self.model,
            folder,
            placement=self.report.placement,
            base_model=self.base_model,
            classes=self.classes,
            thing_classes=self.thing_classes,
            metrics=metrics,
            config=self.config.to_dict(),
            datasets=self._dataset_names(),
        )

    def _dataset_names(self) -> list[Any]:
        """The training sources that are names (Hub ids end up in the model card)."""
        sources = self._train_source if isinstance(self._train_source, list | tuple) else [self._train_source]
        return [s for s in sources if isinstance(s, str)]

    def _save_checkpoint(self, accelerator) -> None:
        folder = self.output_dir / CHECKPOINTS / f"step_{self.state.step:08d}"
        if (folder / STATE_FILE).is_file():
            return
        accelerator.wait_for_everyone()
        accelerator.save_state(str(folder))
        if accelerator.is_main_process:
            (folder / STATE_FILE).write_text(json.dumps(self.state.to_dict(), indent=1))
            for old in _checkpoint_dirs(self.output_dir)[: -self.config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _finish(self, accelerator) -> Run:
        from seemadapt.train.run import Run

        run = Run(
            model=self.model,
            placement=self.report.placement,
            classes=list(self.classes),
            thing_classes=list(self.thing_classes),
            metrics=dict(self.last_metrics),
            history=list(self.state.history),
            eval_history=list(self.state.eval_history),
            config=self.config,
            base_model=self.base_model,
            output_dir=self.output_dir,
            report_dir=self.report_dir,
            best_step=self.state.best_step,
            best_score=self.state.best_score,
            best_dir=(self.output_dir / BEST_DIR) if self.state.best_step is not None else None,
            eval_result=self.eval_result,
            report=self.report,
            datasets=self._dataset_names(),
        )
        if accelerator.is_main_process:
            run.write_report()
        accelerator.wait_for_everyone()
        return run


def _tracker_config(config: TrainConfig) -> dict[str, Any]:
    """Scalars only (TensorBoard's hparams accept int, float, str, bool)."""
    flat: dict[str, Any] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}{k}.")
        elif value is None:
            flat[prefix[:-1]] = "None"
        elif isinstance(value, bool | int | float | str):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)

    walk(config.to_dict(), "")
    return flat
