"""Dataset card, a Hub-style repo folder, and a one-commit upload.

:func:`stage_repo` writes exactly what the Hub should hold, in the layout ``Dataset.push_to_hub`` uses, so
``datasets.load_dataset(folder)`` and ``load_dataset("user/repo")`` read it back with the Features (and with them the
categories and settings) intact::

    README.md                          card: YAML metadata (task, licence, dataset_info, configs) + body
    data/<split>-00000-of-0000N.parquet
    categories.json, id2label.json     category list (thing/stuff, colours) and transformers' id2label
    health.json                        the health report of every split
    preview.png                        overlays of a few rows with a legend

:func:`push_to_hub` stages that folder in a temporary directory and uploads it with one ``HfApi.upload_folder`` call
(one commit; old shards of the pushed splits are deleted in the same commit). The token is handed to ``HfApi`` only:
it is never logged, written to a file or put in the card, and settings keys that look like secrets are dropped
before anything is stored (see :mod:`diffsynth.schema`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, DatasetDict, SplitInfo
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict
from datasets.table import embed_table_storage
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from huggingface_hub import constants as hub_constants

from diffsynth.categories import Category
from diffsynth.dataset import categories_of, settings_of
from diffsynth.health import format_health, health_report
from diffsynth.preview import preview_grid
from segcontract import check_hub_write, hub_errors, write_category_files

__all__ = [
    "MAX_SHARD_BYTES",
    "check_push_access",
    "dataset_card",
    "is_repo_id",
    "license_for",
    "push_to_hub",
    "stage_and_upload",
    "stage_repo",
    "write_repo_files",
]

MAX_SHARD_BYTES = 500 * 1024 * 1024
#: Substring of a model id -> Hub licence id of the images it makes (the model licence governs generated data).
MODEL_LICENSES = (
    ("stable-diffusion-xl", "openrail++"),
    ("sdxl", "openrail++"),
    ("stable-diffusion-2", "openrail++"),
    ("sd2-community", "openrail++"),
    ("stable-diffusion-v1", "creativeml-openrail-m"),
    ("stable-diffusion-1", "creativeml-openrail-m"),
)
_SPLIT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _splits(ds: Dataset | Mapping[str, Dataset], split: str) -> dict[str, Dataset]:
    splits = dict(ds) if isinstance(ds, Mapping | DatasetDict) else {split: ds}
    if not splits:
        raise ValueError("No split to stage; pass a Dataset or a non-empty DatasetDict.")
    for name, part in splits.items():
        if not name or set(name) - _SPLIT_CHARS:
            raise ValueError(
                f"Split name {name!r} must use letters, digits and '_' only (the Hub's split names)."
            )
        if not isinstance(part, Dataset):
            raise TypeError(f"Split {name!r} is a {type(part).__name__}; stage datasets.Dataset objects.")
    names = {n: [c.name for c in categories_of(d)] for n, d in splits.items()}
    first = next(iter(names.values()))
    for name, cats in names.items():
        if cats != first:
            raise ValueError(
                f"Split {name!r} has categories {cats}, others {first}; all splits must share them."
            )
    return splits


def license_for(settings: Mapping[str, Any]) -> str:
    """The card licence: ``settings['license']``, else the one of the SD model in ``settings['model']``, else other."""
    if settings.get("license"):
        return str(settings["license"])
    model = str(settings.get("model") or settings.get("model_id") or "").lower()
    for key, license_id in MODEL_LICENSES:
        if key in model:
            return license_id
    return "other"


def _size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M"


def _card_data(
    splits: dict[str, Dataset], settings: Mapping[str, Any], pretty_name: str | None
) -> DatasetCardData:
    sources = set()
    for part in splits.values():
        sources.update(part.unique("source"))
    creators = (["machine-generated"] if "synthetic" in sources else []) + (
        ["found"] if "real" in sources else []
    )
    tags = ["diffsynth", "coco-panoptic", "referring-expressions"]
    if "synthetic" in sources:
        tags[:0] = ["synthetic", "stable-diffusion"]
    data = DatasetCardData(
        license=license_for(settings),
        task_categories=["image-segmentation"],
        task_ids=["semantic-segmentation", "instance-segmentation", "panoptic-segmentation"],
        annotations_creators=creators or ["machine-generated"],
        language=["en"],
        size_categories=[_size_category(sum(len(p) for p in splits.values()))],
        tags=tags,
        pretty_name=pretty_name or settings.get("pretty_name"),
    )
    first = next(iter(splits.values()))
    # the same dataset_info/configs blocks Dataset.push_to_hub writes
    info = DatasetInfo(features=first.features, config_name="default", splits=SplitDict())
    for name, part in splits.items():
        info.splits.add(SplitInfo(name=name, num_examples=len(part), num_bytes=part.data.nbytes))
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    MetadataConfigs(
        {"default": {"data_files": [{"split": n, "path": f"data/{n}-*"} for n in splits]}}
    ).to_dataset_card_data(data)
    return data


def dataset_card(
    ds: Dataset | Mapping[str, Dataset],
    *,
    split: str = "train",
    health: Mapping[str, Any] | None = None,
    preview: str | None = "preview.png",
    pretty_name: str | None = None,
) -> DatasetCard:
    """The dataset card (YAML metadata + Markdown body) for ``ds`` (a Dataset, or a dict of splits)."""
    splits = _splits(ds, split)
    first = next(iter(splits.values()))
    settings = settings_of(first)
    reports = dict(health) if health is not None else {n: health_report(p) for n, p in splits.items()}
    title = pretty_name or settings.get("pretty_name") or "Synthetic segmentation dataset"
    lines = _intro_lines(title, splits, preview)
    lines += _class_lines(categories_of(first))
    lines += _format_lines("attention" in first.column_names)
    for name, report in reports.items():
        lines += [f"### {name}", "", format_health(report), ""]
    lines += _settings_lines(settings)
    lines += _licence_lines(license_for(settings))
    data = _card_data(splits, settings, pretty_name)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _intro_lines(title: str, splits: Mapping[str, Dataset], preview: str | None) -> list[str]:
    """Title, what the data is, how to load it, the preview and the split sizes."""
    lines = [
        f"# {title}",
        "",
        "Images with COCO-panoptic, semantic and referring-expression (grounding) annotations"
        + (
            ", drawn by Stable Diffusion with masks from its own attention, made with "
            "[diffsynth](https://pypi.org/project/diffsynth/)."
            if any("synthetic" in p.unique("source") for p in splits.values())
            else ", converted with diffsynth."
        ),
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("<this repo>")',
        "```",
        "",
    ]
    if preview:
        lines += ["![preview](" + preview + ")", ""]
    lines += ["## Splits", "", "| split | images |", "|---|---|"]
    lines += [f"| {n} | {len(p)} |" for n, p in splits.items()]
    return lines


def _class_lines(categories: Sequence[Category]) -> list[str]:
    lines = [
        "",
        "## Classes",
        "",
        "| index | COCO id | name | type | colour | synonyms |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(categories):
        color = "#{:02x}{:02x}{:02x}".format(*c.color) if c.color else ""
        lines.append(
            f"| {i} | {i + 1} | {c.name} | {'thing' if c.isthing else 'stuff'} | {color} | {', '.join(c.synonyms)} |"
        )
    return lines


def _format_lines(with_attention: bool) -> list[str]:
    """The columns, and the heading of the health section that follows."""
    lines = [
        "",
        "## Format",
        "",
        "- `image`: RGB image; `image_id`, `file_name`, `width`, `height`.",
        "- `panoptic`: RGB PNG, COCO panoptic encoding `id = R + 256 G + 256^2 B`, `0` = void (unlabelled or uncertain).",
        "- `segments_info`: one record per segment: `id`, `category_id` (ClassLabel, the index above), `iscrowd`, "
        "`bbox` `[x, y, w, h]`, `area`, `isthing`.",
        "- `semantic`: L PNG with the class index, `255` = ignore (uncertain).",
        "- `grounding`: referring sentences per segment (`segment_id`, `sentences`). Sentences use left/right words: "
        "swap them (or disable flips) under horizontal-flip augmentation.",
        "- `prompt`, `seed` (per sample; `-1` for real images), `source` (`synthetic` or `real`).",
    ]
    if with_attention:
        lines.append(
            "- `attention`: one 8-bit PNG per target class, the soft attention map times 255, to re-threshold "
            "without regenerating."
        )
    lines += [
        "",
        "`categories.json` (thing/stuff, colours) and `id2label.json` sit beside the data; the same category list "
        "rides in the Features, so `diffsynth.dataset.categories_of(ds)` reads it from the dataset alone.",
        "",
        "## Health",
        "",
    ]
    return lines


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    if not settings:
        return []
    return [
        "## Generation settings",
        "",
        "```yaml",
        yaml.safe_dump(json.loads(json.dumps(dict(settings), default=str)), sort_keys=True).rstrip(),
        "```",
        "",
    ]


def _licence_lines(license_id: str) -> list[str]:
    return [
        "## Licence",
        "",
        f"`{license_id}`"
        + (
            ": generated images inherit the licence and use restrictions of the Stable Diffusion model that made "
            "them."
            if license_id != "other"
            else "."
        ),
        "",
    ]


def _write_parquet(part: Dataset, data_dir: Path, split: str, max_shard_bytes: int) -> list[Path]:
    num_shards = max(1, math.ceil(part.data.nbytes / max_shard_bytes)) if len(part) else 1
    num_shards = min(num_shards, max(1, len(part)))
    paths = []
    for index in range(num_shards):
        shard = part.shard(num_shards=num_shards, index=index, contiguous=True)
        # Embed files referenced by path (e.g. a dataset read from disk) so the parquet is self-contained.
        shard = shard.with_format("arrow").map(
            embed_table_storage, batched=True, keep_in_memory=True, features=part.features
        )
        shard = shard.with_format(None)
        path = data_dir / f"{split}-{index:05d}-of-{num_shards:05d}.parquet"
        shard.to_parquet(str(path))
        paths.append(path)
    return paths


def stage_repo(
    ds: Dataset | Mapping[str, Dataset],
    folder: str | os.PathLike,
    *,
    split: str = "train",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    preview_rows: int = 8,
    pretty_name: str | None = None,
) -> Path:
    """Write a Hub-style dataset repo for ``ds`` (a Dataset named ``split``, or a dict of splits) into ``folder``."""
    splits = _splits(ds, split)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_dir = folder / "data"
    data_dir.mkdir(exist_ok=True)
    for name, part in splits.items():
        for stale in data_dir.glob(f"{name}-*.parquet"):
            stale.unlink()
        _write_parquet(part, data_dir, name, max_shard_bytes)
    write_repo_files(folder, splits, preview_rows=preview_rows, pretty_name=pretty_name)
    return folder


def write_repo_files(
    folder: Path, splits: Mapping[str, Dataset], *, preview_rows: int = 8, pretty_name: str | None = None
) -> None:
    """Write what a staged repo holds beside its parquet files: category files, ``health.json``, the preview of
    the first split's first ``preview_rows`` rows (none when 0) and the card ``README.md``."""
    first = next(iter(splits.values()))
    write_category_files(categories_of(first), folder)
    reports = {n: health_report(p) for n, p in splits.items()}
    (folder / "health.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    preview = None
    if preview_rows > 0 and len(first):
        preview_grid(first, n=preview_rows).save(folder / "preview.png", format="PNG")
        preview = "preview.png"
    card = dataset_card(dict(splits), health=reports, preview=preview, pretty_name=pretty_name)
    (folder / "README.md").write_text(str(card), encoding="utf-8")


def push_to_hub(
    ds: Dataset | Mapping[str, Dataset],
    repo_id: str,
    *,
    split: str = "train",
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload dataset with diffsynth",
    revision: str | None = None,
    pretty_name: str | None = None,
) -> Any:
    """Create ``repo_id`` (a dataset repo) if needed and upload the staged repo in one commit.

    Returns the ``CommitInfo`` of the upload. ``token`` defaults to the saved login / ``HF_TOKEN``.
    """
    if not is_repo_id(repo_id):
        raise ValueError(f"`repo_id` must look like 'user/name', got {repo_id!r}.")
    splits = _splits(ds, split)
    return stage_and_upload(
        lambda tmp: stage_repo(splits, tmp, pretty_name=pretty_name),
        repo_id,
        token=token,
        private=private,
        commit_message=commit_message,
        revision=revision,
        splits=list(splits),
    )


def is_repo_id(value: Any) -> bool:
    """Whether ``value`` can name a Hub repo: ``name`` or ``user/name``."""
    return isinstance(value, str) and value.count("/") <= 1 and bool(value.strip("/"))


def stage_and_upload(
    stage: Callable[[str], Any],
    repo_id: str,
    *,
    token: str | None,
    private: bool,
    commit_message: str,
    revision: str | None,
    splits: Sequence[str],
) -> Any:
    """Stage a repo with ``stage(folder)`` in a temporary folder, create the dataset repo if needed and upload the
    folder in one commit (old shards of the pushed ``splits`` are deleted in the same commit)."""
    with tempfile.TemporaryDirectory(prefix="diffsynth-hub-") as tmp:
        stage(tmp)
        api = HfApi(token=token)
        with hub_errors(repo_id):  # no network, no rights: HubAccessError naming the repo
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                repo_type="dataset",
                folder_path=str(tmp),
                commit_message=commit_message,
                revision=revision,
                delete_patterns=[f"data/{name}-*" for name in splits],
            )


def check_push_access(repo_id: Any, token: str | bool | None = None, field: str = "push_to_hub") -> None:
    """Fail now (:class:`~segcontract.errors.HubAccessError` naming ``field``) unless ``token`` (default: the saved
    login / ``HF_TOKEN``) can write to ``repo_id``: called before the work whose result is pushed."""
    token = token if isinstance(token, str) else None
    check_hub_write(
        HfApi(token=token), repo_id, offline=hub_constants.HF_HUB_OFFLINE, field=field, repo_type="dataset"
    )
