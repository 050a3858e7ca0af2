"""What identifies a run (its fingerprint), how two runs differ, and the generator's per-shard counters.

Two runs with the same fingerprint make the same sample ``i``, so a folder can be resumed only by a run with the
folder's fingerprint. The generator's running counters (``Generator.quality_stats``, behind e.g. the mean quality in
the settings) are counted per shard from zero; the merged dataset's settings use their sum, so they do not depend on
kills, resumes or the number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from PIL import Image

from diffsynth.shards.layout import ShardLayout

__all__ = [
    "RESOLVED_SETTINGS",
    "RUN_ONLY_FIELDS",
    "RUN_ONLY_MASKER_FIELDS",
    "canonical",
    "differences",
    "run_fingerprint",
    "run_stats",
    "settings_for",
    "stats_set_to",
    "sum_stats",
]

#: GenerationConfig fields that change how a run is executed, not what it makes.
RUN_ONLY_FIELDS = ("batch_size", "device", "num_images")
RUN_ONLY_MASKER_FIELDS = ("progress", "chunk_mb")
#: Resolved settings that pin down the model when a loaded pipeline is passed (``config.model`` is then "pipeline"),
#: and the quality scorer (e.g. which CLIP model).
RESOLVED_SETTINGS = ("model", "pipeline", "scheduler", "height", "width", "resolutions", "quality")
_LONG_LIST = 64
_MISSING = object()


def canonical(value: Any) -> Any:
    """A JSON-able, order-stable form of a config value; long lists shrink to their length and hash."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        items = [canonical(v) for v in value]
        if len(items) > _LONG_LIST:
            blob = json.dumps(items, sort_keys=True).encode()
            return {"items": len(items), "sha256": hashlib.sha256(blob).hexdigest()}
        return items
    if isinstance(value, Image.Image):
        digest = hashlib.sha256(value.mode.encode() + repr(value.size).encode() + value.tobytes()).hexdigest()
        return {"image_sha256": digest}
    return _canonical_leaf(value)


def _canonical_leaf(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return canonical(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def run_stats(generator: Any) -> dict[str, Any] | None:
    """The generator's running counters (``Generator.quality_stats``: numbers summed over drawn samples), if any."""
    stats = getattr(generator, "quality_stats", None)
    if isinstance(stats, dict) and all(isinstance(v, int | float) for v in stats.values()):
        return stats
    return None


@contextlib.contextmanager
def stats_set_to(generator: Any, values: Mapping[str, Any] | None) -> Iterator[None]:
    """Temporarily replace the generator's counters by ``values`` (zeros when None)."""
    stats = run_stats(generator)
    if stats is None:
        yield
        return
    saved = dict(stats)
    stats.update({k: (values or {}).get(k, type(v)()) for k, v in stats.items()})
    try:
        yield
    finally:
        stats.clear()
        stats.update(saved)


def sum_stats(parts: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The per-shard counters added up (None when no shard has any)."""
    total: dict[str, Any] | None = None
    for part in parts:
        if part:
            total = total or {}
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    return total


def settings_for(generator: Any, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``generator.settings()`` as if exactly the samples counted in ``stats`` had been drawn (none by default).

    ``Generator.settings()`` reports running counters (e.g. the mean quality score) of whatever that object drew;
    a sharded run sums each shard's own counters instead, so the stored settings do not depend on kills, resumes
    or the number of processes."""
    with stats_set_to(generator, stats):
        return generator.settings()


def run_fingerprint(generator: Any) -> tuple[str, dict[str, Any]]:
    """``(hash, fields)`` of what a run makes: the :class:`~diffsynth.generation.GenerationConfig` minus run-only
    fields (batch size, device, progress, num_images - compared on its own), plus the resolved model, pipeline,
    scheduler and sizes. Two runs with the same fingerprint make the same sample ``i``."""
    config = generator.config.to_dict()
    for name in RUN_ONLY_FIELDS:
        config.pop(name, None)
    config["masker"] = {k: v for k, v in config.get("masker", {}).items() if k not in RUN_ONLY_MASKER_FIELDS}
    settings = settings_for(generator)
    config["resolved"] = {k: settings.get(k) for k in RESOLVED_SETTINGS}
    fields = canonical(config)
    return _digest(fields), fields


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and not ({"items", "sha256"} == set(value) or "image_sha256" in value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(
    manifest: Mapping[str, Any],
    fields: Mapping[str, Any],
    layout: ShardLayout,
    labels: tuple[str, str] = ("folder has", "now"),
) -> list[str]:
    """``"<field>: folder has <a>, now <b>"`` for every field that differs (dotted names for nested ones)."""
    was, now_label = labels
    diffs = []
    for name, now in (("num_images", layout.num_images), ("shard_size", layout.shard_size)):
        if manifest.get(name) != now:
            diffs.append(f"{name}: {was} {_short(manifest.get(name))}, {now_label} {_short(now)}")
    old, new = _flatten(manifest.get("config", {})), _flatten(dict(fields))
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            shown_a = "(absent)" if a is _MISSING else _short(a)
            shown_b = "(absent)" if b is _MISSING else _short(b)
            diffs.append(f"{key}: {was} {shown_a}, {now_label} {shown_b}")
    return diffs
