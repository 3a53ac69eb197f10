"""Target instances with their live state and the queue per target type."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from vlab_backend.api import sse
from vlab_backend.api.schemas import ERRORS, Overview, TargetOverview
from vlab_backend.api.state import SessionDep, StateDep, UserDep
from vlab_backend.api.views import instance_view
from vlab_backend.events import ALL
from vlab_backend.store.schema import ACTIVE_STATUSES, Benchmark, Status, TargetInstance

router = APIRouter(tags=["targets"], responses=ERRORS)


@router.get("/api/targets/events", response_class=StreamingResponse,
            responses=sse.STREAM_RESPONSE)
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
def overview(session: SessionDep, user: UserDep) -> Overview:
    """Every target type: its instances (busy/free), engines, and queue length."""
    instances = session.scalars(select(TargetInstance).where(
        TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
    running = dict(session.execute(select(Benchmark.target_uid, Benchmark.id).where(
        Benchmark.status.in_(ACTIVE_STATUSES))).tuples().all())
    queued = dict(session.execute(
        select(Benchmark.target_type, func.count()).where(Benchmark.status == Status.PENDING)
        .group_by(Benchmark.target_type)).tuples().all())
    by_type: dict[str, list[TargetInstance]] = {}
    for instance in instances:
        by_type.setdefault(instance.target_type, []).append(instance)
    targets = []
    for target_type, members in by_type.items():
        views = [instance_view(i, running.get(i.uid)) for i in members]
        busy = sum(1 for view in views if view.state == "busy")
        targets.append(TargetOverview(
            target=target_type, instances=views,
            engines=sorted({name for i in members for name in i.engines}),
            queue_length=queued.get(target_type, 0), busy=busy, free=len(views) - busy))
    return Overview(targets=targets)
