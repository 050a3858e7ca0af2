"""What a finished round leaves behind: its per-class IoU, metrics.json and the DONE marker."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segloop.config import jsonable

__all__ = [
    "CONFIG_FILE",
    "DONE",
    "LoopResult",
    "RoundResult",
    "finish_round",
    "nan_to_none",
    "read_round",
    "write_json",
]

CONFIG_FILE = "loop_config.json"
DONE = "DONE"


@dataclass
class RoundResult:
    """One finished round: its per-class IoU and where its artefacts are."""

    round: int
    iou: dict[str, float]
    metrics: dict[str, float | None]
    folder: Path

    @property
    def miou(self) -> float:
        values = [v for v in self.iou.values() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


@dataclass
class LoopResult:
    """Every finished round (round 0 = baseline when evaluated) and the loop's files."""

    rounds: list[RoundResult]
    output_dir: Path
    plot: Path | None = None

    def table(self) -> str:
        """Per-class IoU (%) per round, Markdown."""
        names = list(dict.fromkeys(n for r in self.rounds for n in r.iou))
        lines = ["| round | " + " | ".join(names) + " | mIoU |", "|---" * (len(names) + 2) + "|"]
        for r in self.rounds:
            cells = [_pct(r.iou.get(n, math.nan)) for n in names]
            lines.append(f"| {r.round} | " + " | ".join(cells) + f" | {_pct(r.miou)} |")
        return "\n".join(lines)


def write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps(jsonable(payload), indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
    )
    os.replace(tmp, path)


def nan_to_none(values: Mapping[str, float]) -> dict[str, float | None]:
    return {
        k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
        for k, v in values.items()
    }


def read_round(folder: Path, index: int) -> RoundResult:
    data = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    iou = {k: (math.nan if v is None else float(v)) for k, v in data["iou"].items()}
    return RoundResult(index, iou, data.get("metrics", {}), folder)


def finish_round(folder: Path, index: int, result: Any, extra: Mapping[str, Any]) -> RoundResult:
    """Save the evaluation, write metrics.json, then the DONE marker (last: it is the round's commit)."""
    result.save(folder / "eval", overlays=False)
    semantic = result.semantic
    iou = {str(n): float(v) for n, v in zip(semantic.class_names, semantic.iou)}
    metrics = nan_to_none(result.metrics)
    write_json(
        folder / "metrics.json", {"round": index, "iou": nan_to_none(iou), "metrics": metrics, **extra}
    )
    write_json(folder / DONE, {"round": index, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return RoundResult(index, iou, metrics, folder)
