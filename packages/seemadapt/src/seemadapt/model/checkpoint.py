"""Load and save SEEM checkpoints: official ``.pt`` files and our safetensors folders, local or on the Hub.

Loading follows the official rule: a checkpoint tensor is used when its name exists in the model and its
shape is identical; everything else is reported in a :class:`LoadReport` (missing, unexpected, shape-mismatched). With
``strict=True`` anything but the documented differences is an error:

* documented missing keys: adapter weights (never in a base checkpoint); non-persistent buffers (``pixel_mean``,
  ``pixel_std``) are not in any state dict to begin with;
* documented unexpected key: ``criterion.empty_weight`` (the criterion's class weights; classes live in text, so the
  model has no class-sized parameter and the key is ignored for any number of classes).

Files are read safely: ``.safetensors`` with safetensors, everything else with ``torch.load(weights_only=True)``.
A file that needs full unpickling (arbitrary Python objects) loads only with an explicit ``trust_pickle=True``.
Hub tokens are passed to ``huggingface_hub`` and never logged or put into errors.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from seemadapt import __version__
from seemadapt.errors import CheckpointError, UntrustedCheckpointError
from seemadapt.model.config import PRESETS, SEEMConfig, get_config

if TYPE_CHECKING:
    from seemadapt.model.seem import SEEM

logger = logging.getLogger(__name__)

CONFIG_NAME = "seemadapt_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "seemadapt-seem-v1"
IGNORED_KEYS = frozenset({"criterion.empty_weight"})
WRAPPER_KEYS = ("model", "state_dict", "module")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------- load report


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model.

    Attributes:
        source: where the weights came from (a path; never a token).
        loaded: model keys that received a checkpoint tensor.
        missing: model keys the checkpoint lacks (they keep their current values).
        allowed_missing: the subset of ``missing`` that is documented (adapter weights).
        unexpected: checkpoint keys the model does not have (not loaded).
        ignored: documented unexpected keys (``criterion.empty_weight``), not loaded.
        mismatched: ``(key, checkpoint shape, model shape)`` for names present in both with different shapes.
    """

    source: str = ""
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    allowed_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Human-readable reasons why a strict load fails (empty when the load is exact up to documented keys)."""
        allowed = set(self.allowed_missing)
        out = [
            f"shape mismatch for {key}: checkpoint {list(ckpt)} vs model {list(model)}"
            for key, ckpt, model in self.mismatched
        ]
        undocumented = [key for key in self.missing if key not in allowed]
        if undocumented:
            out.append(
                f"{len(undocumented)} model keys missing from the checkpoint: {_preview(undocumented)}"
            )
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected checkpoint keys: {_preview(self.unexpected)}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [
            f"Loaded {len(self.loaded)} tensors from {self.source or 'a state dict'}; "
            f"missing {len(self.missing)} (documented {len(self.allowed_missing)}), "
            f"unexpected {len(self.unexpected)}, ignored {len(self.ignored)}, mismatched {len(self.mismatched)}."
        ]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def compare_state_dicts(
    model_shapes: Mapping[str, Shape],
    checkpoint_shapes: Mapping[str, Shape],
    allowed_missing: set[str] | frozenset[str] = frozenset(),
    source: str = "",
) -> LoadReport:
    """The :class:`LoadReport` of loading tensors of ``checkpoint_shapes`` into a model with ``model_shapes``."""
    report = LoadReport(source=source)
    for key, shape in checkpoint_shapes.items():
        if key in model_shapes:
            if tuple(shape) == tuple(model_shapes[key]):
                report.loaded.append(key)
            else:
                report.mismatched.append((key, tuple(shape), tuple(model_shapes[key])))
        elif key in IGNORED_KEYS:
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.missing = [key for key in model_shapes if key not in checkpoint_shapes]
    report.allowed_missing = [key for key in report.missing if key in allowed_missing]
    return report


def _lora_aliases(model_keys: list[str], checkpoint: Mapping[str, Any]) -> dict[str, str]:
    """Checkpoint names for model keys that peft's LoRA moved under ``.base_layer.`` (load before or after LoRA)."""
    aliases = {}
    for key in model_keys:
        if ".base_layer." in key:
            plain = key.replace(".base_layer.", ".")
            if plain in checkpoint and key not in checkpoint:
                aliases[plain] = key
    return aliases


