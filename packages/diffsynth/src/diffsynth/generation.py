"""``generate()``: class names in, a contract ``datasets.Dataset`` out.

Plans (prompt, classes, seed per sample) are fixed first (:mod:`diffsynth.plan`), then drawn in batches by
the :class:`~diffsynth.masker.AttentionMasker`, annotated (:mod:`diffsynth.annotate`) and stored with the
contract Features (:mod:`diffsynth.dataset`). :func:`make_samples` is the pure per-sample step that
sharded, resumable or distributed runners (and engines such as Ray) call.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import transformers
from PIL import Image
from tqdm.auto import tqdm

from diffsynth import __version__
from diffsynth.balance import GenerationPlan, plan_samples
from diffsynth.categories import Category, resolve_categories
from diffsynth.dataset import Sample, to_dataset
from diffsynth.distributed import process_device, process_info
from diffsynth.dit_pipelines import is_dit
from diffsynth.errors import ArgumentError, ModelNotFoundError
from diffsynth.masker import AttentionMasker, MaskerConfig
from diffsynth.pipelines import load_pipeline
from diffsynth.plan import SamplePlan, make_plans, sample_seed
from diffsynth.preflight import check_device, model_load_error
from diffsynth.prompts import class_token_spans, pipeline_tokenizers, prompt_token_ids
from diffsynth.quality import CLIP_SCALE, DEFAULT_CROSS_THRESHOLD, resolve_clip, score_result
from diffsynth.shards import run_sharded

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class GenerationConfig:
    """All arguments of :func:`generate` that describe *what* to draw (YAML-friendly: the CLI reads it).

    ``masker`` holds the attention/mask settings (:class:`~diffsynth.masker.MaskerConfig` fields:
    ``num_inference_steps``, ``guidance_scale``, ``height``, ``width``, ``tau``, ``threshold``,
    ``uncertainty_threshold``, resolutions, step window...).

    Quality (:mod:`diffsynth.quality`): ``with_quality`` stores per-sample scores in a ``quality`` column;
    ``min_quality`` redraws a sample whose overall score is below the bar, up to ``max_attempts`` draws per sample
    (attempt ``a`` of sample ``i`` draws the same prompt with seed ``sample_seed(seed, a * num_images + i)``; the row
    keeps image id ``i``);
    a sample that never passes keeps its best draw (counted as ``below_bar`` in the settings). ``clip_model`` (a Hub
    id or folder of a CLIP model) adds the image-text score. ``plan`` (a :class:`~diffsynth.balance.GenerationPlan`
    or its dict) splits the images over classes and adds per-class prompt variety.
    """

    classes: list[Any]
    num_images: int
    model: str = "tiny"
    prompts: list[str] | None = None
    templates: list[str] | None = None
    classes_per_image: int = 1
    context: list[str] = field(default_factory=list)
    class_weights: dict[str, float] | None = None
    init_images: list[str] | str | None = None
    strength: float = 0.4
    seed: int = 0
    batch_size: int = 1
    background: str | None = "background"
    min_area: float = 0.001
    with_attention: bool = False
    scheduler: str | None = None
    dtype: str | None = None
    device: str | None = None
    masker: dict[str, Any] = field(default_factory=dict)
    with_quality: bool = True
    min_quality: float | None = None
    max_attempts: int = 3
    clip_model: str | None = None
    plan: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.classes, str):
            raise ArgumentError(
                "GenerationConfig.classes must be a list of class names, not one string; wrap it in []."
            )
        if not isinstance(self.num_images, int) or self.num_images <= 0:
            raise ValueError(f"GenerationConfig.num_images must be an int > 0, got {self.num_images!r}.")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ValueError(f"GenerationConfig.batch_size must be an int > 0, got {self.batch_size!r}.")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"GenerationConfig.strength must be in (0, 1], got {self.strength}.")
        if self.init_images is not None and not self.init_images:
            raise ValueError(
                "GenerationConfig.init_images is empty: image-to-image needs at least one image (a list of paths "
                "or a folder); leave it None for text-to-image."
            )
        if self.min_area < 0:
            raise ValueError(f"GenerationConfig.min_area must be >= 0, got {self.min_area}.")
        if self.min_quality is not None and not 0.0 <= float(self.min_quality) <= 1.0:
            raise ValueError(
                f"GenerationConfig.min_quality must be None or an overall score in [0, 1], got {self.min_quality}."
            )
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(
                f"GenerationConfig.max_attempts must be an int >= 1 (draws per sample), got {self.max_attempts!r}."
            )
        if self.plan is not None:
            self.plan = GenerationPlan.from_dict(self.plan).to_dict()
            if self.prompts is not None or self.class_weights is not None:
                raise ValueError(
                    "GenerationConfig.plan builds the prompts and class shares itself; drop `prompts` and "
                    "`class_weights`, or drop `plan`."
                )
        self.masker_config()  # validates the mask settings now, before anything runs

    def masker_config(self, **overrides: Any) -> MaskerConfig:
        known = {f.name for f in dataclasses.fields(MaskerConfig)}
        unknown = sorted(set(self.masker) - known)
        if unknown:
            raise ValueError(
                f"GenerationConfig.masker has unknown keys {unknown}; valid keys: {sorted(known)}."
            )
        return MaskerConfig(**{**self.masker, **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = [c.to_dict() if isinstance(c, Category) else c for c in self.classes]
        return data


def load_init_images(images: Sequence[Any] | str | os.PathLike) -> list[Image.Image]:
    """Open every init image now (a folder, paths, or PIL images), so a bad file fails before any drawing."""
    if isinstance(images, str | os.PathLike):
        folder = Path(images)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"init_images={str(folder)!r} is not a folder; give a folder or a list of images."
            )
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            raise ValueError(
                f"init_images folder {str(folder)!r} holds no images ({sorted(_IMAGE_SUFFIXES)})."
            )
    loaded = []
    for index, item in enumerate(images):
        if isinstance(item, Image.Image):
            loaded.append(item.convert("RGB"))
            continue
        try:
            with Image.open(item) as handle:
                handle.load()
                loaded.append(handle.convert("RGB"))
        except Exception as error:
            raise ValueError(
                f"init_images[{index}] = {str(item)!r} is not a readable image: {error}"
            ) from None
    return loaded


def _settings(config: GenerationConfig, masker: AttentionMasker, model_name: str) -> dict[str, Any]:
    cfg = masker.config
    settings = {
        "model": model_name,
        "pipeline": type(masker.pipe).__name__,
        "mode": "img2img" if config.init_images is not None else "txt2img",
        "strength": config.strength if config.init_images is not None else None,
        "num_images": config.num_images,
        "seed": config.seed,
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "height": masker.size[0],
        "width": masker.size[1],
        "tau": cfg.tau,
        "threshold": cfg.threshold,
        "uncertainty_threshold": cfg.uncertainty_threshold,
        "softmax": cfg.softmax,
        "class_prompt": cfg.class_prompt,
        "step_window": list(cfg.step_window),
        "resolutions": masker.resolutions(),
        "scheduler": type(masker.pipe.scheduler).__name__,
        "templates": config.templates,
        "classes_per_image": config.classes_per_image,
        "context": list(config.context),
        "min_area": config.min_area,
        "versions": {
            "diffsynth": __version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }
    if is_dit(masker.pipe):  # which joint / single blocks, pooled grid and renormalisation made the maps
        settings["dit"] = {
            "joint_blocks": cfg.dit_joint_blocks,
            "single_blocks": cfg.dit_single_blocks,
            "grid": cfg.dit_grid,
            "renormalize": cfg.dit_renormalize,
            "max_sequence_length": masker.sequence,
        }
    if config.plan is not None:
        settings["plan"] = config.plan
    return settings


def _plans(config: GenerationConfig, categories: list[Category], num_init_images: int) -> list[SamplePlan]:
    """Every sample's plan: from the class-balance ``plan`` when given, else from prompts/templates and weights."""
    common: dict[str, Any] = {
        "seed": config.seed,
        "templates": config.templates,
        "classes_per_image": config.classes_per_image,
        "context": config.context,
        "num_init_images": num_init_images,
        "background": config.background,
    }
    if config.plan is not None:
        return plan_samples(config.plan, categories, config.num_images, **common)
    return make_plans(
        categories, config.num_images, prompts=config.prompts, weights=config.class_weights, **common
    )


