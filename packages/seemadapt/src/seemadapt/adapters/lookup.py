"""Finding adapters and named parts in a model."""

from __future__ import annotations

from torch import nn

from seemadapt.adapters.modules import AdapterModule

__all__ = ["adapter_modules", "adapter_parameter_names", "maybe_submodule", "submodule"]


def adapter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Top-most AdapterModules by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, AdapterModule) and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


def adapter_parameter_names(model: nn.Module) -> set[str]:
    """Parameter names inside the adapter modules."""
    return {
        f"{prefix}.{n}"
        for prefix, module in adapter_modules(model).items()
        for n, _ in module.named_parameters()
    }


def submodule(model: nn.Module, path: str, purpose: str) -> nn.Module:
    """``model.get_submodule(path)``, with an error that names what needed it."""
    module = maybe_submodule(model, path)
    if module is None:
        raise ValueError(
            f"{purpose} need the submodule '{path}', which the model ({type(model).__name__}) lacks."
        )
    return module


def maybe_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