def load_state_dict_into(
    model: SEEM, state_dict: Mapping[str, Tensor], strict: bool = False, source: str = ""
) -> LoadReport:
    """Copy the tensors of ``state_dict`` whose name and shape match into ``model``; report the rest.

    ``strict=True`` raises :class:`CheckpointError` (naming the keys and shapes) unless the only differences are
    the documented ones. The report is logged and stored as ``model.load_report``.
    """
    model_state = model.state_dict()
    aliases = _lora_aliases(list(model_state), state_dict)
    renamed = {aliases.get(key, key): value for key, value in state_dict.items()}
    report = compare_state_dicts(
        {key: tuple(value.shape) for key, value in model_state.items()},
        {key: tuple(value.shape) for key, value in renamed.items()},
        allowed_missing=model.adapter_state_keys(),
        source=source,
    )
    if strict and not report.ok:
        raise CheckpointError(
            f"Checkpoint {source or ''} does not match the model ({model.config.name}):\n  "
            + "\n  ".join(report.problems)
            + "\nPass the right config=..., or strict=False to load the matching tensors only."
        )
    model.load_state_dict({key: renamed[key] for key in report.loaded}, strict=False)
    if report.ok:
        logger.info("%s", report)
    else:  # strict=False was asked for: say how much of the model the file actually filled
        warnings.warn(
            f"strict=False: used {len(report.loaded)} of {len(model_state)} model keys from "
            f"{source or 'the state dict'}; the others keep their initial (random) values.\n{report}",
            stacklevel=3,
        )
    model.load_report = report
    return report


# ---------------------------------------------------------------------------------------------- reading files


