"""The results table behind `/api/results`: one row per benchmark, metrics as columns.

Tens of thousands of rows must reach a DataFrame in a fraction of a second, so rows are read
as plain columns (no ORM objects), the metrics as the JSON text the database stores, and both
parsing and serialisation go through orjson. Two layouts: `records` (a list of objects, the
default) and `columns` (`{"columns": [...], "data": [[...], ...]}`: each name sent once, what
`pandas.DataFrame(data, columns=columns)` takes directly).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from sqlalchemy import Select, Text, cast
from sqlalchemy.engine import Row

from vlab_backend.store.schema import Benchmark

Layout = Literal["records", "columns"]

# Column name in the table -> database column; the flat metrics follow.
FIXED_COLUMNS = {
    "id": Benchmark.id, "status": Benchmark.status, "target": Benchmark.target_type,
    "target_uid": Benchmark.target_uid, "engine": Benchmark.engine,
    "benchmark_type": Benchmark.benchmark_type, "model": Benchmark.model_filename,
    "model_sha256": Benchmark.model_sha256, "nb_inference_requested": Benchmark.nb_inference,
    "created_at": Benchmark.created_at, "finished_at": Benchmark.finished_at,
    "message": Benchmark.message, "name": Benchmark.name, "tags": Benchmark.tags,
    "notes": Benchmark.notes,
}
NAMES = list(FIXED_COLUMNS)
# `tags` is a JSON column: read back as a list (never its text), so both layouts send a list.
TAGS = NAMES.index("tags")


def table_query(query: Select[Any]) -> Any:
    """`query` (a filtered select of benchmarks) reduced to the table's columns."""
    return query.with_only_columns(*FIXED_COLUMNS.values(), cast(Benchmark.metrics, Text))


def _metrics(text: str | None) -> dict[str, Any]:
    value = orjson.loads(text) if text else None
    return value if isinstance(value, dict) else {}


def _identity(row: Row[Any], fixed: int) -> list[Any]:
    """The fixed columns of a row; tags a list even where the store holds JSON null."""
    values = list(row[:fixed])
    if not isinstance(values[TAGS], list):
        values[TAGS] = []
    return values


def encode(rows: list[Row[Any]], layout: Layout) -> bytes:
    """The JSON body for `rows` of `table_query`."""
    fixed = len(NAMES)
    metrics = [_metrics(row[fixed]) for row in rows]
    identities = [_identity(row, fixed) for row in rows]
    if layout == "records":
        records = []
        for identity, values in zip(identities, metrics, strict=True):
            record = dict(zip(NAMES, identity, strict=True))
            record.update(values)
            records.append(record)
        return orjson.dumps(records)
    keys: dict[str, None] = {}  # every metric that any row has, in first-seen order
    for values in metrics:
        keys.update(dict.fromkeys(values))
    data = [[*identity, *map(values.get, keys)]
            for identity, values in zip(identities, metrics, strict=True)]
    return orjson.dumps({"columns": [*NAMES, *keys], "data": data})
