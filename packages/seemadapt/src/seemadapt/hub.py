"""Adapter files, model cards and the Hub: save, load and push the weights a fine-tuning run adds to SEEM.

An adapter folder (or Hub model repo) holds only what fine-tuning changed, next to a pointer to the base checkpoint:

* ``adapter_model.safetensors``: :func:`seemadapt.adapters.adapter_state_dict` (inserted adapter modules, LoRA
  weights and every parameter the placement trains, e.g. the whole head for ``full-head`` strategies), under the
  model's own state-dict names;
* ``seemadapt_config.json`` (``"format": "seemadapt-adapters"``): the placement, the base checkpoint id, the base
  model's :class:`~seemadapt.model.SEEMConfig` (to refuse a base of another geometry), the classes, metrics, the
  training config, library versions, trainable-parameter counts and a fingerprint of the frozen base weights;
* ``lora/adapter_config.json`` + ``lora/adapter_model.safetensors`` when the placement uses LoRA: peft's own layout
  (:func:`seemadapt.adapters.save_lora`), so peft tools can read the LoRA part; :func:`load_adapters` reads the
  top-level file, which holds the LoRA weights too. No ``adapter_config.json`` sits at the top level: the Hub would
  parse it as a peft config;
* ``README.md``: a model card (``library_name: seemadapt``, ``base_model``, ``pipeline_tag: image-segmentation``,
  tags, datasets, license; placement table, metrics, usage).

Tokens go to ``huggingface_hub`` only: they are never logged, written into a file or put into an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import HfApi, snapshot_download

if TYPE_CHECKING:
    from torch import nn

    from seemadapt.adapters.placement import AdapterPlacement
    from seemadapt.model.seem import SEEM

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterMismatchError",
    "load_adapters",
    "load_model",
    "push_adapters",
    "read_adapter_config",
    "render_model_card",
    "resolve_adapter_folder",
    "save_adapters",
]

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "seemadapt_config.json"
ADAPTER_FORMAT = "seemadapt-adapters"
LORA_FOLDER = "lora"
CARD_NAME = "README.md"
DOWNLOAD_PATTERNS = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, f"{LORA_FOLDER}/*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
#: SEEMConfig fields that do not change the weights' shapes or meaning (training and inference settings).
_NOT_GEOMETRY = frozenset(
    {
        "name",
        "num_classes",
        "no_object_weight",
        "seed",
        "backbone.drop_path_rate",
        "decoder.object_mask_threshold",
        "decoder.overlap_threshold",
    }
)
_FINGERPRINT_TENSORS = 16
_PRESET_TITLES = {
    "focalt": "SEEM v1, FocalNet-T",
    "focall": "SEEM v1, FocalNet-L",
    "tiny": "tiny SEEM (tests)",
}


class AdapterMismatchError(ValueError):
    """Adapters that do not fit the model they are loaded into (another geometry, or a model with adapters)."""


# ---------------------------------------------------------------------------------------------- config file


@dataclass
class AdapterConfig:
    """The content of ``seemadapt_config.json`` (see the module docstring)."""

    placement: dict[str, Any]
    base_model: str
    model_config: dict[str, Any]
    classes: list[str]
    thing_classes: list[str] = field(default_factory=list)
    strategy: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    parameters: dict[str, dict[str, int]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    base_fingerprint: str | None = None
    dtype: str = "float32"
    license: str = "apache-2.0"

    @property
    def config_name(self) -> str:
        return str(self.model_config.get("name", "custom"))

    def adapter_placement(self) -> AdapterPlacement:
        from seemadapt.adapters.placement import AdapterPlacement

        return AdapterPlacement.from_dict(dict(self.placement))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": ADAPTER_FORMAT,
            "base_model": self.base_model,
            "config_name": self.config_name,
            "strategy": self.strategy,
            "placement": self.placement,
            "classes": list(self.classes),
            "thing_classes": list(self.thing_classes),
            "metrics": dict(self.metrics),
            "train_config": self.train_config,
            "datasets": list(self.datasets),
            "parameters": self.parameters,
            "versions": self.versions,
            "base_fingerprint": self.base_fingerprint,
            "dtype": self.dtype,
            "license": self.license,
            "model_config": self.model_config,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> AdapterConfig:
        where = f" in {source}" if source else ""
        if data.get("format") != ADAPTER_FORMAT:
            raise ValueError(
                f"{ADAPTER_CONFIG_NAME}{where} has format {data.get('format')!r}, not {ADAPTER_FORMAT!r}: it is not "
                "a seemadapt adapter folder (a full model saved with SEEM.save_pretrained loads with "
                "SEEM.from_pretrained instead)."
            )
        missing = [key for key in ("placement", "base_model", "model_config", "classes") if key not in data]
        if missing:
            raise ValueError(f"{ADAPTER_CONFIG_NAME}{where} lacks the field(s) {missing}.")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _json_value(value: Any) -> Any:
    """Plain JSON values: dataclasses and configs as dicts, tuples as lists, NaN as None, paths as strings."""
    import dataclasses

    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return _json_value(value.item())
    return str(value)


def _versions(with_peft: bool) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = ["seemadapt", "torch", "safetensors", "huggingface_hub"] + (["peft"] if with_peft else [])
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def _geometry_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    a = _flat("", json.loads(json.dumps(_json_value(saved))), {})
    b = _flat("", json.loads(json.dumps(_json_value(current))), {})
    keys = sorted((set(a) | set(b)) - _NOT_GEOMETRY)
    return [
        f"{key}: adapters {a.get(key)!r}, model {b.get(key)!r}" for key in keys if a.get(key) != b.get(key)
    ]


def _base_fingerprint(model: nn.Module, trained: set[str]) -> str:
    """A hash of a few frozen base tensors (as float32): tells a different base checkpoint of the same geometry."""
    import torch

    state = model.state_dict()
    names = sorted(
        key
        for key in state
        if key not in trained and "lora_" not in key and state[key].is_floating_point() and state[key].numel()
    )
    digest = hashlib.blake2b(digest_size=16)
    for key in names[:_FINGERPRINT_TENSORS]:
        tensor = state[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(key.replace(".base_layer.", ".").encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _dtype_name(model: nn.Module) -> str:
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return str(dtype).replace("torch.", "")


def _class_lists(classes: Any, thing_classes: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Names and thing names from a list of names, ``Category`` objects or ``{name, isthing}`` dicts."""
    if classes is None or isinstance(classes, str):
        raise ValueError(
            "save_adapters: classes must be the list of class names the adapters were trained on."
        )
    names: list[str] = []
    things: list[str] = []
    for item in classes:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, Mapping):
            names.append(str(item["name"]))
            if item.get("isthing"):
                things.append(str(item["name"]))
        elif hasattr(item, "name"):
            names.append(str(item.name))
            if getattr(item, "isthing", False):
                things.append(str(item.name))
        else:
            raise ValueError(f"save_adapters: classes holds {item!r}; give class names (or categories).")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"save_adapters: classes must be unique, non-empty names, got {names}.")
    if thing_classes is not None:
        unknown = [t for t in thing_classes if t not in names]
        if unknown:
            raise ValueError(f"save_adapters: thing_classes {unknown} are not among the classes {names}.")
        things = list(thing_classes)
    return names, things


