"""What a placement did: the trainable-parameter table per module group, kept on the model it was applied to."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from seemadapt.adapters.lookup import adapter_modules
from seemadapt.adapters.lora import lora_parameter_names
from seemadapt.adapters.names import (
    BACKBONE,
    GROUPS,
    HEAD_HOOK,
    PIXEL_DECODER,
    PREDICTOR,
    in_language_encoder,
)
from seemadapt.adapters.placement import AdapterPlacement

__all__ = [
    "GROUPS",
    "REPORT_ATTR",
    "AdapterReport",
    "GroupCount",
    "adapter_report",
    "build_report",
    "report_of",
]

_ALWAYS_SHOWN = GROUPS[:7]
#: the model attribute that holds the report of the applied placement
REPORT_ATTR = "_seemadapt_adapter_report"


@dataclass(frozen=True)
class GroupCount:
    """Parameter counts of one module group."""

    total: int
    trainable: int


@dataclass
class AdapterReport:
    """What :func:`apply_adapters` did.

    Attributes:
        placement: the placement applied.
        injected: names of the inserted adapter modules and of the LoRA-wrapped layers.
        trainable: names of the parameters that train (``requires_grad=True``), in model order.
        groups: parameter counts per group (see :data:`GROUPS`).
        group_of: the group of every parameter name (e.g. to give backbone adapters their own learning rate).
    """

    placement: AdapterPlacement
    injected: tuple[str, ...]
    trainable: tuple[str, ...]
    groups: dict[str, GroupCount]
    group_of: dict[str, str] = field(repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(g.total for g in self.groups.values())

    @property
    def num_trainable(self) -> int:
        return sum(g.trainable for g in self.groups.values())

    def trainable_by_group(self) -> dict[str, list[str]]:
        """Trainable parameter names per group (only groups that have some)."""
        out: dict[str, list[str]] = {}
        for name in self.trainable:
            out.setdefault(self.group_of[name], []).append(name)
        return out

    def table(self) -> str:
        """A plain-text table: parameters and trainable parameters per group, then the totals."""
        rows = [(g, c) for g, c in self.groups.items() if g in _ALWAYS_SHOWN or c.total]
        rows.append(("total", GroupCount(self.num_parameters, self.num_trainable)))
        width = max(len(g) for g, _ in rows)
        lines = [f"{'group':<{width}}  {'parameters':>13}  {'trainable':>13}  {'%':>6}"]
        for group, count in rows:
            share = 100.0 * count.trainable / count.total if count.total else 0.0
            if group == "total":
                lines.append("-" * len(lines[0]))
            lines.append(f"{group:<{width}}  {count.total:>13,}  {count.trainable:>13,}  {share:>6.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def build_report(model: nn.Module, placement: AdapterPlacement, injected: tuple[str, ...]) -> AdapterReport:
    adapters = adapter_modules(model)
    lora = lora_parameter_names(model)
    counts = {g: [0, 0] for g in GROUPS}
    group_of: dict[str, str] = {}
    trainable = []
    for name, param in model.named_parameters():
        group = _group(name, adapters, lora)
        group_of[name] = group
        counts[group][0] += param.numel()
        if param.requires_grad:
            counts[group][1] += param.numel()
            trainable.append(name)
    groups = {g: GroupCount(*c) for g, c in counts.items()}
    return AdapterReport(placement, injected, tuple(trainable), groups, group_of)


def _group(name: str, adapters: dict[str, nn.Module], lora: set[str]) -> str:
    if in_language_encoder(name):
        return "language encoder"
    if name in lora:
        return "LoRA"
    owner = next((prefix for prefix in adapters if name.startswith(prefix + ".")), None)
    if owner is not None:
        return _adapter_group(owner)
    for prefix, group in ((BACKBONE, "backbone"), (PIXEL_DECODER, "pixel decoder"), (PREDICTOR, "decoder")):
        if name.startswith(prefix + "."):
            return group
    return "other"


def _adapter_group(owner: str) -> str:
    if owner.startswith(BACKBONE + "."):
        return "backbone adapters"
    if owner.startswith(f"{PREDICTOR}.{HEAD_HOOK}."):
        return "head adapters"
    return "decoder adapters"


def report_of(model: nn.Module) -> AdapterReport | None:
    """The report of the placement applied to ``model``, or ``None``."""
    return getattr(model, REPORT_ATTR, None)


def adapter_report(model: nn.Module) -> AdapterReport:
    """The report of the placement applied to ``model`` (raises if none was)."""
    report = report_of(model)
    if report is None:
        raise ValueError("The model has no adapter placement; call apply_adapters(model, placement) first.")
    return report