def unwrap_state_dict(obj: Any) -> dict[str, Tensor]:
    """The flat ``name -> tensor`` dict inside a loaded checkpoint.

    Accepts a flat dict (the official format), ``{"model": sd}`` / ``{"state_dict": sd}`` / ``{"module": sd}``
    wrappers (other entries such as optimizer state are dropped), and strips a leading ``module.`` (DDP) from every
    name. Non-tensor entries of a flat dict are dropped with a warning.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"A checkpoint must hold a dict of tensors, got {type(obj).__name__}.")
    for wrapper in WRAPPER_KEYS:
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
            break
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    dropped = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if dropped:
        warnings.warn(f"Ignoring non-tensor checkpoint entries: {_preview(dropped)}", stacklevel=3)
    if not state:
        raise CheckpointError("The checkpoint holds no tensors.")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat CPU state dict.

    ``.safetensors`` goes through :func:`safetensors.torch.load_file`; anything else through
    ``torch.load(weights_only=True)`` (memory-mapped when the file allows it). A file that needs full unpickling
    raises :class:`UntrustedCheckpointError` unless ``trust_pickle=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return unwrap_state_dict(load_file(str(path), device="cpu"))
        except SafetensorError as error:
            raise CheckpointError(
                f"checkpoint file {str(path)!r} is not a readable safetensors file ({error}); download it again."
            ) from None
    with path.open("rb") as handle:
        magic = handle.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):  # torch's zip, or a legacy pickle
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is not a PyTorch checkpoint (it starts with {magic!r}); pass an official "
            "SEEM .pt, a .safetensors file or a folder written by save_pretrained."
        )
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (KeyError, EOFError, UnicodeDecodeError) as error:  # e.g. a text file: "KeyError: 101"
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is not a PyTorch checkpoint ({type(error).__name__}: {error}); pass "
            "an official SEEM .pt, a .safetensors file or a folder written by save_pretrained."
        ) from None
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise UntrustedCheckpointError(
                f"{path.name} contains pickled Python objects besides tensors, and unpickling can run arbitrary "
                "code. Load it with trust_pickle=True only if you trust its origin (or convert it once with "
                f"convert_checkpoint to safetensors). Details: {str(error).splitlines()[0]}"
            ) from None
        warnings.warn(f"Unpickling {path.name} with weights_only=False (trust_pickle=True).", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    return unwrap_state_dict(obj)


# ---------------------------------------------------------------------------------------------- configs


def _backbone_signature(shapes: Mapping[str, Shape]) -> tuple[str, int, tuple[int, ...], int]:
    """``(variant, embed_dim, depths, focal_levels of stage 0)`` read from backbone key shapes."""
    stem = shapes.get("backbone.patch_embed.proj.weight")
    if stem is None:
        raise CheckpointError(
            "Cannot infer the config: the checkpoint has no backbone.patch_embed.proj.weight."
        )
    depths = []
    for stage in range(4):
        blocks = {
            int(m.group(1))
            for key in shapes
            if (m := re.match(rf"backbone\.layers\.{stage}\.blocks\.(\d+)\.", key))
        }
        depths.append(len(blocks))
    variant = "focal_dw" if "backbone.layers.0.blocks.0.dw1.weight" in shapes else "focal"
    levels = len(
        {
            m.group(1)
            for key in shapes
            if (m := re.match(r"backbone\.layers\.0\.blocks\.0\.modulation\.focal_layers\.(\d+)\.", key))
        }
    )
    return variant, int(stem[0]), tuple(depths), levels


def _config_signature(config: SEEMConfig) -> tuple[str, int, tuple[int, ...], int]:
    b = config.backbone
    return b.variant, b.embed_dim, tuple(b.depths), b.focal_levels[0]


def infer_config(
    shapes: Mapping[str, Shape], filename: str | None = None, num_classes: int | None = None
) -> SEEMConfig:
    """The preset a checkpoint was made with, read from its shapes (backbone variant, embed dim, depths, focal
    levels, queries); when the shapes match no preset, from the file name (``focalt`` / ``focall`` in it).

    Raises :class:`CheckpointError` when neither identifies a preset (pass ``config=`` then).
    """
    classes = 133 if num_classes is None else num_classes
    name = (filename or "").lower()
    hinted = next((preset for preset in ("focalt", "focall") if preset in name), None)
    signature = None
    if "backbone.patch_embed.proj.weight" in shapes:
        signature = _backbone_signature(shapes)
        candidates = [get_config(preset, num_classes=classes) for preset in PRESETS]
        candidates.append(PRESETS["tiny"](num_classes=classes, variant="focal"))  # type: ignore[call-arg]
        query = shapes.get("sem_seg_head.predictor.query_feat.weight")
        for config in candidates:
            if _config_signature(config) != signature:
                continue
            if query is not None and tuple(query) != (config.decoder.num_queries, config.decoder.hidden_dim):
                continue
            if hinted is not None and hinted != config.name:
                warnings.warn(
                    f"{filename} is named like {hinted} but its shapes are those of {config.name}; using {config.name}.",
                    stacklevel=2,
                )
            return config
    if hinted is not None:
        return get_config(hinted, num_classes=classes)
    found = (
        "no backbone.patch_embed.proj.weight"
        if signature is None
        else (f"backbone variant {signature[0]}, embed dim {signature[1]}, depths {list(signature[2])}")
    )
    raise CheckpointError(
        f"Cannot infer the SEEM config from the checkpoint ({found}); pass config='focalt' / 'focall' / a SEEMConfig."
    )


def as_config(config: str | SEEMConfig | Mapping[str, Any], num_classes: int | None) -> SEEMConfig:
    if isinstance(config, str):
        return get_config(config, num_classes=133 if num_classes is None else num_classes)
    if isinstance(config, Mapping):
        config = SEEMConfig.from_dict(dict(config))
    if not isinstance(config, SEEMConfig):
        raise TypeError(f"config must be a preset name or a SEEMConfig, got {type(config).__name__}.")
    if num_classes is not None and num_classes != config.num_classes:
        config = replace(config, num_classes=num_classes)
    return config


def read_config_file(path: str | os.PathLike) -> SEEMConfig:
    """The :class:`SEEMConfig` stored in a ``seemadapt_config.json``."""
    data = json.loads(Path(path).read_text())
    if data.get("format") != FORMAT_NAME or "config" not in data:
        raise CheckpointError(f"{path} is not a seemadapt SEEM config (expected format {FORMAT_NAME!r}).")
    return SEEMConfig.from_dict(data["config"])


# ---------------------------------------------------------------------------------------------- resolution


@dataclass
class ResolvedCheckpoint:
    """Local files for a checkpoint: the weights, our config file if there is one, and a name for reports."""

    weights: Path
    config: Path | None
    source: str


def resolve_checkpoint(
    repo_or_path: str | os.PathLike,
    filename: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> ResolvedCheckpoint:
    """Find the files of a checkpoint.

    * a local file: used as it is;
    * a local folder: ``model.safetensors`` + ``seemadapt_config.json`` (from :func:`save_pretrained`), else
      ``filename`` inside it, else its only ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file;
    * ``"owner/name"`` (a Hub repo; ``"owner/name:file.pt"`` is short for ``filename="file.pt"``): ``filename`` is
      downloaded with :func:`huggingface_hub.hf_hub_download`, or, without a filename, our two files.
    """
    text = os.fspath(repo_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return ResolvedCheckpoint(path, None, str(path))
    if path.is_dir():
        return _resolve_folder(path, filename)
    repo = text
    if ":" in text:
        repo, _, short = text.partition(":")
        if filename is not None and filename != short:
            raise ValueError(f"Got filename={filename!r} and {text!r}; name the file only once.")
        filename = short
    if not _HUB_ID.match(repo):
        raise FileNotFoundError(
            f"{text!r} is neither an existing file or folder nor a Hub repo id like 'xdecoder/SEEM'."
        )
    kwargs = {"revision": revision, "token": token}
    if filename is not None:
        weights = Path(hf_hub_download(repo, filename, **kwargs))
        return ResolvedCheckpoint(weights, None, f"{repo}:{filename}")
    try:
        config = Path(hf_hub_download(repo, CONFIG_NAME, **kwargs))
    except Exception as error:  # EntryNotFound and friends: an official repo holds only .pt files
        raise CheckpointError(
            f"Hub repo {repo!r} has no {CONFIG_NAME} (or it could not be fetched: {type(error).__name__}); "
            "for official SEEM weights name the file, e.g. 'xdecoder/SEEM:seem_focalt_v1.pt'."
        ) from None
    weights = Path(hf_hub_download(repo, WEIGHTS_NAME, **kwargs))
    return ResolvedCheckpoint(weights, config, repo)


def _resolve_folder(folder: Path, filename: str | None) -> ResolvedCheckpoint:
    if filename is not None:
        weights = folder / filename
        if not weights.is_file():
            raise FileNotFoundError(f"{filename} not found in {folder}.")
        config = folder / CONFIG_NAME if weights.name == WEIGHTS_NAME else None
        return ResolvedCheckpoint(weights, config if config and config.is_file() else None, str(weights))
    if (folder / "adapter_model.safetensors").is_file() and not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"{folder} holds adapters, not a full model: use seemadapt.load_model(adapters='{folder}') "
            "or load the base model and then model.load_adapters(folder)."
        )
    if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return ResolvedCheckpoint(folder / WEIGHTS_NAME, folder / CONFIG_NAME, str(folder))
    files = [p for p in sorted(folder.iterdir()) if p.suffix in (".pt", ".pth", ".bin", ".safetensors")]
    if len(files) != 1:
        raise FileNotFoundError(
            f"{folder} holds no {WEIGHTS_NAME} + {CONFIG_NAME} pair and "
            f"{'no' if not files else 'several'} checkpoint files ({[p.name for p in files]}); pass filename=."
        )
    return ResolvedCheckpoint(files[0], None, str(files[0]))


# ---------------------------------------------------------------------------------------------- public entry points


def load_pretrained(
    cls: type[SEEM],
    repo_or_path: str | os.PathLike,
    filename: str | None = None,
    config: str | SEEMConfig | None = None,
    num_classes: int | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    trust_pickle: bool = False,
    strict: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SEEM:
    """Build a model and load a checkpoint into it (see :func:`resolve_checkpoint` for where files come from).

    ``strict`` (the default) refuses a checkpoint with missing, unexpected or mis-shaped keys beyond the documented
    ones (a model with random weights would be returned otherwise); ``strict=False`` loads the matching tensors and
    warns how many of the model's keys they fill.

    The config is, in order: ``config``; the folder's ``seemadapt_config.json``; the file name (``focalt`` /
    ``focall``); the backbone shapes. The model is returned in eval mode with ``model.load_report`` set.
    """
    resolved = resolve_checkpoint(repo_or_path, filename, revision=revision, token=token)
    state = read_state_dict(resolved.weights, trust_pickle=trust_pickle)
    if config is not None:
        model_config = as_config(config, num_classes)
    elif resolved.config is not None:
        model_config = as_config(read_config_file(resolved.config), num_classes)
    else:
        shapes = {key: tuple(value.shape) for key, value in state.items()}
        model_config = infer_config(shapes, resolved.weights.name, num_classes)
    model = cls.from_config(model_config, dtype=dtype)
    load_state_dict_into(model, state, strict=strict, source=resolved.source)
    del state
    if device is not None:
        model.to(device)
    return model.eval()


def _write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file at ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_folder(state: Mapping[str, Tensor], config: SEEMConfig, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    _write_atomic(folder / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    payload = {"format": FORMAT_NAME, "seemadapt_version": __version__, "config": config.to_dict()}
    _write_atomic(folder / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(payload, indent=2) + "\n"))
    return folder


def save_pretrained(model: SEEM, folder: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (the full state dict, adapters included if attached) and
    ``seemadapt_config.json`` into ``folder``."""
    return write_folder(model.state_dict(), model.config, folder)
