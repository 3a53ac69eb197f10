"""`export_table`: a results selection to CSV or Parquet, tags as text or as a list."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from vlab_kernel.export import export_table


def frame() -> pd.DataFrame:
    """What `lab.results()` gives: labels, a timestamp, metrics, and a metric that is a
    number in one run and text in another."""
    return pd.DataFrame({
        "id": ["a1", "b2", "c3"],
        "name": ["baseline", "", "int8 try"],
        "tags": [["fp32", "v1.2:rc_1"], [], None],
        "notes": ["first\nline", "", ""],
        "created_at": pd.to_datetime(["2026-01-01T10:00:00+00:00"] * 3, format="ISO8601"),
        "latency_mean_ms": [1.5, 2.25, None],
        "engine_version": ["1.18", 2.0, None],
    }, index=[7, 3, 9])  # a selection: its index is not 0..n-1


def test_csv_joins_tags_and_keeps_the_rows(tmp_path: Path) -> None:
    written = export_table(frame(), tmp_path / "runs.csv")
    assert written == tmp_path / "runs.csv"
    back = pd.read_csv(written, keep_default_na=False)
    assert list(back.columns) == list(frame().columns)  # no index column
    assert list(back["tags"]) == ["fp32;v1.2:rc_1", "", ""]
    assert list(back["id"]) == ["a1", "b2", "c3"]
    assert back.loc[0, "notes"] == "first\nline"


def test_parquet_keeps_tags_a_list(tmp_path: Path) -> None:
    written = export_table(frame().iloc[:2], str(tmp_path / "runs.PARQUET"))
    assert written == tmp_path / "runs.PARQUET"
    back = pd.read_parquet(written)
    assert [list(tags) for tags in back["tags"]] == [["fp32", "v1.2:rc_1"], []]
    schema = pq.read_schema(written)
    assert str(schema.field("tags").type) in ("list<element: string>", "list<item: string>")
    assert back["created_at"].dt.tz is not None
    assert list(back["engine_version"]) == ["1.18", "2.0"]  # mixed values become text
    assert back["latency_mean_ms"].tolist() == [1.5, 2.25]


def test_rows_without_tags_export_with_empty_ones(tmp_path: Path) -> None:
    back = pd.read_parquet(export_table(frame(), tmp_path / "runs.parquet"))
    assert [list(tags) for tags in back["tags"]] == [["fp32", "v1.2:rc_1"], [], []]


def test_a_frame_without_tags_exports_as_is(tmp_path: Path) -> None:
    plain = pd.DataFrame({"id": ["x"], "latency_mean_s": [0.01]})
    assert pd.read_csv(export_table(plain, tmp_path / "p.csv")).equals(plain)
    assert pd.read_parquet(export_table(plain, tmp_path / "p.parquet")).equals(plain)


@pytest.mark.parametrize("name", ["runs.xlsx", "runs", "runs.csv.gz", "runs.json"])
def test_other_suffixes_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet"):
        export_table(frame(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
