"""A review session: one dataset, the order samples are shown in, and the samples the user rejected.

Kept apart from the web UI so every callback is a plain method that tests call directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from diffsynth import quality_scores
from segcontract import Category, ContractError, read_categories
from segreview.card import review_card
from segreview.paths import Roots
from segreview.render import SampleView, raw_row, render_sample
from segreview.source import open_dataset
from segreview.stats import ClassStats, class_statistics, row_classes, void_fractions

__all__ = ["SORTS", "ReviewSession"]

#: Sort orders of the review tab.
SORTS = ("index", "quality, worst first", "quality, best first", "ignore share, most first")
_NO_SCORE = float("inf")


def _scores(dataset: datasets.Dataset) -> list[dict[str, Any] | None]:
    """Stored (or recomputed) quality scores; a dataset that diffsynth did not write may have none."""
    try:
        return list(quality_scores(dataset))
    except (ContractError, KeyError, ValueError, TypeError):
        return [None] * len(dataset)


@dataclass
class ReviewSession:
    """The state behind the review tab (see the module docstring)."""

    dataset: datasets.Dataset
    source: str
    categories: list[Category]
    quality: list[dict[str, Any] | None]
    void: list[float]
    classes: list[set[int]]
    order: list[int] = field(default_factory=list)
    position: int = 0
    rejected: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.order:
            self.order = list(range(len(self.dataset)))

    @classmethod
    def open(cls, source: str, roots: Roots | None = None) -> ReviewSession:
        """A session on the dataset at ``source`` (folder or Hub id), every sample shown in index order."""
        dataset = open_dataset(source, roots)
        if len(dataset) == 0:
            raise ValueError(f"{source!r} holds no sample.")
        return cls(
            dataset=dataset,
            source=str(source),
            categories=read_categories(dataset),
            quality=_scores(dataset),
            void=void_fractions(dataset),
            classes=row_classes(dataset),
        )

    # ------------------------------------------------------------------------------------------ order, paging
    def overall(self, index: int) -> float:
        score = self.quality[index]
        value = score.get("overall") if score else None
        return _NO_SCORE if value is None else float(value)

    def arrange(
        self, class_name: str | None = None, min_quality: float | None = None, sort: str = "index"
    ) -> int:
        """Show only rows with ``class_name`` and ``overall >= min_quality``, in ``sort`` order; the count."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {SORTS}, got {sort!r}.")
        wanted = None
        if class_name:
            matches = [c.id for c in self.categories if c.name == class_name]
            if not matches:
                raise ValueError(
                    f"no class {class_name!r}; the classes are {[c.name for c in self.categories]}."
                )
            wanted = matches[0]
        rows = [
            i
            for i in range(len(self.dataset))
            if (wanted is None or wanted in self.classes[i])
            and (min_quality is None or (self.overall(i) != _NO_SCORE and self.overall(i) >= min_quality))
        ]
        keys = {
            "index": lambda i: i,
            "quality, worst first": lambda i: self.overall(i),
            "quality, best first": lambda i: -self.overall(i) if self.overall(i) != _NO_SCORE else _NO_SCORE,
            "ignore share, most first": lambda i: -self.void[i],
        }
        self.order = sorted(rows, key=keys[sort])
        self.position = 0
        return len(self.order)

    def move(self, step: int) -> int | None:
        """Go ``step`` samples forward (negative: back), clamped to the shown ones; the row index."""
        if self.order:
            self.position = min(max(self.position + int(step), 0), len(self.order) - 1)
        return self.current

    def go(self, position: int) -> int | None:
        """Go to the ``position``-th shown sample (0-based, clamped); the row index."""
        self.position = 0
        return self.move(position)

    @property
    def current(self) -> int | None:
        return self.order[self.position] if self.order else None

    # --------------------------------------------------------------------------------------------- showing
    def attention_names(self) -> list[str]:
        """Names of the stored attention maps: the target classes, the background left out (diffsynth's order)."""
        return [c.name for c in self.categories if c.name != "background"]

    def view(self) -> SampleView | None:
        index = self.current
        if index is None:
            return None
        return render_sample(
            raw_row(self.dataset, index), self.categories, self.quality[index], self.attention_names()
        )

    def status(self) -> str:
        index = self.current
        if index is None:
            return f"No sample matches ({len(self.dataset)} in the dataset)."
        mark = " · REJECTED" if index in self.rejected else ""
        return (
            f"Sample {self.position + 1} of {len(self.order)} shown (row {index} of {len(self.dataset)}) · "
            f"{len(self.rejected)} rejected{mark}"
        )

    def statistics(self, kept_only: bool = False) -> list[ClassStats]:
        indices = self.kept() if kept_only else None
        return class_statistics(self.dataset, self.categories, indices)

    # ---------------------------------------------------------------------------------- rejecting, saving
    def toggle_reject(self) -> bool:
        """Reject the current sample, or take it back; whether it is now rejected."""
        index = self.current
        if index is None:
            return False
        if index in self.rejected:
            self.rejected.discard(index)
            return False
        self.rejected.add(index)
        return True

    def kept(self) -> list[int]:
        return [i for i in range(len(self.dataset)) if i not in self.rejected]

    def save(self, output: str | Path, roots: Roots | None = None) -> Path:
        """Write the kept rows as a new dataset (``save_to_disk``) with a card naming the rejected ids.

        The original is never touched: ``output`` must be a new or empty folder outside the source."""
        out = roots.resolve(output) if roots is not None else Path(output).resolve()
        source = Path(self.source).expanduser()
        if source.exists() and (out == source.resolve() or out.is_relative_to(source.resolve())):
            raise ValueError(f"{out} is inside the dataset under review; pick a new folder.")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty; pick a new folder.")
        kept = self.dataset.select(self.kept())
        kept.save_to_disk(str(out))
        rejected = sorted(self.rejected)
        ids = raw_ids(self.dataset, rejected)
        (out / "README.md").write_text(review_card(self.source, len(self.dataset), ids), encoding="utf-8")
        (out / "review.json").write_text(
            json.dumps({"source": self.source, "rejected": ids, "kept": len(kept)}, indent=2) + "\n",
            encoding="utf-8",
        )
        return out


def raw_ids(dataset: datasets.Dataset, rows: list[int]) -> list[dict[str, Any]]:
    """``{"row", "image_id", "file_name"}`` of each row."""
    if not rows:
        return []
    table = dataset.select_columns(["image_id", "file_name"]).select(rows).with_format("arrow")[:]
    return [
        {"row": r, "image_id": i, "file_name": f}
        for r, i, f in zip(rows, table.column("image_id").to_pylist(), table.column("file_name").to_pylist())
    ]
