"""Optional LoRA on named ``nn.Linear`` / ``nn.Conv2d`` layers, through peft's low-level API.

peft wraps each target in a LoRA layer (the original becomes ``<name>.base_layer``; the new weights are
``<name>.lora_A.default.weight`` and ``<name>.lora_B.default.weight``, with ``lora_B`` zero-initialised so the model is
unchanged at init). Because the wrapped layers' state-dict keys change, load the base checkpoint **before** injecting.

Files: :func:`save_lora` writes peft's own layout (``adapter_config.json`` + ``adapter_model.safetensors``), so the
LoRA part is readable by peft tools; seemadapt's other adapters are saved with
:func:`seemadapt.adapters.placement.adapter_state_dict`, never under peft's file names.

peft is imported lazily (it pulls in transformers and takes seconds to import).
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from seemadapt.adapters.lora_spec import LoRASpec
from seemadapt.adapters.modules import AdapterModule
from seemadapt.adapters.names import in_language_encoder

SUPPORTED_TYPES = (nn.Linear, nn.Conv2d)
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"


def resolve_lora_targets(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Names of the ``nn.Linear`` / ``nn.Conv2d`` modules the globs select (outside adapters and the text encoder).

    Raises ``ValueError`` naming the first pattern that selects no supported module.
    """
    adapter_prefixes = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, AdapterModule))
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if name and not name.startswith(adapter_prefixes) and not in_language_encoder(name)
    ]
    selected: list[str] = []
    for pattern in targets:
        hits = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        usable = [n for n, m in hits if type(m) in SUPPORTED_TYPES]
        if not usable:
            if hits:
                kinds = sorted({type(m).__name__ for _, m in hits})
                raise ValueError(
                    f"LoRA target {pattern!r} matches only {kinds} modules (e.g. {hits[0][0]!r}); LoRA needs plain "
                    "nn.Linear or nn.Conv2d layers: make the pattern name those."
                )
            raise ValueError(
                f"LoRA target {pattern!r} matches no module of the model; check the module names."
            )
        selected.extend(n for n in usable if n not in selected)
    return selected


def inject_lora(model: nn.Module, spec: LoRASpec) -> list[str]:
    """Wrap the selected layers with peft LoRA layers (in place). Returns the wrapped module names."""
    from peft import (  # peft is heavy (it imports transformers) and only LoRA placements need it
        LoraConfig,
        inject_adapter_in_model,
    )

    names = resolve_lora_targets(model, spec.targets)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",
    )
    inject_adapter_in_model(config, model)
    return names


def lora_parameter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA parameters peft added (``*.lora_A.*``, ``*.lora_B.*``, ...); empty without LoRA."""
    if "peft" not in sys.modules:  # no peft layer can exist if peft was never imported
        return set()
    from peft.tuners.tuners_utils import (
        BaseTunerLayer,  # peft is heavy (it imports transformers) and only LoRA placements need it
    )

    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            for param_name, _ in module.named_parameters():
                if not param_name.startswith("base_layer."):
                    names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def save_lora(model: nn.Module, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the LoRA weights and config in peft's layout (``adapter_config.json``, ``adapter_model.safetensors``)."""
    from peft import (
        get_peft_model_state_dict,  # peft is heavy (it imports transformers) and only LoRA placements need it
    )

    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        raise ValueError(
            "save_lora: the model has no peft LoRA layers; inject them first (inject_lora / LoRASpec)."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    config.save_pretrained(str(directory))
    # save_embedding_layers=False: LoRA never targets embeddings here, and peft's "auto" would query the Hub.
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()
    }
    save_file(state, str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    return directory


def load_lora(model: nn.Module, directory: str | Path) -> list[str]:
    """Inject the LoRA layers described by ``directory`` (peft layout) and load their weights. Returns the names."""
    from peft import (  # peft is heavy (it imports transformers) and only LoRA placements need it
        LoraConfig,
        inject_adapter_in_model,
        set_peft_model_state_dict,
    )

    directory = Path(directory)
    for name in (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"load_lora: {directory / name} is missing (expected peft's LoRA layout)."
            )
    peft_type = json.loads((directory / PEFT_CONFIG_NAME).read_text()).get("peft_type")
    if peft_type != "LORA":
        raise ValueError(
            f"load_lora: {directory / PEFT_CONFIG_NAME} describes peft_type {peft_type!r}, not LORA."
        )
    config = LoraConfig.from_pretrained(str(directory))
    inject_adapter_in_model(config, model)
    result = set_peft_model_state_dict(model, load_file(str(directory / PEFT_WEIGHTS_NAME)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"load_lora: weights for modules the model lacks: {unexpected[:5]}.")
    return lora_module_names(model)


def lora_module_names(model: nn.Module) -> list[str]:
    """Names of the modules that carry LoRA weights, sorted."""
    return sorted(
        {name.split(".lora_A.", 1)[0] for name in lora_parameter_names(model) if ".lora_A." in name}
    )
