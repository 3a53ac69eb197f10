"""Submitting benchmarks to a live server and following them the way the kernel does: through
the event stream, so that no status polling runs beside the measured inferences."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.server import LiveServer
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection

TERMINAL = ("success", "failed", "canceled")


def submit(client: httpx.Client, model: Path, **fields: Any) -> str:
    """Submit `model` (ONNX Runtime on host-cpu, 5 runs unless `fields` say otherwise)."""
    data = {"device": "host-cpu", "engine": "onnxruntime", "nb_inference": "5"}
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    with model.open("rb") as handle:
        response = client.post("/api/benchmarks/run", data=data,
                               files={"model": (model.name, handle)})
    response.raise_for_status()
    return str(response.json()["id"])


def follow(server: LiveServer, bench_id: str) -> tuple[float, dict[str, Any]]:
    """Wait through the event stream; the time the terminal event arrived, and the info."""
    client = VlabClient(Connection(server.url, server.token))
    arrived = None
    for event in client.events(bench_id):
        if event.get("event") == "status" and event["status"] in TERMINAL:
            arrived = time.time()
            break
    info = client.benchmark(bench_id)
    assert arrived is not None and info["status"] in TERMINAL, info
    return arrived, info
