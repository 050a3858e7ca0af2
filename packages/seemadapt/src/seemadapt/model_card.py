"""The model card (``README.md``) of an adapter folder: Hub metadata, usage, placement table, metrics, training."""

from __future__ import annotations

import json
import math
from typing import Any

from huggingface_hub import ModelCardData

from seemadapt.adapter_config import AdapterConfig, hub_base

__all__ = ["PRESET_TITLES", "render_model_card"]

PRESET_TITLES = {
    "focalt": "SEEM v1, FocalNet-T",
    "focall": "SEEM v1, FocalNet-L",
    "tiny": "tiny SEEM (tests)",
}

_METRIC_TITLES = {
    "miou": "mIoU",
    "mean_precision": "mean precision",
    "mean_recall": "mean recall",
    "pixel_accuracy": "pixel accuracy",
    "fwiou": "frequency-weighted IoU",
    "pq": "PQ",
    "sq": "SQ",
    "rq": "RQ",
    "pq_things": "PQ (things)",
    "pq_stuff": "PQ (stuff)",
    "grounding_miou": "grounding mIoU",
    "grounding_ciou": "grounding cIoU",
    "iou": "IoU",
    "pq/": "PQ",
}


def _metric_title(key: str) -> str:
    if key.startswith("grounding_precision@"):
        return "grounding P@" + key.split("@", 1)[1]
    return _METRIC_TITLES.get(key, key)


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * float(value):.2f}"


def render_model_card(config: AdapterConfig, repo_id: str | None = None) -> str:
    """The ``README.md`` of an adapter folder: Hub metadata (YAML) and a body with usage, placement and metrics."""
    strategy = config.strategy or "custom placement"
    tags = ["image-segmentation", "seem", "adapters", "seemadapt", "segmentation", "open-vocabulary"]
    if config.strategy:
        tags.append(config.strategy.replace("/", "_"))
    if config.placement.get("lora"):
        tags.append("lora")
    base_repo = hub_base(config.base_model)
    data = ModelCardData(
        library_name="seemadapt",
        base_model=base_repo,
        pipeline_tag="image-segmentation",
        license=config.license,
        datasets=list(config.datasets) or None,
        tags=tags,
    )
    title = PRESET_TITLES.get(config.config_name, f"SEEM v1 ({config.config_name})")
    repo = repo_id or "path/to/this/folder"
    if config.base_model in PRESET_TITLES:
        base_line = f'SEEM.from_config("{config.base_model}")'
    else:
        base_line = f'SEEM.from_pretrained("{config.base_model}")'
    things = f" (things: {', '.join(config.thing_classes)})" if config.thing_classes else ""
    lines = [
        "---",
        data.to_yaml().strip(),
        "---",
        "",
        f"# SEEM adapters: {strategy}",
        "",
        f"Adapters for [SEEM](https://github.com/UX-Decoder/Segment-Everything-Everywhere-All-At-Once) "
        f"({title}) trained with seemadapt. They hold only the weights fine-tuning changed; the base model "
        f"`{config.base_model}` is loaded first.",
        "",
        f"Classes ({len(config.classes)}): {', '.join(config.classes)}{things}.",
        "",
        "## Usage",
        "",
        "```python",
        *_usage_lines(base_line, repo),
        f'result = model.predict(image, {config.classes!r}, task="semantic")',
        "```",
        "",
        "or from the command line: "
        f"`seemadapt predict --adapters {repo} --task semantic image.jpg --out predictions/`.",
        "",
        "## Adapter placement",
        "",
    ]
    lines += _placement_section(config)
    lines += _metrics_section(config)
    if config.train_config:
        lines += ["## Training", "", "```json", json.dumps(config.train_config, indent=2), "```", ""]
    if config.versions:
        lines += ["## Framework versions", ""]
        lines += [f"- {name} {version}" for name, version in config.versions.items()]
        lines.append("")
    return "\n".join(lines)


def _placement_section(config: AdapterConfig) -> list[str]:
    """The trainable-parameter table per group and the placement's settings."""
    lines: list[str] = []
    if config.parameters:
        lines += ["| group | parameters | trainable | % trainable |", "|---|---:|---:|---:|"]
        total = trainable = 0
        for group, count in config.parameters.items():
            share = 100.0 * count["trainable"] / count["total"] if count["total"] else 0.0
            lines.append(f"| {group} | {count['total']:,} | {count['trainable']:,} | {share:.2f} |")
            total, trainable = total + count["total"], trainable + count["trainable"]
        share = 100.0 * trainable / total if total else 0.0
        lines += [f"| **total** | {total:,} | {trainable:,} | {share:.2f} |", ""]
    lines += ["| setting | value |", "|---|---|"]
    lines += [f"| {key} | `{json.dumps(value)}` |" for key, value in config.placement.items()]
    lines.append("")
    return lines


def _metrics_section(config: AdapterConfig) -> list[str]:
    """The evaluation: summary metrics, then per-class scores, then how they are computed."""
    lines: list[str] = []
    summary = {k: v for k, v in config.metrics.items() if "/" not in k}
    per_class = {k: v for k, v in config.metrics.items() if "/" in k}
    if config.metrics:
        lines += ["## Evaluation", "", "| metric | value (%) |", "|---|---:|"]
        lines += [f"| {_metric_title(key)} | {_pct(value)} |" for key, value in summary.items()]
        lines.append("")
        if per_class:
            metric_names = list(dict.fromkeys(k.split("/", 1)[0] for k in per_class))
            titles = [_METRIC_TITLES.get(m, _METRIC_TITLES.get(m + "/", m)) for m in metric_names]
            lines += ["| class | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(metric_names)]
            for name in config.classes:
                cells = [_pct(per_class.get(f"{m}/{name}")) for m in metric_names]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            "mIoU, mean precision and mean recall come from one confusion matrix over the whole evaluation set "
            "(pixels labelled 255 ignored; classes absent from ground truth and prediction skipped); PQ / SQ / RQ "
            "follow the COCO panoptic rules (IoU > 0.5 matches, crowd and void respected).",
            "",
        ]
    return lines


def _usage_lines(base_line: str, repo: str) -> list[str]:
    return ["from seemadapt import SEEM", "", f'model = {base_line}.load_adapters("{repo}")']