def run_plans(config: GenerationConfig) -> list[SamplePlan]:
    """Every sample's plan of ``config``, without loading a pipeline: what an engine's driver hands out (the
    :class:`Generator` of each worker makes the same list)."""
    num_init = len(load_init_images(config.init_images)) if config.init_images is not None else 0
    return _plans(config, resolve_categories(config.classes, background=config.background), num_init)


class Generator:
    """A loaded generation run: categories, plans and the masker, ready to draw any subset of samples."""

    def __init__(
        self, config: GenerationConfig, pipeline: Any = None, *, progress: bool = True, clip: Any = None
    ) -> None:
        self.config = config
        self.categories = resolve_categories(config.classes, background=config.background)
        self.init_images = load_init_images(config.init_images) if config.init_images is not None else None
        self.plans = _plans(config, self.categories, len(self.init_images or []))
        self.clip = resolve_clip(clip if clip is not None else config.clip_model)
        self.quality_stats = {"attempts": 0, "rejected": 0, "below_bar": 0, "scored": 0, "overall_sum": 0.0}
        masker_config = config.masker_config(
            progress=config.masker.get("progress", False) and progress,
            background=config.background is not None,
        )
        model = pipeline if pipeline is not None else config.model
        device = config.device
        if device is None and process_info().is_distributed:
            device = process_device()  # one GPU per process under accelerate launch / torchrun
        load = {
            k: v
            for k, v in (("dtype", config.dtype), ("device", device), ("scheduler", config.scheduler))
            if v
        }
        check_device(device)
        if pipeline is not None and load:
            model, load = load_pipeline(pipeline, progress=False, **load), {}
        try:
            self.masker = AttentionMasker(model, masker_config, **load)
        except (
            OSError
        ) as error:  # diffusers / the Hub client: unknown id, offline, a folder without a pipeline
            if isinstance(error, ModelNotFoundError) or pipeline is not None:
                raise
            raise model_load_error(model, error) from error
        self.model_name = (
            config.model
            if pipeline is None
            else getattr(getattr(pipeline, "config", None), "_name_or_path", type(pipeline).__name__)
        )
        self.progress = progress
        self._check_prompts()

    @property
    def target_names(self) -> list[str]:
        """Category names except the background (label value K, after the targets)."""
        names = [c.name for c in self.categories]
        return names[:-1] if self.config.background is not None else names

    def _check_prompts(self) -> None:
        """Fail before drawing: every class must be found in its prompt by the pipeline's tokenizers."""
        tokenizers = pipeline_tokenizers(self.masker.pipe)
        checked: set[tuple[str, tuple[str, ...]]] = set()
        for plan in self.plans:
            key = (plan.prompt, plan.classes)
            if key in checked:
                continue
            checked.add(key)
            if is_dit(self.masker.pipe):
                self.masker.token_spans(plan.prompt, list(plan.classes))  # checks every text encoder's limit
            elif not self.masker.config.class_prompt:
                full = prompt_token_ids(tokenizers[0], plan.prompt, truncate=False)
                if len(full) > 77:
                    raise ValueError(
                        f"prompt {plan.prompt!r} has {len(full)} tokens; CLIP keeps 77, so class tokens may be cut. "
                        "Shorten the prompt or the class names."
                    )
                class_token_spans(tokenizers, plan.prompt, list(plan.classes))

    def settings(self) -> dict[str, Any]:
        settings = _settings(self.config, self.masker, str(self.model_name))
        if self.config.with_quality or self.config.min_quality is not None:
            stats = self.quality_stats
            quality: dict[str, Any] = {
                "overall": "class_coverage * mean(1 - ignore_fraction, confidence, agreement, "
                f"clip({CLIP_SCALE} * clip_score, 0, 1))",
                "cross_threshold": DEFAULT_CROSS_THRESHOLD,
                "clip_model": self.config.clip_model
                or (type(self.clip.model).__name__ if self.clip is not None else None),
                "min_quality": self.config.min_quality,
                "max_attempts": self.config.max_attempts,
            }
            if stats["scored"]:
                quality["mean_overall"] = stats["overall_sum"] / stats["scored"]
            if self.config.min_quality is not None and stats["attempts"]:
                quality.update({k: stats[k] for k in ("attempts", "rejected", "below_bar")})
            settings["quality"] = quality
        return settings

    def make_samples(self, plans: Sequence[SamplePlan]) -> list[Sample]:
        """Draw and annotate ``plans``: a pure function of the plans. With ``min_quality`` a sample below the bar is
        redrawn (same prompt, the seed of index ``attempt * num_images + index``) up to ``max_attempts`` times."""
        samples = self._draw(plans) if self.config.min_quality is None else self._draw_until_good(plans)
        for sample in samples:
            if sample.quality is not None:
                self.quality_stats["scored"] += 1
                self.quality_stats["overall_sum"] += float(sample.quality["overall"] or 0.0)
        return samples

    def _retry_plan(self, plan: SamplePlan, attempt: int) -> SamplePlan:
        """Attempt ``a`` of sample ``i`` draws with the seed of index ``a * num_images + i`` (indices no other
        sample uses); the row keeps ``image_id`` ``i``, so a run still has ids ``0..num_images-1``."""
        if attempt == 0:
            return plan
        index = attempt * self.config.num_images + plan.index
        return dataclasses.replace(plan, seed=sample_seed(self.config.seed, index))

    def _draw_until_good(self, plans: Sequence[SamplePlan]) -> list[Sample]:
        bar = float(self.config.min_quality)  # type: ignore[arg-type]
        slots = list(plans)
        kept: list[Sample | None] = [None] * len(slots)
        best: list[Sample | None] = [None] * len(slots)
        pending = list(range(len(slots)))
        stats = self.quality_stats
        for attempt in range(self.config.max_attempts):
            drawn = self._draw([self._retry_plan(slots[i], attempt) for i in pending])
            stats["attempts"] += len(drawn)
            still = []
            for i, sample in zip(pending, drawn, strict=True):
                score = float(sample.quality["overall"])  # type: ignore[index]
                if score >= bar - 1e-9:
                    kept[i] = sample
                    continue
                stats["rejected"] += 1
                if best[i] is None or score > float(best[i].quality["overall"]):  # type: ignore[union-attr,index]
                    best[i] = sample
                still.append(i)
            pending = still
            if not pending:
                break
        for i in pending:  # never passed: keep the best draw rather than lose the slot
            kept[i] = best[i]
            stats["rejected"] -= 1
            stats["below_bar"] += 1
        if pending:
            warnings.warn(
                f"diffsynth: {len(pending)} sample(s) stayed below min_quality={bar} after {self.config.max_attempts} "
                "draws each; their best draws are kept. Lower min_quality, raise max_attempts, or drop them with "
                "diffsynth.filter.",
                stacklevel=3,
            )
        return kept  # type: ignore[return-value]

    def _draw(self, plans: Sequence[SamplePlan]) -> list[Sample]:
        """Draw and annotate ``plans`` in one pipeline call (one draw each), scoring them when asked."""
        init = None
        if self.init_images is not None:
            init = [self.init_images[p.init_image] for p in plans]  # type: ignore[index]
        results = self.masker(
            [p.prompt for p in plans],
            [list(p.classes) for p in plans],
            [p.seed for p in plans],
            init_images=init,
            strength=self.config.strength,
            categories=self.target_names,
        )
        score = self.config.with_quality or self.config.min_quality is not None
        clip_scores = (
            self.clip([r.image for r in results], [r.prompt for r in results])
            if score and self.clip
            else None
        )
        samples = []
        for k, (plan, result) in enumerate(zip(plans, results, strict=True)):
            soft = None
            if self.config.with_attention and result.soft_maps is not None:
                soft = _global_soft_maps(result, len(self.target_names))
            samples.append(
                Sample.from_label_map(
                    result.image,
                    result.label_map,
                    self.categories,
                    image_id=plan.index,
                    file_name=f"{plan.index:06d}.jpg",
                    prompt=result.prompt,
                    seed=plan.seed,
                    soft_maps=soft,
                    min_area=self.config.min_area,
                )
            )
            if score:
                quality = score_result(result, samples[-1].annotation.semantic)
                if clip_scores is not None:
                    quality = quality.with_clip(clip_scores[k])
                samples[-1].quality = quality.to_dict()
        return samples

    def batches(self, plans: Sequence[SamplePlan] | None = None) -> Iterator[list[SamplePlan]]:
        plans = list(self.plans if plans is None else plans)
        size = self.config.batch_size
        for start in range(0, len(plans), size):
            yield plans[start : start + size]

    def run(self, plans: Sequence[SamplePlan] | None = None) -> list[Sample]:
        plans = list(self.plans if plans is None else plans)
        samples: list[Sample] = []
        with tqdm(total=len(plans), desc="diffsynth", unit="img", disable=not self.progress) as bar:
            for batch in self.batches(plans):
                samples.extend(self.make_samples(batch))
                bar.update(len(batch))
        return samples