def _metrics_dict(metrics: Any) -> dict[str, float | None]:
    if metrics is None:
        return {}
    if hasattr(metrics, "metrics") and not isinstance(metrics, Mapping):
        metrics = metrics.metrics  # an EvalResult
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"save_adapters: metrics must be a dict or an EvalResult, got {type(metrics).__name__}."
        )
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        value = _json_value(value)
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[str(key)] = value
    return out


def _strategy_name(placement: AdapterPlacement) -> str | None:
    from seemadapt.adapters.strategies import STRATEGIES, get_strategy

    return next((name for name in STRATEGIES if get_strategy(name) == placement), None)


def _hub_base(base_model: str) -> str | None:
    """The Hub repo id inside a base checkpoint id (``owner/name:file.pt`` -> ``owner/name``), else None."""
    repo = base_model.split(":", 1)[0]
    return repo if _HUB_ID.match(repo) and not Path(base_model).exists() else None


# ---------------------------------------------------------------------------------------------- saving


def save_adapters(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    placement: AdapterPlacement | str | dict[str, Any] | None = None,
    base_model: str,
    classes: Sequence[Any],
    thing_classes: Sequence[str] | None = None,
    metrics: Any = None,
    config: Any = None,
    datasets: Sequence[Any] = (),
    license: str = "apache-2.0",
    repo_id: str | None = None,
) -> Path:
    """Write the adapter folder of ``model`` (see the module docstring); returns the folder.

    Args:
        model: a SEEM with a placement applied (:func:`seemadapt.adapters.apply_adapters`) and trained.
        folder: created if needed; other files in it are left alone (a stale ``lora/`` is removed).
        placement: the placement applied (checked against the model's); ``None`` takes the model's.
        base_model: the base checkpoint the adapters need, as :meth:`SEEM.from_pretrained` takes it (e.g.
            ``"xdecoder/SEEM:seem_focalt_v1.pt"``) or a preset name (``"tiny"``).
        classes: the class names trained on (or categories with ``isthing``); stored for inference.
        thing_classes: names of the thing classes (default: from categories, else none).
        metrics: a flat ``{name: fraction}`` dict or an :class:`~seemadapt.evaluation.EvalResult`.
        config: the training config (a dataclass or dict), stored and shown in the card.
        datasets: the training sources; Hub dataset ids among them are listed in the card.
        license: the card's license (SEEM itself is Apache-2.0).
        repo_id: the Hub repo the folder is meant for (only used in the card's usage snippet).

    Files are written to a staging folder first and moved in at the end: an error leaves no half-written folder.
    """
    from safetensors.torch import save_file

    from seemadapt.adapters.placement import adapter_report, adapter_state_dict
    from seemadapt.adapters.strategies import resolve_placement

    report = adapter_report(model)
    if placement is not None and resolve_placement(placement) != report.placement:
        raise AdapterMismatchError(
            "save_adapters: placement differs from the one applied to the model; pass placement=None to save the "
            "model's own."
        )
    placement = report.placement
    if not isinstance(base_model, str) or not base_model:
        raise ValueError(
            "save_adapters: base_model must name the base checkpoint, e.g. 'xdecoder/SEEM:seem_focalt_v1.pt'."
        )
    names, things = _class_lists(classes, thing_classes)
    state = adapter_state_dict(model)
    if not state:
        raise ValueError("save_adapters: the model's placement has no weights to save.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model_config, "to_dict"):
        raise TypeError("save_adapters: model must be a SEEM (it needs .config, a SEEMConfig).")
    adapter_config = AdapterConfig(
        placement=_json_value(placement.to_dict()),
        base_model=base_model,
        model_config=_json_value(model_config.to_dict()),
        classes=names,
        thing_classes=things,
        strategy=_strategy_name(placement),
        metrics=_metrics_dict(metrics),
        train_config=_json_value(config) if config is not None else {},
        datasets=[
            str(d) for d in datasets if isinstance(d, str) and _HUB_ID.match(d) and not Path(d).exists()
        ],
        parameters={
            g: {"total": c.total, "trainable": c.trainable} for g, c in report.groups.items() if c.total
        },
        versions=_versions(with_peft=placement.lora is not None),
        base_fingerprint=_base_fingerprint(model, set(state)),
        dtype=_dtype_name(model),
        license=license,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seemadapt-staging-", dir=folder))
    try:
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
        save_file(tensors, str(staging / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config.to_dict(), indent=2) + "\n")
        if placement.lora is not None:
            from seemadapt.adapters.lora import save_lora

            save_lora(model, staging / LORA_FOLDER, base_model_name_or_path=base_model)
        (staging / CARD_NAME).write_text(render_model_card(adapter_config, repo_id=repo_id or str(folder)))
        if (folder / LORA_FOLDER).is_dir():
            shutil.rmtree(folder / LORA_FOLDER)
        for item in staging.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved %d adapter tensors to %s", len(state), folder)
    return folder


# ---------------------------------------------------------------------------------------------- model card


_METRIC_TITLES = {
    "miou": "mIoU",
    "mean_precision": "mean precision",
    "mean_recall": "mean recall",
    "pixel_accuracy": "pixel accuracy",
    "fwiou": "frequency-weighted IoU",
    "pq": "PQ",
    "sq": "SQ",
    "rq": "RQ",
    "pq_things": "PQ (things)",
    "pq_stuff": "PQ (stuff)",
    "grounding_miou": "grounding mIoU",
    "grounding_ciou": "grounding cIoU",
    "iou": "IoU",
    "pq/": "PQ",
}


def _metric_title(key: str) -> str:
    if key.startswith("grounding_precision@"):
        return "grounding P@" + key.split("@", 1)[1]
    return _METRIC_TITLES.get(key, key)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.2f}"


def render_model_card(config: AdapterConfig, repo_id: str | None = None) -> str:
    """The ``README.md`` of an adapter folder: Hub metadata (YAML) and a body with usage, placement and metrics."""
    from huggingface_hub import ModelCardData

    strategy = config.strategy or "custom placement"
    tags = ["image-segmentation", "seem", "adapters", "seemadapt", "segmentation", "open-vocabulary"]
    if config.strategy:
        tags.append(config.strategy.replace("/", "_"))
    if config.placement.get("lora"):
        tags.append("lora")
    hub_base = _hub_base(config.base_model)
    data = ModelCardData(
        library_name="seemadapt",
        base_model=hub_base,
        pipeline_tag="image-segmentation",
        license=config.license,
        datasets=list(config.datasets) or None,
        tags=tags,
    )
    title = _PRESET_TITLES.get(config.config_name, f"SEEM v1 ({config.config_name})")
    repo = repo_id or "path/to/this/folder"
    if config.base_model in _PRESET_TITLES:
        base_line = f'SEEM.from_config("{config.base_model}")'
    else:
        base_line = f'SEEM.from_pretrained("{config.base_model}")'
    things = f" (things: {', '.join(config.thing_classes)})" if config.thing_classes else ""
    lines = [
        "---",
        data.to_yaml().strip(),
        "---",
        "",
        f"# SEEM adapters: {strategy}",
        "",
        f"Adapters for [SEEM](https://github.com/UX-Decoder/Segment-Everything-Everywhere-All-At-Once) "
        f"({title}) trained with seemadapt. They hold only the weights fine-tuning changed; the base model "
        f"`{config.base_model}` is loaded first.",
        "",
        f"Classes ({len(config.classes)}): {', '.join(config.classes)}{things}.",
        "",
        "## Usage",
        "",
        "```python",
        *_usage_lines(base_line, repo),
        f'result = model.predict(image, {config.classes!r}, task="semantic")',
        "```",
        "",
        "or from the command line: "
        f"`seemadapt predict --adapters {repo} --task semantic image.jpg --out predictions/`.",
        "",
        "## Adapter placement",
        "",
    ]
    if config.parameters:
        lines += ["| group | parameters | trainable | % trainable |", "|---|---:|---:|---:|"]
        total = trainable = 0
        for group, count in config.parameters.items():
            share = 100.0 * count["trainable"] / count["total"] if count["total"] else 0.0
            lines.append(f"| {group} | {count['total']:,} | {count['trainable']:,} | {share:.2f} |")
            total, trainable = total + count["total"], trainable + count["trainable"]
        share = 100.0 * trainable / total if total else 0.0
        lines += [f"| **total** | {total:,} | {trainable:,} | {share:.2f} |", ""]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | `{json.dumps(value)}` |" for key, value in config.placement.items()]
    lines.append("")
    summary = {k: v for k, v in config.metrics.items() if "/" not in k}
    per_class = {k: v for k, v in config.metrics.items() if "/" in k}
    if config.metrics:
        lines += ["## Evaluation", "", "| metric | value (%) |", "|---|---:|"]
        lines += [f"| {_metric_title(key)} | {_pct(value)} |" for key, value in summary.items()]
        lines.append("")
        if per_class:
            metric_names = list(dict.fromkeys(k.split("/", 1)[0] for k in per_class))
            titles = [_METRIC_TITLES.get(m, _METRIC_TITLES.get(m + "/", m)) for m in metric_names]
            lines += ["| class | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(metric_names)]
            for name in config.classes:
                cells = [_pct(per_class.get(f"{m}/{name}")) for m in metric_names]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            "mIoU, mean precision and mean recall come from one confusion matrix over the whole evaluation set "
            "(pixels labelled 255 ignored; classes absent from ground truth and prediction skipped); PQ / SQ / RQ "
            "follow the COCO panoptic rules (IoU > 0.5 matches, crowd and void respected).",
            "",
        ]
    if config.train_config:
        lines += ["## Training", "", "```json", json.dumps(config.train_config, indent=2), "```", ""]
    if config.versions:
        lines += ["## Framework versions", ""]
        lines += [f"- {name} {version}" for name, version in config.versions.items()]
        lines.append("")
    return "\n".join(lines)


def _usage_lines(base_line: str, repo: str) -> list[str]:
    from seemadapt.model.seem import SEEM

    if hasattr(SEEM, "load_adapters"):
        return ["from seemadapt import SEEM", "", f'model = {base_line}.load_adapters("{repo}")']
    return [
        "from seemadapt import SEEM",
        "from seemadapt.hub import load_adapters",
        "",
        f'model = load_adapters({base_line}, "{repo}")',
    ]


# ---------------------------------------------------------------------------------------------- loading


def resolve_adapter_folder(
    repo_or_folder: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """A local folder with the adapter files: ``repo_or_folder`` itself, or a snapshot of the Hub repo (only the
    adapter files are downloaded)."""
    text = os.fspath(repo_or_folder)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"adapters: {text} is a file; give the adapter folder (with {ADAPTER_CONFIG_NAME}).")
    if not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"adapters: {text!r} is neither an existing folder nor a Hub repo id like 'me/seem-wet-damage'."
        )
    return Path(snapshot_download(text, revision=revision, token=token, allow_patterns=DOWNLOAD_PATTERNS))


