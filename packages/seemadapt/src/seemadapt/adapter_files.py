"""Reading adapter folders: find one (a local folder or a Hub repo), read its config, load it into a SEEM.

:mod:`seemadapt.hub` writes these folders (its docstring describes the files). This module does not import the model
(it reads ``model.config`` and the module names the placement gives), so :meth:`SEEM.load_adapters` can call it
without the model pointing up to the Hub code: the layers are adapters -> adapter files -> model -> hub.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn

from seemadapt.adapter_config import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    HUB_ID,
    LORA_FOLDER,
    AdapterConfig,
    AdapterMismatchError,
    base_fingerprint,
    dtype_name,
    geometry_differences,
    read_config_file,
)
from seemadapt.adapters import adapter_report, load_adapter_state_dict
from seemadapt.model_card import PRESET_TITLES

__all__ = ["DOWNLOAD_PATTERNS", "load_adapters", "read_adapter_config", "resolve_adapter_folder"]

logger = logging.getLogger(__name__)

#: what a Hub snapshot of an adapter repo downloads (not the card)
DOWNLOAD_PATTERNS = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, f"{LORA_FOLDER}/*"]


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
    if not HUB_ID.match(text):
        raise FileNotFoundError(
            f"adapters: {text!r} is neither an existing folder nor a Hub repo id like 'me/seem-wet-damage'."
        )
    return Path(snapshot_download(text, revision=revision, token=token, allow_patterns=DOWNLOAD_PATTERNS))


def read_adapter_config(
    repo_or_folder: str | os.PathLike, *, revision: str | None = None, token: str | bool | None = None
) -> AdapterConfig:
    """The :class:`AdapterConfig` of an adapter folder or Hub repo."""
    folder = resolve_adapter_folder(repo_or_folder, revision=revision, token=token)
    return read_config_file(folder)


def load_adapters(
    model: nn.Module,
    repo_or_folder: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> nn.Module:
    """Apply the saved placement to ``model`` (which holds the base weights) and load the adapter weights strictly.

    Raises :class:`AdapterMismatchError` when the adapters were trained on another model geometry (the message lists
    the differing config fields and names the base checkpoint to load), when the model already carries adapters, or
    when any weight is missing, unexpected or of another shape. Warns when the frozen base weights differ from the
    ones the adapters were trained on. Returns ``model`` (so ``load_adapters(SEEM.from_pretrained(base), repo)``
    chains). The geometry is checked before anything changes; a weight mismatch is found only after the placement
    was applied, so discard the model after that error.
    """
    folder = resolve_adapter_folder(repo_or_folder, revision=revision, token=token)
    config = read_config_file(folder)
    weights = folder / ADAPTER_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"adapters: {folder} has no {ADAPTER_WEIGHTS_NAME}.")
    model_config = getattr(model, "config", None)
    if model_config is None or not hasattr(model_config, "to_dict"):
        raise TypeError("load_adapters: model must be a SEEM (it needs .config, a SEEMConfig).")
    differences = geometry_differences(config.model_config, model_config.to_dict())
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
    if config.base_fingerprint and config.dtype == dtype_name(model):
        current = base_fingerprint(model, set(state))
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
    try:
        adapter_report(model)
    except ValueError:
        return False
    return True


def _base_hint(base_model: str) -> str:
    if base_model in PRESET_TITLES:
        return f"SEEM.from_config({base_model!r})"
    return f"SEEM.from_pretrained({base_model!r})"
