"""Benchmark endpoints of the dAIEdge-VLab API, plus cancel, live events and flat results."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vlab_backend.api import sse
from vlab_backend.api.results import Layout, encode, table_query
from vlab_backend.api.state import AppState, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.api.views import benchmark_view
from vlab_backend.blobstore import sha256_file
from vlab_backend.catalog import engine_profile
from vlab_backend.intake import ModelInfo
from vlab_backend.scheduler import benchmark_event
from vlab_backend.store.schema import (
    ALL_STATUSES,
    TERMINAL_STATUSES,
    Benchmark,
    EngineFamily,
    TargetInstance,
    User,
)
from vlab_backend.submission import (
    RunRequest,
    SubmissionError,
    check_dataset_fits,
    check_format,
    check_request,
    create_benchmark,
    discard,
    intake_upload,
    resolve_dataset,
    resolve_model_ref,
    retry_on_conflict,
    store_model,
    visible,
)

router = APIRouter(tags=["benchmarks"])


def parse_json_field(raw: str | None, what: str, kind: type) -> Any:
    if raw in (None, ""):
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"{what} must be JSON ({exc.msg})") from exc
    if not isinstance(value, kind):
        raise HTTPException(400, f"{what} must be a JSON {kind.__name__}")
    return value


@router.post("/api/benchmarks/run")
async def run_benchmark(
    state: StateDep,
    user: UserDep,
    device: Annotated[str, Form(description="target type, e.g. host-cpu")],
    engine: Annotated[str, Form(description="inference engine, e.g. onnxruntime")],
    nb_inference: Annotated[int, Form()] = 20,
    target_uids: Annotated[str | None, Form(description="JSON list of instance uids")] = None,
    parameters: Annotated[str | None, Form(description="JSON object")] = None,
    dataset_name: Annotated[str | None, Form()] = None,
    benchmark_type: Annotated[str | None, Form()] = None,
    model_ref: Annotated[str | None, Form()] = None,
    public: Annotated[bool, Form()] = False,
    model: UploadFile | None = None,
) -> dict[str, Any]:
    """Submit a benchmark of an uploaded `model` file or a stored `model_ref`."""
    uids = parse_json_field(target_uids, "target_uids", list)
    request = RunRequest(
        target_type=device, engine=engine,
        benchmark_type=benchmark_type or ("TYPE2" if dataset_name else "TYPE1"),
        nb_inference=nb_inference, target_uids=[str(u) for u in uids],
        parameters=parse_json_field(parameters, "parameters", dict), dataset_name=dataset_name,
        model_ref=model_ref, public=public)
    if model is None and not model_ref:
        raise HTTPException(400, "send a model file (part 'model') or a model_ref")
    with state.db.session() as session:
        try:
            check_request(session, request, state.settings.max_nb_inference)
        except SubmissionError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
    upload = None
    if model is not None and model.filename:
        upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                                   "model")
    try:
        bench_id = await run_in_threadpool(retry_on_conflict, _accept, state, user, request,
                                           model, upload)
    finally:
        discard(upload)
    state.scheduler.wake()
    return {"id": bench_id, "status": "pending"}


def _accept(state: AppState, user: User, request: RunRequest, model: UploadFile | None,
            upload: Path | None) -> str:
    filename = safe_filename(model.filename if model else None, "model")
    try:
        with state.db.session() as session:
            profile = engine_profile(session, request.engine)
            dataset = (resolve_dataset(session, user, request.dataset_name)
                       if request.dataset_name else None)
            if upload is not None:
                info = intake_upload(upload, filename, profile)
                if dataset is not None:
                    check_dataset_fits(dataset, info)
                stored = store_model(session, state.scheduler.models, user, upload, filename,
                                     info, sha256_file(upload))
            else:
                stored = resolve_model_ref(session, user, request.model_ref or "")
                info = ModelInfo.from_dict(stored.info)
                if profile is not None:
                    check_format(stored.format, profile)
                if dataset is not None:
                    check_dataset_fits(dataset, info)
            if request.benchmark_type == "TYPE2" and dataset is not None and info.input_bytes:
                request.nb_inference = dataset.size // info.input_bytes
            bench = create_benchmark(session, user, request, stored)
            state.hub.publish(bench.id, benchmark_event(bench))
            return bench.id
    except SubmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.get("/api/benchmarks/config")
def benchmark_config(state: StateDep, user: UserDep, full: bool = False) -> dict[str, Any]:
    """Targets with their engines, and every engine's parameters and file types."""
    with state.db.session() as session:
        instances = session.scalars(select(TargetInstance).where(
            TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
    devices: dict[str, Any] = {}
    for instance in instances:
        device = devices.setdefault(instance.target_type, {"instances": [], "engines": {}})
        device["instances"].append(instance.uid)
        for name, offer in instance.engines.items():
            types = device["engines"].setdefault(name, {"supported_types": []})
            types["supported_types"] = sorted(set(types["supported_types"])
                                              | set(offer.get("supported_types", [])))
    with state.db.session() as session:
        families = session.scalars(select(EngineFamily).order_by(EngineFamily.name)).all()
        runtimes = {}
        for family in families:
            profile = engine_profile(session, family.name)
            assert profile is not None
            runtimes[family.name] = {
                "display_name": family.display_name,
                "parameters": [p.as_dict() for p in profile.parameters.values()],
                "supported_file_extensions": profile.extensions}
    return {"devices": devices, "runtimes": runtimes,
            "limits": {"max_model_bytes": state.settings.max_model_bytes,
                       "max_dataset_bytes": state.settings.max_dataset_bytes,
                       "max_nb_inference": state.settings.max_nb_inference}}


def _history(session: Session, query: Any, page: int, page_length: int) -> dict[str, Any]:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Benchmark.seq.desc())
                           .offset((page - 1) * page_length).limit(page_length)).all()
    return {"count": total, "page": page, "page_length": page_length,
            "results": [benchmark_view(b) for b in rows]}