def read_adapter_config(
    repo_or_folder: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None
) -> AdapterConfig:
    """The :class:`AdapterConfig` of an adapter folder or Hub repo."""
    folder = resolve_adapter_folder(repo_or_folder, revision=revision, token=token)
    return _read_config(folder)


def _read_config(folder: Path) -> AdapterConfig:
    path = folder / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"adapters: {folder} has no {ADAPTER_CONFIG_NAME}; it is not a folder written by save_adapters."
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"adapters: {path} is not valid JSON ({error.msg}, line {error.lineno}).") from None
    return AdapterConfig.from_dict(data, source=str(path))


def load_adapters(
    model: SEEM,
    repo_or_folder: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> SEEM:
    """Apply the saved placement to ``model`` (which holds the base weights) and load the adapter weights strictly.

    Raises :class:`AdapterMismatchError` when the adapters were trained on another model geometry (the message lists
    the differing config fields and names the base checkpoint to load), when the model already carries adapters, or
    when any weight is missing, unexpected or of another shape. Warns when the frozen base weights differ from the
    ones the adapters were trained on. Returns ``model`` (so ``load_adapters(SEEM.from_pretrained(base), repo)``
    chains). The geometry is checked before anything changes; a weight mismatch is found only after the placement
    was applied, so discard the model after that error.
    """
    from safetensors.torch import load_file

    from seemadapt.adapters.placement import load_adapter_state_dict

    folder = resolve_adapter_folder(repo_or_folder, revision=revision, token=token)
    config = _read_config(folder)
    weights = folder / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"adapters: {folder} has no {ADAPTER_WEIGHTS_NAME}.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model_config, "to_dict"):
        raise TypeError("load_adapters: model must be a SEEM (it needs .config, a SEEMConfig).")
    differences = _geometry_differences(config.model_config, model_config.to_dict())
    if differences:
        raise AdapterMismatchError(
            f"The adapters in {os.fspath(repo_or_folder)} were trained on SEEM {config.config_name!r} (base "
            f"{config.base_model!r}), but the model is {model_config.name!r}; differing config fields: "
            + "; ".join(differences[:6])
            + (f"; ... ({len(differences) - 6} more)" if len(differences) > 6 else "")
            + f". Load the base the adapters name first: {_base_hint(config.base_model)}."
        )
    if _has_placement(model):
        raise AdapterMismatchError(
            "load_adapters: the model already carries adapters; load them into a fresh base model."
        )
    placement = config.adapter_placement()
    state = load_file(str(weights), device="cpu")
    try:
        report = load_adapter_state_dict(model, state, placement)
    except RuntimeError as error:  # shape mismatches from load_state_dict
        raise AdapterMismatchError(
            f"load_adapters: the weights in {weights.name} do not fit the model: {str(error).splitlines()[0]}"
        ) from None
    except ValueError as error:
        raise AdapterMismatchError(str(error)) from None
    if config.base_fingerprint and config.dtype == _dtype_name(model):
        current = _base_fingerprint(model, set(state))
        if current != config.base_fingerprint:
            warnings.warn(
                f"The base weights of this model differ from the ones the adapters in {os.fspath(repo_or_folder)} "
                f"were trained on ({config.base_model!r}); predictions will not match the reported metrics. Load "
                f"that base: {_base_hint(config.base_model)}.",
                stacklevel=2,
            )
    logger.info("loaded %d adapter tensors (%s) from %s", len(state), report.placement, folder)
    return model


def _has_placement(model: nn.Module) -> bool:
    from seemadapt.adapters.placement import adapter_report

    try:
        adapter_report(model)
    except ValueError:
        return False
    return True


def _base_hint(base_model: str) -> str:
    if base_model in _PRESET_TITLES:
        return f"SEEM.from_config({base_model!r})"
    return f"SEEM.from_pretrained({base_model!r})"


def load_model(
    model: Any = None,
    *,
    adapters: str | os.PathLike | None = None,
    device: Any = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> SEEM:
    """A ready model from names: ``model`` a :class:`SEEM`, a preset (``"tiny"``, ``"focalt"``, ``"focall"``:
    random weights), or anything :meth:`SEEM.from_pretrained` loads; ``adapters`` an adapter folder or Hub repo
    applied on top. Without ``model``, the base checkpoint named by the adapters is loaded. ``revision`` is the
    adapters' revision; ``token`` is used for both downloads."""
    from seemadapt.model.config import PRESETS
    from seemadapt.model.seem import SEEM

    if model is None:
        if adapters is None:
            raise ValueError(
                "load_model: give a model (checkpoint or preset name) or adapters that name their base."
            )
        model = read_adapter_config(adapters, revision=revision, token=token).base_model
    if isinstance(model, SEEM):
        seem = model
    elif isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if name in PRESETS:
            if name != "tiny":
                warnings.warn(
                    f"model={name!r} builds SEEM {name} with random weights; for the official weights pass a "
                    f"checkpoint such as 'xdecoder/SEEM:seem_{name}_v1.pt'.",
                    stacklevel=2,
                )
            seem = SEEM.from_config(name)
        else:
            seem = SEEM.from_pretrained(name, token=token)
    else:
        raise TypeError(
            f"load_model: model must be a SEEM, a preset name or a checkpoint, got {type(model).__name__}."
        )
    if adapters is not None:
        load_adapters(seem, adapters, revision=revision, token=token)
    if device is not None:
        seem.to(device)
    return seem.eval()


# ---------------------------------------------------------------------------------------------- pushing


def push_adapters(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str = "Upload SEEM adapters (seemadapt)",
    revision: str | None = None,
    update_card: bool = True,
) -> str:
    """Upload an adapter folder to a Hub model repo in one commit; returns the commit URL.

    ``create_repo(exist_ok=True)`` first (``private`` applies only when the repo is created: the Hub keeps an
    existing repo's visibility), then one ``upload_folder``. With ``update_card`` the card's usage snippet is
    rewritten for ``repo_id`` before the upload. Staging folders and caches are not uploaded.
    """
    folder = Path(folder)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"push_adapters: {folder} has no {name}; write the folder with save_adapters first."
            )
    if not isinstance(repo_id, str) or not _HUB_ID.match(repo_id):
        raise ValueError(f"push_adapters: repo_id must look like 'owner/name', got {repo_id!r}.")
    config = _read_config(folder)
    if update_card:
        (folder / CARD_NAME).write_text(render_model_card(config, repo_id=repo_id))
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    logger.info("uploading %s to %s", folder, getattr(url, "repo_id", repo_id))
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=[".seemadapt-staging-*", ".seemadapt-staging-*/**", ".cache/**", "**/.cache/**"],
    )
    return str(getattr(commit, "commit_url", commit))
