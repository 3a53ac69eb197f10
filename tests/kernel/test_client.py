"""The kernel's API client on its own, against a stand-in transport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection


def client_answering(body: Any, seen: list[httpx.Request]) -> VlabClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=json.dumps(body).encode())

    client = VlabClient(Connection("http://vlab.test", "vlab_token"))
    client._http = httpx.Client(base_url="http://vlab.test", transport=httpx.MockTransport(handler))
    return client


def test_results_table_asks_for_the_columns_layout() -> None:
    seen: list[httpx.Request] = []
    client = client_answering({"columns": ["id", "latency_mean_s"], "data": [["a", 0.1]]}, seen)
    assert client.results_table(engine="onnxruntime", model=None) == (
        ["id", "latency_mean_s"], [["a", 0.1]])
    assert seen[0].url.params["format"] == "columns"
    assert seen[0].url.params["engine"] == "onnxruntime" and "model" not in seen[0].url.params


@pytest.mark.parametrize("rows", [[], [{"id": "a", "x": 1}, {"id": "b", "y": 2}]])
def test_results_table_reads_a_server_without_the_columns_layout(
        rows: list[dict[str, Any]]) -> None:
    columns, data = client_answering(rows, []).results_table()
    assert [dict(zip(columns, values, strict=True)) for values in data] == [
        {k: row.get(k) for k in columns} for row in rows]
    assert columns == list(dict.fromkeys(k for row in rows for k in row))
