"""The one validator of the contract: schema, categories, then every row (decoding every image when ``deep``)."""

from __future__ import annotations

from typing import Any

import datasets

from segcontract.categories import read_categories
from segcontract.category import Category
from segcontract.columns import COLUMNS, IMAGE_COLUMNS
from segcontract.errors import ContractError
from segcontract.row_check import check_fields, decode_row, row_label
from segcontract.rows import iter_raw_rows
from segcontract.schema_check import check_features

__all__ = ["UniqueRows", "validate"]


class UniqueRows:
    """Remembers the row of every ``image_id`` and ``file_name`` seen so far; :meth:`check` refuses repeats."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.names: dict[Any, int] = {}

    def check(self, where: str, index: int, row: dict[str, Any]) -> None:
        if row["image_id"] in self.ids:
            raise ContractError(
                f"{where}: image_id {row['image_id']} repeats row {self.ids[row['image_id']]}; image ids must be unique."
            )
        self.ids[row["image_id"]] = index
        if row.get("file_name") in self.names:
            raise ContractError(
                f"{where}: file_name {row['file_name']!r} repeats row {self.names[row['file_name']]}; names must be unique."
            )
        self.names[row.get("file_name")] = index


def _check_container(dataset: Any, name: str) -> None:
    if isinstance(dataset, datasets.DatasetDict):
        raise ContractError(
            f"{name} is a DatasetDict with splits {list(dataset)}; pick one, e.g. dataset['train']."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise ContractError(f"{name} must be a datasets.Dataset, got {type(dataset).__name__}.")


def validate(
    dataset: datasets.Dataset,
    categories: Any = None,
    *,
    deep: bool = True,
    name: str = "dataset",
    max_errors: int = 10,
    max_rows: int | None = None,
) -> list[Category]:
    """Check ``dataset`` against the contract and return its categories.

    ``deep=True`` decodes every image, panoptic and semantic PNG (catching corrupt bytes, size mismatches, segment
    ids absent from the PNG, areas that disagree with it); ``deep=False`` checks the schema and the annotation fields
    only. ``max_rows`` limits the row checks to the first rows. Up to ``max_errors`` problems are collected and
    raised together as one :class:`ContractError`.
    """
    _check_container(dataset, name)
    check_features(dataset.features, name=name)
    cats = read_categories(dataset, categories)
    if len(dataset) == 0:
        raise ContractError(f"{name} has no rows; a training or evaluation split needs at least one image.")
    errors: list[str] = []
    unique = UniqueRows()
    columns = list(COLUMNS) if deep else [c for c in COLUMNS if c not in IMAGE_COLUMNS]
    rows = dataset if max_rows is None else dataset.select(range(min(max_rows, len(dataset))))
    for index, row in iter_raw_rows(rows, columns):
        where = row_label(name, index, row)
        try:
            unique.check(where, index, row)
            if deep:
                decode_row(index, row, len(cats), name=name, categories=cats)
            else:
                check_fields(where, row, len(cats), cats)
        except ContractError as err:
            errors.append(str(err))
            if len(errors) >= max_errors:
                break
    if errors:
        more = f" (stopped after the first {max_errors})" if len(errors) >= max_errors else ""
        raise ContractError(
            f"{name} breaks the dataset contract in {len(errors)} row(s){more}:\n- " + "\n- ".join(errors)
        )
    return cats
