"""Results tables to files: CSV for spreadsheets, Parquet for data tools.

`export_table` is shared by `Lab.export`, `vlab results --output` and the widgets. The file
type follows the suffix. A run's tags are one ';'-joined cell in CSV (tags never hold ';')
and a list of strings in Parquet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

SUFFIXES = (".csv", ".parquet")
TAG_SEPARATOR = ";"


def export_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write `frame` to `path` as CSV or Parquet, by its suffix (any case); returns the
    path. A ValueError names the suffixes allowed, before anything is written."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot export to {target.name!r}: the file name must end in "
                         f"{' or '.join(SUFFIXES)}")
    table = frame.reset_index(drop=True)
    if "tags" in table:
        tags = table["tags"].map(_tags)
        table = table.assign(tags=tags.map(TAG_SEPARATOR.join) if suffix == ".csv" else tags)
    if suffix == ".csv":
        table.to_csv(target, index=False)
    else:
        _parquet_ready(table).to_parquet(target, index=False)
    return target


def _tags(value: Any) -> list[str]:
    """A cell of the tags column as a list (a row without tags: empty)."""
    if isinstance(value, str):
        return [tag for tag in value.split(TAG_SEPARATOR) if tag]
    if value is None or isinstance(value, float):  # None or NaN: no tags
        return []
    return [str(tag) for tag in value]


def _parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that Parquet cannot type (mixed values, e.g. a metric that is a number in one
    run and text in another) become text: JSON for lists and objects."""
    import pyarrow as pa

    fixed = {}
    for column in table.columns:
        if table[column].dtype != object or column == "tags":
            continue
        try:
            pa.array(table[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            fixed[column] = table[column].map(_as_text)
    return table.assign(**fixed) if fixed else table


def _as_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)
