"""diffsynth: annotated segmentation datasets drawn by Stable Diffusion, masks from its own attention.

from diffsynth import generate
ds = generate(["mold", "stain", "pipe"], num_images=500, model="stable-diffusion-v1-5/stable-diffusion-v1-5")
ds.push_to_hub("me/wet-damage-synthetic")          # or diffsynth.push_to_hub(ds, ...) with a dataset card
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "generate": "diffsynth.generation",
    "GenerationConfig": "diffsynth.generation",
    "Generator": "diffsynth.generation",
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
    "load_coco": "diffsynth.coco_reader",
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
    """Import a public name's module when the name is first used (PEP 562).

    Lazy on purpose: the modules behind these names import torch, diffusers and datasets (seconds), and
    ``import diffsynth`` (e.g. for the CLI's ``--help``) should not pay for them."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffsynth' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
