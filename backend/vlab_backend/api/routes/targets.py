"""Target instances with their live state and the queue per target type.

Instances come from `vlab serve --targets` (or this machine's cores) and from the hosts that
registered their target configuration; those show their host and its node state. An instance
whose host is not ready (down, disconnected, draining, ineligible) is listed with that state
and is not scheduled.

Each instance also shows its health (`vlab_backend.health`): `unknown`, `healthy`, `degraded`
or `error`, with the evidence of its last health check; administrators and the instance's
owner ask for a check with `POST /api/targets/{uid}/check`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, or_, select

from vlab_backend.api import sse
from vlab_backend.api.schemas import ERRORS, InstanceView
from vlab_backend.api.state import SessionDep, StateDep, UserDep
from vlab_backend.api.views import instance_view
from vlab_backend.events import ALL
from vlab_backend.health import HealthError, Verdict, health_user_id
from vlab_backend.store.schema import (
    ACTIVE_STATUSES,
    Benchmark,
    HealthCheck,
    Status,
    TargetInstance,
    User,
)

router = APIRouter(tags=["targets"], responses=ERRORS)

InstanceState = Literal["busy", "free", "initializing", "down", "disconnected", "draining",
                        "ineligible"]


class InstanceStateView(InstanceView):
    """An instance with its host: `state` is busy or free while its host is ready, else the
    host's node state (the instance is then not scheduled)."""

    state: InstanceState  # type: ignore[assignment]
    host_state: str = Field(description="the host's Nomad node state ('ready' for instances "
                                        "of this server's own configuration)")
    remote: bool = Field(description="declared by a registered host (runs on Nomad)")
    health: str = Field(description="what its health checks found: unknown, healthy, "
                                    "degraded or error")
    health_detail: dict[str, Any] = Field(
        description="the evidence of its last health check: baseline and current medians "
                    "(s), ratio, p_value, verdict in words, check and benchmark ids, times")
    health_checking: bool = Field(description="a health check of it is queued or running")


class TargetTypeOverview(BaseModel):
    target: str
    instances: list[InstanceStateView]
    engines: list[str]
    queue_length: int = Field(description="benchmarks waiting for an instance of this type")
    busy: int
    free: int


class TargetsOverview(BaseModel):
    targets: list[TargetTypeOverview]


def instance_state_view(instance: TargetInstance, running: str | None,
                        checking: bool = False) -> InstanceStateView:
    base = instance_view(instance, running).model_dump()
    host_state = instance.state if instance.host_id is not None else "ready"
    if not instance.enabled and instance.state != "detached":
        base["state"] = instance.state
    return InstanceStateView(**base, host_state=host_state,
                             remote=instance.host_id is not None,
                             health=instance.health or "unknown",
                             health_detail=instance.health_detail or {},
                             health_checking=checking)


class CheckView(BaseModel):
    """One health check of an instance."""

    id: int
    target_uid: str
    benchmark_id: str = Field(description="its reference benchmark (owned by the system's "
                                          "health account; administrators open it by id)")
    reason: str = Field(description="joined, scheduled or on demand")
    rebaseline: bool
    verdict: str = Field(description="pending, baseline, healthy, degraded or failed")
    median_s: float | None
    detail: dict[str, Any]
    created_at: str | None
    finished_at: str | None


class InstanceHealth(BaseModel):
    target_uid: str
    health: str
    health_detail: dict[str, Any]
    checks: list[CheckView] = Field(description="newest first")


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
                    queue, lambda event: changed if event.get("event") in ("status", "targets")
                    else None,
                    lambda _event: False):
                yield chunk

    return sse.event_stream(stream())


@router.get("/api/targets/overview")
def overview(session: SessionDep, user: UserDep) -> TargetsOverview:
    """Every target type: its instances (busy/free, or their host's state when it is not
    ready), their host, engines, and queue length."""
    instances = session.scalars(select(TargetInstance).where(or_(
        TargetInstance.enabled.is_(True), TargetInstance.host_id.is_not(None)))
        .order_by(TargetInstance.uid)).all()
    running = {uid: bench_id for uid, bench_id in session.execute(
        select(Benchmark.target_uid, Benchmark.id).where(
            Benchmark.status.in_(ACTIVE_STATUSES)))}
    health_owner = health_user_id(session)
    queued = {target_type: count for target_type, count in session.execute(
        select(Benchmark.target_type, func.count()).where(
            Benchmark.status == Status.PENDING,
            Benchmark.owner_id != (health_owner if health_owner is not None else -1))
        .group_by(Benchmark.target_type))}
    checking = set(session.scalars(select(HealthCheck.instance_uid).where(
        HealthCheck.verdict == Verdict.PENDING)))
    by_type: dict[str, list[TargetInstance]] = {}
    for instance in instances:
        by_type.setdefault(instance.target_type, []).append(instance)
    targets = []
    for target_type, members in by_type.items():
        views = [instance_state_view(i, running.get(i.uid), i.uid in checking)
                 for i in members]
        busy = sum(1 for view in views if view.state == "busy")
        free = sum(1 for view in views if view.state == "free")
        targets.append(TargetTypeOverview(
            target=target_type, instances=views,
            engines=sorted({name for i in members for name in i.engines}),
            queue_length=queued.get(target_type, 0), busy=busy, free=free))
    return TargetsOverview(targets=targets)


def _may_check(session: SessionDep, user: User, uid: str) -> TargetInstance:
    instance = session.get(TargetInstance, uid)
    if instance is None:
        raise HTTPException(404, f"unknown target instance {uid!r}")
    if not user.is_admin and instance.owner_id != user.id:
        raise HTTPException(403, "only an administrator or the instance's owner may check it")
    return instance


@router.post("/api/targets/{uid}/check", status_code=202)
def request_check(uid: str, state: StateDep, session: SessionDep, user: UserDep,
                  rebaseline: bool = False) -> CheckView:
    """Run the instance's health check now (administrators and the instance's owner): its
    reference benchmark, compared with its baseline when it ends (`rebaseline`: this check
    becomes the new baseline). A check still open is returned instead of a second one."""
    _may_check(session, user, uid)
    session.commit()
    try:
        return CheckView(**state.scheduler.health.request(uid, rebaseline=rebaseline))
    except HealthError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.get("/api/targets/{uid}/health")
def instance_health(uid: str, state: StateDep, session: SessionDep, user: UserDep,
                    limit: int = 50) -> InstanceHealth:
    """The instance's health, its evidence and its checks, newest first."""
    instance = session.get(TargetInstance, uid)
    if instance is None:
        raise HTTPException(404, f"unknown target instance {uid!r}")
    checks = state.scheduler.health.history(uid, max(1, min(limit, 500)))
    return InstanceHealth(target_uid=uid, health=instance.health or "unknown",
                          health_detail=instance.health_detail or {},
                          checks=[CheckView(**check) for check in checks])