def _filtered(engine: str | None, platform: str | None, benchmark_type: str | None,
              model: str | None, status: str | None) -> Any:
    if status is not None and status not in ALL_STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(ALL_STATUSES)}")
    query = select(Benchmark)
    for column, value in ((Benchmark.engine, engine), (Benchmark.target_type, platform),
                          (Benchmark.benchmark_type, benchmark_type),
                          (Benchmark.status, status)):
        if value:
            query = query.where(column == value)
    if model:
        query = query.where(Benchmark.model_filename.contains(model))
    return query


Page = Annotated[int, Query(ge=1, le=1_000_000)]
PageLength = Annotated[int, Query(ge=1, le=1000)]


@router.get("/api/benchmarks")
def history(state: StateDep, user: UserDep, engine: str | None = None,
            platform: str | None = None, benchmark_type: str | None = None,
            model: str | None = None, status: str | None = None, page: Page = 1,
            page_length: PageLength = 100) -> dict[str, Any]:
    """The caller's benchmarks, newest first."""
    query = _filtered(engine, platform, benchmark_type, model, status).where(
        Benchmark.owner_id == user.id)
    with state.db.session() as session:
        return _history(session, query, page, page_length)


@router.get("/api/benchmarks/public")
def public_history(state: StateDep, user: UserDep, engine: str | None = None,
                   platform: str | None = None, benchmark_type: str | None = None,
                   model: str | None = None, status: str | None = None, page: Page = 1,
                   page_length: PageLength = 100) -> dict[str, Any]:
    query = _filtered(engine, platform, benchmark_type, model, status).where(
        Benchmark.public.is_(True))
    with state.db.session() as session:
        return _history(session, query, page, page_length)


@router.get("/api/results")
def result_rows(state: StateDep, user: UserDep, target: str | None = None,
                engine: str | None = None, model: str | None = None,
                status: str | None = None, benchmark_type: str | None = None,
                include_public: bool = False,
                limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
                format: Annotated[Layout, Query(
                    description="records: a list of objects; columns: "
                                "{columns, data} for DataFrames")] = "records") -> Response:
    """Flat rows (one per benchmark, metrics as columns) for DataFrames and tables, newest
    first."""
    query = _filtered(engine, target, benchmark_type, model, status)
    if include_public:
        query = visible(query, Benchmark.owner_id, Benchmark.public, user)
    else:
        query = query.where(Benchmark.owner_id == user.id)
    with state.db.session() as session:
        rows = session.execute(table_query(query).order_by(Benchmark.seq.desc())
                               .limit(limit)).all()
    return Response(encode(list(rows), format), media_type="application/json")


def _load_visible(state: AppState, user: User, bench_id: str) -> Benchmark:
    with state.db.session() as session:
        query = visible(select(Benchmark).where(Benchmark.id == bench_id), Benchmark.owner_id,
                        Benchmark.public, user)
        bench = session.scalar(query)
    if bench is None:
        raise HTTPException(404, f"no benchmark {bench_id}")
    return bench


def _load_owned(state: AppState, user: User, bench_id: str) -> Benchmark:
    bench = _load_visible(state, user, bench_id)
    if bench.owner_id != user.id and not user.is_admin:
        raise HTTPException(403, "only the owner can change this benchmark")
    return bench


