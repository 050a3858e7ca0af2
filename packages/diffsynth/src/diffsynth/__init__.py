"""diffsynth: annotated segmentation datasets drawn by Stable Diffusion, masks from its own attention.

from diffsynth import generate
ds = generate(["mold", "stain", "pipe"], num_images=500, model="stable-diffusion-v1-5/stable-diffusion-v1-5")
ds.push_to_hub("me/wet-damage-synthetic")          # or diffsynth.push_to_hub(ds, ...) with a dataset card
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "generate": "diffsynth.generate",
    "GenerationConfig": "diffsynth.generate",
    "Generator": "diffsynth.generate",
    "Category": "diffsynth.categories",
    "resolve_categories": "diffsynth.categories",
    "AttentionMasker": "diffsynth.masker",
    "MaskerConfig": "diffsynth.masker",
    "MaskResult": "diffsynth.masker",
    "load_pipeline": "diffsynth.pipelines",
    "to_dataset": "diffsynth.dataset",
    "categories_of": "diffsynth.dataset",
    "settings_of": "diffsynth.dataset",
    "validate": "diffsynth.dataset",
    "export_coco": "diffsynth.export",
    "load_coco": "diffsynth.export",
    "push_to_hub": "diffsynth.hub",
    "stage_repo": "diffsynth.hub",
    "health_report": "diffsynth.health",
    "preview_grid": "diffsynth.preview",
    "load_any": "diffsynth.io",
    "filter": "diffsynth.quality",
    "quality_scores": "diffsynth.quality",
    "QualityScore": "diffsynth.quality",
    "GenerationPlan": "diffsynth.balance",
    "plan_for_targets": "diffsynth.balance",
    "plan_from_metrics": "diffsynth.loop_plan",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import heavy modules (torch, diffusers) only when their names are first used."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffsynth' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``diffsynth.generate`` the *function*.

    Importing the submodule ``diffsynth.generate`` (``from diffsynth.generate import GenerationConfig``) makes Python
    bind the module as the package attribute ``generate``, which would shadow the function of the same name depending
    on import order. Such a binding is replaced by the function; the module stays reachable through ``sys.modules``
    and ``from diffsynth.generate import ...``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "generate" and isinstance(value, types.ModuleType) and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