def _global_soft_maps(result: Any, num_targets: int):
    """Soft maps laid out over every target category (zeros for classes not prompted in this image)."""
    soft = np.zeros((num_targets, *result.soft_maps.shape[1:]), dtype=np.float32)
    for local, global_id in enumerate(result.class_ids):
        if global_id < num_targets:
            soft[global_id] = result.soft_maps[local]
    return soft


def generate(
    classes: Sequence[str | Category | dict],
    num_images: int,
    model: Any = "tiny",
    *,
    prompts: Sequence[str] | None = None,
    init_images: Sequence[Any] | str | None = None,
    strength: float = 0.4,
    seed: int = 0,
    batch_size: int = 1,
    progress: bool = True,
    **options: Any,
):
    """Draw ``num_images`` annotated images of ``classes`` and return them as a contract ``datasets.Dataset``.

    ``model``: ``"tiny"`` (offline random weights), a Hub id, a local folder, or a loaded diffusers pipeline.
    ``init_images`` (a folder or a list of paths/PIL images) switches to image-to-image at ``strength`` so the
    output stays in your domain. Other options: every :class:`GenerationConfig` field (``templates``,
    ``classes_per_image``, ``context``, ``background``, ``min_area``, ``with_attention``, ``scheduler``,
    ``dtype``/``torch_dtype``, ``device``) and every :class:`~diffsynth.masker.MaskerConfig` field
    (``num_inference_steps``, ``guidance_scale``, ``height``, ``width``, ``tau``, ``threshold``, ...).
    ``output_dir`` writes resumable parquet shards as it goes (see :mod:`diffsynth.shards`); with
    ``engine=diffsynth.ray.RayEngine(...)`` Ray actors draw them (``output_dir`` may then be an fsspec URL).

    Quality and balance: ``min_quality`` (with ``max_attempts``) redraws samples whose overall quality score is
    below the bar, ``with_quality`` stores the scores, ``clip`` adds CLIP's image-text score (a ``(CLIPModel,
    CLIPProcessor)`` pair, a :class:`~diffsynth.quality.ClipScorer`, or a Hub id / folder), and ``plan`` (a
    :class:`~diffsynth.balance.GenerationPlan`, e.g. from :func:`diffsynth.plan_from_metrics`) splits the images over
    classes. See :class:`GenerationConfig`.
    """
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise ArgumentError(
            f"generate(classes={classes!r}): give a list of class names, e.g. [{classes!r}]"
            if isinstance(classes, str)
            else f"generate(classes=...): give a list of class names, got {type(classes).__name__}."
        )
    output_dir = options.pop("output_dir", None)
    sharding = {
        k: options.pop(k)
        for k in ("shard_size", "overwrite", "streaming", "push_to_hub", "engine")
        if k in options
    }
    if sharding and output_dir is None:
        raise TypeError(f"generate(): {sorted(sharding)} need output_dir= (they describe the shard folder).")
    clip = options.pop("clip", None)
    if isinstance(clip, str | os.PathLike):
        options["clip_model"], clip = os.fspath(clip), None
    if "torch_dtype" in options:
        options["dtype"] = options.pop("torch_dtype")
    config_fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    masker_fields = {f.name for f in dataclasses.fields(MaskerConfig)}
    masker_options = {
        k: options.pop(k) for k in list(options) if k in masker_fields and k not in config_fields
    }
    unknown = sorted(set(options) - config_fields)
    if unknown:
        raise TypeError(f"generate() got unknown options {unknown}.")
    pipeline = None if isinstance(model, str | os.PathLike) else model
    config = GenerationConfig(
        classes=list(classes),
        num_images=num_images,
        model=str(model) if pipeline is None else "pipeline",
        prompts=list(prompts) if prompts is not None else None,
        init_images=init_images
        if isinstance(init_images, str | os.PathLike) or init_images is None
        else list(init_images),
        strength=strength,
        seed=seed,
        batch_size=batch_size,
        masker={**options.pop("masker", {}), **masker_options},
        **options,
    )
    return generate_from_config(
        config, pipeline=pipeline, progress=progress, output_dir=output_dir, clip=clip, **sharding
    )


