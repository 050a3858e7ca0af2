"""Adapter folders and the Hub: save, load and push the weights a fine-tuning run adds to SEEM.

An adapter folder (or Hub model repo) holds only what fine-tuning changed, next to a pointer to the base checkpoint:

* ``adapter_model.safetensors``: :func:`seemadapt.adapters.adapter_state_dict` (inserted adapter modules, LoRA
  weights and every parameter the placement trains, e.g. the whole head for ``full-head`` strategies), under the
  model's own state-dict names;
* ``seemadapt_config.json`` (``"format": "seemadapt-adapters"``): the placement, the base checkpoint id, the base
  model's :class:`~seemadapt.model.SEEMConfig` (to refuse a base of another geometry), the classes, metrics, the
  training config, library versions, trainable-parameter counts and a fingerprint of the frozen base weights
  (:mod:`seemadapt.adapter_config`);
* ``lora/adapter_config.json`` + ``lora/adapter_model.safetensors`` when the placement uses LoRA: peft's own layout
  (:func:`seemadapt.adapters.save_lora`), so peft tools can read the LoRA part; :func:`load_adapters` reads the
  top-level file, which holds the LoRA weights too. No ``adapter_config.json`` sits at the top level: the Hub would
  parse it as a peft config;
* ``README.md``: a model card (``library_name: seemadapt``, ``base_model``, ``pipeline_tag: image-segmentation``,
  tags, datasets, license; placement table, metrics, usage; :mod:`seemadapt.model_card`).

Tokens go to ``huggingface_hub`` only: they are never logged, written into a file or put into an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub import constants as hub_constants
from safetensors.torch import save_file
from torch import nn

from seemadapt.adapter_config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_FORMAT,
    ADAPTER_WEIGHTS_NAME,
    CARD_NAME,
    HUB_ID,
    LORA_FOLDER,
    AdapterConfig,
    AdapterMismatchError,
    base_fingerprint,
    class_lists,
    dtype_name,
    json_value,
    library_versions,
    metrics_dict,
    read_config_file,
    strategy_name,
)
from seemadapt.adapter_files import load_adapters, read_adapter_config, resolve_adapter_folder
from seemadapt.adapters import (
    AdapterPlacement,
    adapter_report,
    adapter_state_dict,
    resolve_placement,
    save_lora,
)
from seemadapt.errors import ArgumentError
from seemadapt.model.config import PRESETS
from seemadapt.model.seem import SEEM
from seemadapt.model_card import render_model_card
from segcontract import check_hub_write, hub_errors

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_FORMAT",
    "ADAPTER_WEIGHTS_NAME",
    "AdapterConfig",
    "AdapterMismatchError",
    "check_push_access",
    "load_adapters",
    "load_model",
    "push_adapters",
    "read_adapter_config",
    "render_model_card",
    "resolve_adapter_folder",
    "save_adapters",
]

logger = logging.getLogger(__name__)


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
    names, things = class_lists(classes, thing_classes)
    state = adapter_state_dict(model)
    if not state:
        raise ValueError("save_adapters: the model's placement has no weights to save.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model_config, "to_dict"):
        raise TypeError("save_adapters: model must be a SEEM (it needs .config, a SEEMConfig).")
    adapter_config = AdapterConfig(
        placement=json_value(placement.to_dict()),
        base_model=base_model,
        model_config=json_value(model_config.to_dict()),
        classes=names,
        thing_classes=things,
        strategy=strategy_name(placement),
        metrics=metrics_dict(metrics),
        train_config=json_value(config) if config is not None else {},
        datasets=[
            str(d) for d in datasets if isinstance(d, str) and HUB_ID.match(d) and not Path(d).exists()
        ],
        parameters={
            g: {"total": c.total, "trainable": c.trainable} for g, c in report.groups.items() if c.total
        },
        versions=library_versions(with_peft=placement.lora is not None),
        base_fingerprint=base_fingerprint(model, set(state)),
        dtype=dtype_name(model),
        license=license,
    )
    folder = Path(folder)
    _write_adapter_folder(model, folder, state, adapter_config, repo_id or str(folder))
    logger.info("saved %d adapter tensors to %s", len(state), folder)
    return folder


def _write_adapter_folder(
    model: nn.Module, folder: Path, state: dict[str, Any], adapter_config: AdapterConfig, repo_id: str
) -> None:
    """Weights, config, the LoRA part and the card into a staging folder, then moved into ``folder``: an error
    leaves no half-written folder."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".seemadapt-staging-", dir=folder))
    try:
        tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
        save_file(tensors, str(staging / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(adapter_config.to_dict(), indent=2) + "\n")
        if adapter_config.placement.get("lora") is not None:
            save_lora(model, staging / LORA_FOLDER, base_model_name_or_path=adapter_config.base_model)
        (staging / CARD_NAME).write_text(render_model_card(adapter_config, repo_id=repo_id))
        if (folder / LORA_FOLDER).is_dir():
            shutil.rmtree(folder / LORA_FOLDER)
        for item in staging.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- loading
# (reading a folder into a model is seemadapt.adapter_files', re-exported here)


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
    if not isinstance(folder, str | os.PathLike):
        raise ArgumentError(
            f"push_adapters: folder must be an adapter folder path, got a {type(folder).__name__}; for a model "
            "write the folder first with save_adapters(model, folder) (or push a finetune Run with "
            "run.push_to_hub(repo_id))."
        )
    folder = Path(folder)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"push_adapters: {folder} has no {name}; write the folder with save_adapters first."
            )
    if not isinstance(repo_id, str) or not HUB_ID.match(repo_id):
        raise ValueError(f"push_adapters: repo_id must look like 'owner/name', got {repo_id!r}.")
    config = read_config_file(folder)
    if update_card:
        (folder / CARD_NAME).write_text(render_model_card(config, repo_id=repo_id))
    api = HfApi(token=token)
    with hub_errors(repo_id):  # no network, no rights: HubAccessError naming the repo
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


def check_push_access(repo_id: Any, token: str | bool | None = None, field: str = "push_to_hub") -> None:
    """Fail now (:class:`~segcontract.errors.HubAccessError` naming ``field``) unless ``token`` (default: the saved
    login / ``HF_TOKEN``) can write to ``repo_id``: called before the work whose result is pushed."""
    token = token if isinstance(token, str) else None
    check_hub_write(
        HfApi(token=token), repo_id, offline=hub_constants.HF_HUB_OFFLINE, field=field, repo_type="model"
    )