@router.get("/api/benchmarks/{bench_id}")
def get_benchmark(bench_id: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    return benchmark_view(_load_visible(state, user, bench_id))


@router.get("/api/benchmarks/{bench_id}/status")
def get_status(bench_id: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    bench = _load_visible(state, user, bench_id)
    return {"id": bench.id, "status": bench.status, "message": bench.message,
            "progress": {"phase": bench.progress_phase, "done": bench.progress_done,
                         "total": bench.progress_total}}


def _artifact(state: AppState, user: User, bench_id: str, name: str, filename: str) -> Any:
    """200 with the file; 428 while the benchmark has not ended; 204 if it ended without it."""
    bench = _load_visible(state, user, bench_id)
    if not bench.is_terminal:
        raise HTTPException(428, f"benchmark {bench_id} is {bench.status}; "
                                 "its artifacts are not available yet")
    path = state.scheduler.artifact_dir(bench_id) / filename
    if name not in bench.artifacts or not path.is_file():
        return Response(status_code=204)
    return path


@router.get("/api/benchmarks/{bench_id}/results")
def get_results(bench_id: str, state: StateDep, user: UserDep) -> Any:
    """The report: report.json, or report_odt.json for on-device training (TYPE3)."""
    bench = _load_visible(state, user, bench_id)
    name = "report_odt" if bench.benchmark_type == "TYPE3" else "report"
    path = _artifact(state, user, bench_id, name, f"{name}.json")
    if isinstance(path, Response):
        return path
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/api/benchmarks/{bench_id}/user-log")
def get_user_log(bench_id: str, state: StateDep, user: UserDep) -> Any:
    path = _artifact(state, user, bench_id, "user_log", "user.log")
    return path if isinstance(path, Response) else PlainTextResponse(path.read_text("utf-8",
                                                                                   "replace"))


@router.get("/api/benchmarks/{bench_id}/error-log")
def get_error_log(bench_id: str, state: StateDep, user: UserDep) -> Any:
    path = _artifact(state, user, bench_id, "error_log", "error.log")
    return path if isinstance(path, Response) else PlainTextResponse(path.read_text("utf-8",
                                                                                   "replace"))


@router.get("/api/benchmarks/{bench_id}/binary")
def get_binary(bench_id: str, state: StateDep, user: UserDep) -> Any:
    path = _artifact(state, user, bench_id, "binary", "raw_output.bin")
    if isinstance(path, Response):
        return path
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{bench_id}_raw_output.bin")


@router.get("/api/benchmarks/{bench_id}/profile")
def get_profile(bench_id: str, state: StateDep, user: UserDep) -> Any:
    """The per-layer profile (slowest first), where the engine offers one."""
    path = _artifact(state, user, bench_id, "profile", "profile.json")
    if isinstance(path, Response):
        return path
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/api/benchmarks/{bench_id}/trained-model")
def get_trained_model(bench_id: str, state: StateDep, user: UserDep) -> Any:
    bench = _load_visible(state, user, bench_id)
    if not bench.is_terminal:
        raise HTTPException(428, f"benchmark {bench_id} is {bench.status}; "
                                 "its artifacts are not available yet")
    trained = sorted(state.scheduler.artifact_dir(bench_id).glob("model.*"))
    if "trained_model" not in bench.artifacts or not trained:
        return Response(status_code=204)
    # The dAIEdge client splits on 'filename=' and strips quotes: keep filename last.
    return FileResponse(trained[0], media_type="application/octet-stream",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{trained[0].name}"'})


@router.post("/api/benchmarks/{bench_id}/cancel")
async def cancel(bench_id: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    bench = await run_in_threadpool(_load_owned, state, user, bench_id)
    status = await state.scheduler.cancel(bench.id)
    return {"id": bench.id, "status": status}


@router.delete("/api/benchmarks/{bench_id}")
async def delete_benchmark(bench_id: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    bench = await run_in_threadpool(_load_owned, state, user, bench_id)
    if not bench.is_terminal:
        await state.scheduler.cancel(bench.id)
        for _ in range(100):
            refreshed = await run_in_threadpool(_load_owned, state, user, bench_id)
            if refreshed.is_terminal:
                break
            await asyncio.sleep(0.05)
    await run_in_threadpool(_delete, state, bench.id)
    return {"id": bench.id, "deleted": True}


def _delete(state: AppState, bench_id: str) -> None:
    with state.db.session() as session:
        bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
        if bench is not None:
            session.delete(bench)
    discard(state.scheduler.artifact_dir(bench_id))


@router.get("/api/benchmarks/{bench_id}/events")
async def events(bench_id: str, state: StateDep, user: UserDep) -> StreamingResponse:
    """Server-sent events: the current state, then every change until a terminal state."""
    await run_in_threadpool(_load_visible, state, user, bench_id)

    async def stream() -> AsyncIterator[str]:
        async with state.hub.subscribe(bench_id) as queue:
            bench = await run_in_threadpool(_load_visible, state, user, bench_id)
            yield sse.message({"id": bench.id, **benchmark_event(bench)})
            if bench.is_terminal:
                return
            async for chunk in sse.relay(queue, lambda event: event, lambda event: (
                    event.get("event") == "status" and event.get("status") in TERMINAL_STATUSES)):
                yield chunk

    return sse.event_stream(stream())
