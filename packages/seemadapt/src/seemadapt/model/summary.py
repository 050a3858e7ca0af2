"""Parameter bookkeeping of a SEEM model: which state-dict keys are adapters, counts per part, a summary table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seemadapt.adapters.hooks import AdapterModule, is_adapter_key

if TYPE_CHECKING:
    from seemadapt.model.seem import SEEM

__all__ = [
    "INTERACTIVE_PREFIXES",
    "PARTS",
    "adapter_state_keys",
    "parameter_counts",
    "part_of",
    "summary_table",
]

#: decoder modules used only by the interactive (visual prompt) mode
INTERACTIVE_PREFIXES = tuple(
    f"sem_seg_head.predictor.{name}."
    for name in ("mask_sptial_embed", "spatial_embed", "spatial_featured", "pn_indicator")
)
PARTS = ("backbone", "pixel_decoder", "language_encoder", "decoder", "interactive", "adapters", "other")


def adapter_state_keys(model: SEEM) -> set[str]:
    """State-dict keys that belong to adapters (not in official checkpoints): modules of type
    :class:`~seemadapt.adapters.hooks.AdapterModule`, the backbone blocks' ``adapter`` hook, the decoder's
    adapter hook lists, and LoRA weights."""
    prefixes = tuple(
        f"{name}." for name, module in model.named_modules() if isinstance(module, AdapterModule)
    )
    return {key for key in model.state_dict(keep_vars=True) if is_adapter_key(key, prefixes)}


def part_of(name: str) -> str:
    """The part (one of :data:`PARTS` but ``adapters``) that a parameter name belongs to."""
    if name.startswith("backbone."):
        return "backbone"
    if name.startswith("sem_seg_head.pixel_decoder."):
        return "pixel_decoder"
    if name.startswith("sem_seg_head.predictor.lang_encoder."):
        return "language_encoder"
    if name.startswith(INTERACTIVE_PREFIXES):
        return "interactive"
    if name.startswith("sem_seg_head.predictor."):
        return "decoder"
    return "other"


def parameter_counts(model: SEEM, trainable_only: bool = False) -> dict[str, int]:
    """Parameters per part: ``backbone``, ``pixel_decoder``, ``language_encoder``, ``decoder`` (language encoder
    excluded; includes ``interactive``), ``interactive``, ``adapters``, ``other``, ``total``, ``trainable``,
    ``frozen``. With ``trainable_only`` the parts count only parameters with ``requires_grad``."""
    adapters = adapter_state_keys(model)
    counts = dict.fromkeys((*PARTS, "total", "trainable", "frozen"), 0)
    for name, parameter in model.named_parameters():
        size = parameter.numel()
        counts["trainable" if parameter.requires_grad else "frozen"] += size
        if trainable_only and not parameter.requires_grad:
            continue
        part = "adapters" if name in adapters else part_of(name)
        if part == "interactive":
            counts["interactive"] += size
            part = "decoder"
        counts[part] += size
        counts["total"] += size
    return counts


def summary_table(model: SEEM) -> str:
    """A table of parameter counts per part, with the trainable share of each."""
    counts = parameter_counts(model)
    trainable = parameter_counts(model, trainable_only=True)
    rows = [
        ("backbone", "backbone"),
        ("pixel decoder", "pixel_decoder"),
        ("language encoder", "language_encoder"),
        ("decoder", "decoder"),
        ("  of which interactive-only", "interactive"),
        ("adapters", "adapters"),
    ]
    if counts["other"]:
        rows.append(("other", "other"))
    rows.append(("total", "total"))
    width = max(len(label) for label, _ in rows)
    lines = [f"SEEM v1 ({model.config.name})", f"{'part':<{width}}  {'parameters':>13}  {'trainable':>13}"]
    lines += [f"{label:<{width}}  {counts[key]:>13,}  {trainable[key]:>13,}" for label, key in rows]
    lines.append(f"{'frozen':<{width}}  {counts['frozen']:>13,}")
    return "\n".join(lines)
