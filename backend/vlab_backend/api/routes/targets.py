"""Target instances with their live state and the queue per target type."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from vlab_backend.api import sse
from vlab_backend.api.state import StateDep, UserDep
from vlab_backend.api.views import instance_view
from vlab_backend.events import ALL
from vlab_backend.store.schema import ACTIVE_STATUSES, Benchmark, TargetInstance

router = APIRouter(tags=["targets"])


@router.get("/api/targets/events")
async def target_events(state: StateDep, user: UserDep) -> StreamingResponse:
    """Server-sent `{"event": "targets"}` whenever an instance or a queue changes, so that
    target boards refresh without polling. Carries no benchmark details."""

    changed = {"event": "targets"}

    async def stream() -> AsyncIterator[str]:
        async with state.hub.subscribe(ALL) as queue:
            yield sse.message(changed)
            async for chunk in sse.relay(
                    queue, lambda event: changed if event.get("event") == "status" else None,
                    lambda _event: False):
                yield chunk

    return sse.event_stream(stream())


@router.get("/api/targets/overview")
def overview(state: StateDep, user: UserDep) -> dict[str, Any]:
    """Every target type: its instances (busy/free), engines, and queue length."""
    with state.db.session() as session:
        instances = session.scalars(select(TargetInstance).where(
            TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
        running = dict(session.execute(select(Benchmark.target_uid, Benchmark.id).where(
            Benchmark.status.in_(ACTIVE_STATUSES))).tuples().all())
        queued = dict(session.execute(
            select(Benchmark.target_type, func.count()).where(Benchmark.status == "pending")
            .group_by(Benchmark.target_type)).tuples().all())
    targets: dict[str, Any] = {}
    for instance in instances:
        entry = targets.setdefault(instance.target_type, {
            "target": instance.target_type, "instances": [], "engines": set(),
            "queue_length": queued.get(instance.target_type, 0)})
        entry["instances"].append(instance_view(instance, running.get(instance.uid)))
        entry["engines"].update(instance.engines)
    for entry in targets.values():
        entry["engines"] = sorted(entry["engines"])
        entry["busy"] = sum(1 for i in entry["instances"] if i["state"] == "busy")
        entry["free"] = len(entry["instances"]) - entry["busy"]
    return {"targets": list(targets.values())}