def generate_from_config(
    config: GenerationConfig,
    *,
    pipeline: Any = None,
    progress: bool = True,
    output_dir=None,
    clip: Any = None,
    **sharding: Any,
):
    """:func:`generate` for a ready :class:`GenerationConfig` (the CLI's entry point).

    With ``output_dir``, ``sharding`` options go to :func:`diffsynth.shards.run_sharded` (``shard_size``,
    ``overwrite``, ``streaming``, ``push_to_hub``); non-main processes of a multi-process run get ``None``.
    ``engine`` (e.g. :class:`diffsynth.ray.RayEngine`) runs the shards elsewhere: it is called with the config,
    ``output_dir`` and the other arguments, and loads the pipelines itself.
    """
    engine = sharding.pop("engine", None)
    if engine is not None:
        if output_dir is None:
            raise TypeError("generate(): engine= needs output_dir= (the engine writes shards there).")
        return engine(config, output_dir, pipeline=pipeline, clip=clip, progress=progress, **sharding)
    generator = Generator(config, pipeline, progress=progress, clip=clip)
    if output_dir is not None:
        return run_sharded(generator, output_dir, **sharding)
    samples = generator.run()
    return to_dataset(
        samples,
        generator.categories,
        generator.settings(),
        with_attention=config.with_attention,
        with_quality=config.with_quality,
    )
