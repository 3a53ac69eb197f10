"""JSON views of stored rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vlab_backend.store.schema import Benchmark, TargetInstance


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def benchmark_view(bench: Benchmark) -> dict[str, Any]:
    return {
        "id": bench.id,
        "status": bench.status,
        "message": bench.message,
        "device": bench.target_type,
        "platform": bench.target_type,
        "engine": bench.engine,
        "benchmark_type": bench.benchmark_type,
        "nb_inference": bench.nb_inference,
        "target_uid": bench.target_uid,
        "model": bench.model_filename,
        "model_sha256": bench.model_sha256,
        "dataset_name": bench.dataset_name,
        "parameters": bench.parameters,
        "public": bench.public,
        "progress": {"phase": bench.progress_phase, "done": bench.progress_done,
                     "total": bench.progress_total},
        "artifacts": bench.artifacts,
        "metrics": bench.metrics,
        "created_at": _iso(bench.created_at),
        "started_at": _iso(bench.started_at),
        "finished_at": _iso(bench.finished_at),
    }


def instance_view(instance: TargetInstance, running: str | None) -> dict[str, Any]:
    return {
        "target_uid": instance.uid, "target": instance.target_type, "host": instance.host,
        "cpuset": instance.cpuset, "memory": instance.memory, "enabled": instance.enabled,
        "engines": {name: {"version": offer.get("version", ""),
                           "supported_types": offer.get("supported_types", [])}
                    for name, offer in instance.engines.items()},
        "state": "busy" if running else "free", "benchmark_id": running,
    }
