"""The adapter folder's description, ``seemadapt_config.json``: :class:`AdapterConfig` and how its fields are made.

Besides the placement and the classes it records what makes loading safe: the base model's
:class:`~seemadapt.model.SEEMConfig` (a base of another geometry is refused), library versions, trainable-parameter
counts and a fingerprint of the frozen base weights (a different base of the same geometry is warned about).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seemadapt.adapters import STRATEGIES, AdapterPlacement, get_strategy

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS_NAME",
    "CARD_NAME",
    "HUB_ID",
    "LORA_FOLDER",
    "AdapterConfig",
    "AdapterMismatchError",
    "base_fingerprint",
    "class_lists",
    "dtype_name",
    "geometry_differences",
    "hub_base",
    "json_value",
    "library_versions",
    "metrics_dict",
    "read_config_file",
    "strategy_name",
]

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "seemadapt_config.json"
ADAPTER_FORMAT = "seemadapt-adapters"
LORA_FOLDER = "lora"
CARD_NAME = "README.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
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


class AdapterMismatchError(ValueError):
    """Adapters that do not fit the model they are loaded into (another geometry, or a model with adapters)."""


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


def json_value(value: Any) -> Any:
    """Plain JSON values: dataclasses and configs as dicts, tuples as lists, NaN as None, paths as strings."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        value = value.to_dict()
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_value(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return json_value(value.item())
    return str(value)


def library_versions(with_peft: bool) -> dict[str, str]:
    """Versions of Python and the libraries the adapter files depend on."""
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


def geometry_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The SEEMConfig fields (dotted names) that change the weights and differ between two configs."""
    a = _flat("", json.loads(json.dumps(json_value(saved))), {})
    b = _flat("", json.loads(json.dumps(json_value(current))), {})
    keys = sorted((set(a) | set(b)) - _NOT_GEOMETRY)
    return [
        f"{key}: adapters {a.get(key)!r}, model {b.get(key)!r}" for key in keys if a.get(key) != b.get(key)
    ]


def base_fingerprint(model: nn.Module, trained: set[str]) -> str:
    """A hash of a few frozen base tensors (as float32): tells a different base checkpoint of the same geometry."""
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


def dtype_name(model: nn.Module) -> str:
    """The model's parameter dtype without the ``torch.`` prefix."""
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
    return str(dtype).replace("torch.", "")


def class_lists(classes: Any, thing_classes: Sequence[str] | None) -> tuple[list[str], list[str]]:
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


def metrics_dict(metrics: Any) -> dict[str, float | None]:
    """A flat ``{name: number or None}`` dict from a metrics dict or an EvalResult."""
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
        value = json_value(value)
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[str(key)] = value
    return out


def strategy_name(placement: AdapterPlacement) -> str | None:
    """The name of the strategy ``placement`` equals, if any."""
    return next((name for name in STRATEGIES if get_strategy(name) == placement), None)


def hub_base(base_model: str) -> str | None:
    """The Hub repo id inside a base checkpoint id (``owner/name:file.pt`` -> ``owner/name``), else None."""
    repo = base_model.split(":", 1)[0]
    return repo if HUB_ID.match(repo) and not Path(base_model).exists() else None


def read_config_file(folder: Path) -> AdapterConfig:
    """The :class:`AdapterConfig` in an adapter folder, with errors that say what is wrong with the folder."""
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
