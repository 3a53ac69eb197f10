"""Benchmark endpoints of the dAIEdge-VLab API, plus cancel, live events and flat results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy import Select, Text, cast, func, select
from sqlalchemy.orm import Session

from vlab_backend.api import sse
from vlab_backend.api.deps import (
    VisibleBenchmark,
    get_benchmark_or_404,
    get_owned_benchmark,
    submission_errors,
)
from vlab_backend.api.results import Layout, encode, table_query
from vlab_backend.api.schemas import (
    ERRORS,
    BenchmarkConfig,
    BenchmarkDeleted,
    BenchmarkStatus,
    BenchmarkView,
    Canceled,
    ConfiguredEngine,
    ConfiguredInstance,
    DeviceConfig,
    EngineTypes,
    ErrorAnswer,
    History,
    LabelsBody,
    LayerTime,
    Limits,
    ParameterSpecView,
    Report,
    ResultColumns,
    ResultRow,
    RuntimeConfig,
    Submitted,
)
from vlab_backend.api.state import AppState, SessionDep, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.api.views import benchmark_status, benchmark_view
from vlab_backend.blobstore import sha256_file
from vlab_backend.catalog import engine_profile
from vlab_backend.config import Settings
from vlab_backend.engines import engine_specs
from vlab_backend.engines.base import parse_user_json
from vlab_backend.intake import ModelInfo
from vlab_backend.scheduler import benchmark_event
from vlab_backend.store.schema import (
    ALL_STATUSES,
    TERMINAL_STATUSES,
    Benchmark,
    Dataset,
    EngineFamily,
    HardwareType,
    Status,
    TargetInstance,
    User,
)
from vlab_backend.submission import (
    MAX_NAME_CHARS,
    MAX_NOTES_CHARS,
    MAX_TAGS,
    NAMELESS_MODEL_PART,
    TAG_RULE,
    Labels,
    RunRequest,
    SubmissionError,
    check_dataset_fits,
    check_format,
    check_labels,
    check_request,
    check_tag,
    create_benchmark,
    discard,
    intake_upload,
    resolve_dataset,
    resolve_model_ref,
    retry_on_conflict,
    store_model,
    visible,
)
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE

router = APIRouter(tags=["benchmarks"], responses=ERRORS)

# The artifact endpoints' answers besides 200, as the dAIEdge client reads them.
ARTIFACT_RESPONSES: dict[int | str, dict[str, Any]] = {
    204: {"description": "the benchmark ended without producing this artifact"},
    428: {"model": ErrorAnswer, "description": "the benchmark has not ended yet"},
}
NO_CONTENT = 204
MAX_JSON_FIELD_CHARS = 64 * 1024


def parse_json_field(raw: str | None, what: str, kind: type) -> Any:
    """A form field that carries JSON: 400 naming the field if it is too long, not JSON, has
    a non-finite number or nests too deeply."""
    if raw in (None, ""):
        return kind()
    if len(raw) > MAX_JSON_FIELD_CHARS:
        raise HTTPException(400, f"{what} must be at most {MAX_JSON_FIELD_CHARS} characters")
    try:
        value = parse_user_json(raw)
    except ValueError as exc:
        raise HTTPException(400, f"{what} must be JSON ({exc})") from exc
    if not isinstance(value, kind):
        raise HTTPException(400, f"{what} must be a JSON {kind.__name__}")
    return value


@router.post("/api/benchmarks/run")
async def run_benchmark(
    state: StateDep,
    user: UserDep,
    device: Annotated[str, Form(description="target type, e.g. host-cpu")],
    engine: Annotated[str, Form(description="inference engine, e.g. onnxruntime")],
    nb_inference: Annotated[int, Form()] = DEFAULT_NB_INFERENCE,
    target_uids: Annotated[str | None, Form(description="JSON list of instance uids")] = None,
    parameters: Annotated[str | None, Form(description="JSON object")] = None,
    dataset_name: Annotated[str | None, Form()] = None,
    benchmark_type: Annotated[str | None, Form()] = None,
    model_ref: Annotated[str | None, Form()] = None,
    public: Annotated[bool, Form()] = False,
    name: Annotated[str | None, Form(description=(
        f"a name for the run (at most {MAX_NAME_CHARS} characters)"))] = None,
    tags: Annotated[str | None, Form(description=(
        f"JSON list of at most {MAX_TAGS} tags, each {TAG_RULE}"))] = None,
    notes: Annotated[str | None, Form(description=(
        f"notes on the run (at most {MAX_NOTES_CHARS} characters)"))] = None,
    model: UploadFile | None = None,
) -> Submitted:
    """Submit a benchmark of an uploaded `model` file or a stored `model_ref`; `name`,
    `tags` and `notes` label it (optional: the dAIEdge client sends none)."""
    uids = parse_json_field(target_uids, "target_uids", list)
    with submission_errors():
        labels = check_labels(name, parse_json_field(tags, "tags", list), notes)
    request = RunRequest(
        target_type=device, engine=engine,
        benchmark_type=benchmark_type or ("TYPE2" if dataset_name else "TYPE1"),
        nb_inference=nb_inference, target_uids=[str(u) for u in uids],
        parameters=parse_json_field(parameters, "parameters", dict), dataset_name=dataset_name,
        model_ref=model_ref, public=public, name=labels.name or "", tags=labels.tags or [],
        notes=labels.notes or "")
    if model is None and not model_ref:
        raise HTTPException(400, "send a model file (part 'model') or a model_ref")
    if model is not None and not model.filename:
        raise HTTPException(400, NAMELESS_MODEL_PART)
    await run_in_threadpool(_check, state, request)
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
    return Submitted(id=bench_id, status=Status.PENDING)


def _check(state: AppState, request: RunRequest) -> None:
    """The checks that need no upload, before the model streams in."""
    with state.db.session() as session, submission_errors():
        check_request(session, request, state.settings.max_nb_inference)


def _dataset_runs(request: RunRequest, dataset: Dataset | None, info: ModelInfo,
                  limit: int) -> int | None:
    """TYPE2 runs once per sample of its dataset: that count, bounded like any nb_inference
    (None when the dataset does not decide it)."""
    if dataset is None:
        return None
    check_dataset_fits(dataset, info)
    if request.benchmark_type != "TYPE2" or not info.input_bytes:
        return None
    runs = dataset.size // info.input_bytes
    if runs > limit:
        raise SubmissionError(f"the dataset holds {runs} samples; a benchmark runs at most "
                              f"{limit} inferences (VLAB_MAX_NB_INFERENCE)")
    return runs


def _accept(state: AppState, user: User, request: RunRequest, model: UploadFile | None,
            upload: Path | None) -> str:
    filename = safe_filename(model.filename if model else None, "model")
    with submission_errors(), state.db.session() as session:
        profile = engine_profile(session, request.engine)
        dataset = (resolve_dataset(session, user, request.dataset_name)
                   if request.dataset_name else None)
        limit = state.settings.max_nb_inference
        if upload is not None:
            info = intake_upload(upload, filename, profile, state.settings.max_model_bytes)
            runs = _dataset_runs(request, dataset, info, limit)  # before anything is stored
            stored = store_model(session, state.scheduler.models, user, upload, filename,
                                 info, sha256_file(upload))
        else:
            stored = resolve_model_ref(session, user, request.model_ref or "")
            info = ModelInfo.from_dict(stored.info)
            if profile is not None:
                check_format(stored.format, profile)
            runs = _dataset_runs(request, dataset, info, limit)
        if runs is not None:
            request.nb_inference = runs
        bench = create_benchmark(session, user, request, stored)
        state.hub.publish_on_commit(session, bench.id, benchmark_event(bench))
        return bench.id


# The dAIEdge client always sends `full` (False unless asked), so its default answer must stay
# what it has always been: `full` only adds keys.
@router.get("/api/benchmarks/config", response_model_exclude_unset=True)
def benchmark_config(state: StateDep, session: SessionDep, user: UserDep,
                     full: Annotated[bool, Query(description=(
                         "also each target type's description and instances (host, memory, "
                         "engine versions), and each engine's description"))] = False,
                     ) -> BenchmarkConfig:
    """Targets with their engines, and every engine's parameters and file types."""
    return configuration(session, state.settings, full)


def configuration(session: Session, settings: Settings, full: bool) -> BenchmarkConfig:
    """What `/api/benchmarks/config` answers; the `full` keys are set only when asked for."""
    instances = session.scalars(select(TargetInstance).where(
        TargetInstance.enabled.is_(True)).order_by(TargetInstance.uid)).all()
    by_type: dict[str, list[TargetInstance]] = {}
    for instance in instances:
        by_type.setdefault(instance.target_type, []).append(instance)
    devices = {}
    for target_type, members in by_type.items():
        types: dict[str, set[str]] = {}
        for instance in members:
            for name, offer in instance.engines.items():
                types.setdefault(name, set()).update(offer.get("supported_types", []))
        device = DeviceConfig(
            instances=[i.uid for i in members],
            engines={name: EngineTypes(supported_types=sorted(supported))
                     for name, supported in types.items()})
        if full:
            row = session.get(HardwareType, target_type)
            device.display_name = (row.display_name if row else "") or target_type
            device.description = row.description if row else ""
            device.instance_details = [ConfiguredInstance(
                target_uid=i.uid, host=i.host, memory=i.memory,
                engines={name: ConfiguredEngine(version=offer.get("version", ""),
                                                supported_types=offer.get("supported_types", []))
                         for name, offer in i.engines.items()}) for i in members]
        devices[target_type] = device
    runtimes = {}
    for family in session.scalars(select(EngineFamily).order_by(EngineFamily.name)).all():
        profile = engine_profile(session, family.name)
        assert profile is not None
        runtime = RuntimeConfig(
            display_name=family.display_name,
            parameters=[ParameterSpecView.model_validate(p.as_dict())
                        for p in profile.parameters.values()],
            supported_file_extensions=profile.extensions)
        if full:
            runtime.description = family.description
            runtime.builtin = family.name in engine_specs()
        runtimes[family.name] = runtime
    return BenchmarkConfig(devices=devices, runtimes=runtimes, limits=Limits(
        max_model_bytes=settings.max_model_bytes, max_dataset_bytes=settings.max_dataset_bytes,
        max_nb_inference=settings.max_nb_inference))


Page = Annotated[int, Query(ge=1, le=1_000_000)]
PageLength = Annotated[int, Query(ge=1, le=1000)]


TagFilter = Annotated[list[str] | None, Query(
    description="only runs with this tag (case-insensitive); repeat it: runs with every one")]
NameFilter = Annotated[str | None, Query(
    max_length=MAX_NAME_CHARS, description="only runs whose name contains this text "
    "(case-insensitive)")]


@dataclass
class Filters:
    """The history filters of the dAIEdge client (`status` one of the six statuses), and
    ours: the runs' tags (all must match) and a part of their name."""

    engine: str | None = None
    platform: str | None = None
    benchmark_type: str | None = None
    model: str | None = None
    status: str | None = None
    tag: TagFilter = None
    name: NameFilter = None


@dataclass
class HistoryQuery(Filters):
    page: Page = 1
    page_length: PageLength = 100


def _filtered(filters: Filters) -> Select[Any]:
    if filters.status is not None and filters.status not in ALL_STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(ALL_STATUSES)}")
    query = select(Benchmark)
    for column, value in ((Benchmark.engine, filters.engine),
                          (Benchmark.target_type, filters.platform),
                          (Benchmark.benchmark_type, filters.benchmark_type),
                          (Benchmark.status, filters.status)):
        if value:
            query = query.where(column == value)
    if filters.model:
        query = query.where(Benchmark.model_filename.contains(filters.model))
    for tag in filters.tag or ():
        with submission_errors():
            check_tag(tag, "tag")
        # A tag is a quoted element of the stored JSON list; tags hold no quote or escape.
        query = query.where(cast(Benchmark.tags, Text).icontains(f'"{tag}"', autoescape=True))
    if filters.name:
        query = query.where(Benchmark.name.icontains(filters.name, autoescape=True))
    return query


def _page(session: Session, query: Select[Any], page: int, page_length: int) -> History:
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Benchmark.seq.desc())
                           .offset((page - 1) * page_length).limit(page_length)).all()
    return History(count=total, page=page, page_length=page_length,
                   results=[benchmark_view(b) for b in rows])


@router.get("/api/benchmarks")
def history(session: SessionDep, user: UserDep,
            query: Annotated[HistoryQuery, Depends()]) -> History:
    """The caller's benchmarks, newest first."""
    mine = _filtered(query).where(Benchmark.owner_id == user.id)
    return _page(session, mine, query.page, query.page_length)


@router.get("/api/benchmarks/public")
def public_history(session: SessionDep, user: UserDep,
                   query: Annotated[HistoryQuery, Depends()]) -> History:
    """Everyone's public benchmarks, newest first."""
    shared = _filtered(query).where(Benchmark.public.is_(True))
    return _page(session, shared, query.page, query.page_length)


@router.get("/api/results", response_class=Response, responses={
    200: {"model": list[ResultRow] | ResultColumns,
          "description": "`records`: a list of rows; `columns`: the table in columns"}})
def result_rows(session: SessionDep, user: UserDep, target: str | None = None,
                engine: str | None = None, model: str | None = None,
                status: str | None = None, benchmark_type: str | None = None,
                tag: TagFilter = None, name: NameFilter = None,
                include_public: bool = False,
                limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
                format: Annotated[Layout, Query(
                    description="records: a list of objects; columns: "
                                "{columns, data} for DataFrames")] = "records") -> Response:
    """Flat rows (one per benchmark, metrics as columns) for DataFrames and tables, newest
    first. Encoded here rather than through a response model: tens of thousands of rows must
    take a fraction of a second."""
    query = _filtered(Filters(engine, target, benchmark_type, model, status, tag, name))
    if include_public:
        query = visible(query, Benchmark.owner_id, Benchmark.public, user)
    else:
        query = query.where(Benchmark.owner_id == user.id)
    rows = session.execute(table_query(query).order_by(Benchmark.seq.desc()).limit(limit)).all()
    return Response(encode(list(rows), format), media_type="application/json")


@router.get("/api/benchmarks/{bench_id}")
def get_benchmark(bench: VisibleBenchmark) -> BenchmarkView:
    return benchmark_view(bench)


@router.patch("/api/benchmarks/{bench_id}/labels")
def set_labels(bench_id: str, body: LabelsBody, state: StateDep, session: SessionDep,
               user: UserDep) -> BenchmarkView:
    """Rename, tag or annotate one of your runs: the fields sent replace the stored ones,
    the others stay. Live views (the benchmark's and the targets' event streams) hear of it."""
    bench = get_owned_benchmark(session, user, bench_id)
    with submission_errors():
        apply_labels(bench, check_labels(body.name, body.tags, body.notes))
    session.commit()  # before the event: a view that refreshes on it reads the new labels
    state.hub.publish(bench.id, labels_event(bench))
    return benchmark_view(bench)


def apply_labels(bench: Benchmark, labels: Labels) -> None:
    if labels.name is not None:
        bench.name = labels.name
    if labels.tags is not None:
        bench.tags = labels.tags
    if labels.notes is not None:
        bench.notes = labels.notes


def labels_event(bench: Benchmark) -> dict[str, Any]:
    """A status event (its status unchanged) with the new labels: what the live views
    already refresh on, the target board's stream included."""
    return {**benchmark_event(bench), "labels": {"name": bench.name, "tags": bench.tags,
                                                 "notes": bench.notes}}


@router.get("/api/benchmarks/{bench_id}/status")
def get_status(bench: VisibleBenchmark) -> BenchmarkStatus:
    return benchmark_status(bench)


def _ended(bench: Benchmark) -> Benchmark:
    """428 while the benchmark has not ended: its artifacts are not there yet."""
    if not bench.is_terminal:
        raise HTTPException(428, f"benchmark {bench.id} is {bench.status}; "
                                 "its artifacts are not available yet")
    return bench


def _artifact(state: AppState, bench: Benchmark, name: str, filename: str) -> Path | None:
    """The artifact's file, None if the benchmark ended without it (204); 428 while the
    benchmark has not ended."""
    path = state.scheduler.artifact_dir(_ended(bench).id) / filename
    return path if name in bench.artifacts and path.is_file() else None


@router.get("/api/benchmarks/{bench_id}/results", response_class=Response, responses={
    200: {"model": Report, "description": "the report"}, **ARTIFACT_RESPONSES})
def get_results(bench: VisibleBenchmark, state: StateDep) -> Response:
    """The report: report.json, or report_odt.json for on-device training (TYPE3)."""
    name = "report_odt" if bench.benchmark_type == "TYPE3" else "report"
    path = _artifact(state, bench, name, f"{name}.json")
    if path is None:
        return Response(status_code=NO_CONTENT)
    return Response(path.read_bytes(), media_type="application/json")


def _log(state: AppState, bench: Benchmark, name: str, filename: str) -> Response:
    path = _artifact(state, bench, name, filename)
    if path is None:
        return Response(status_code=NO_CONTENT)
    return PlainTextResponse(path.read_text("utf-8", "replace"))


@router.get("/api/benchmarks/{bench_id}/user-log", response_class=PlainTextResponse,
            responses=ARTIFACT_RESPONSES)
def get_user_log(bench: VisibleBenchmark, state: StateDep) -> Response:
    return _log(state, bench, "user_log", "user.log")


@router.get("/api/benchmarks/{bench_id}/error-log", response_class=PlainTextResponse,
            responses=ARTIFACT_RESPONSES)
def get_error_log(bench: VisibleBenchmark, state: StateDep) -> Response:
    return _log(state, bench, "error_log", "error.log")


BINARY = {"description": "the file",
          "content": {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}}


@router.get("/api/benchmarks/{bench_id}/binary", response_class=Response,
            responses={200: BINARY, **ARTIFACT_RESPONSES})
def get_binary(bench: VisibleBenchmark, state: StateDep) -> Response:
    """raw_output.bin: every inference's raw output bytes, in dataset order (TYPE2)."""
    path = _artifact(state, bench, "binary", "raw_output.bin")
    if path is None:
        return Response(status_code=NO_CONTENT)
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"{bench.id}_raw_output.bin")


@router.get("/api/benchmarks/{bench_id}/profile", response_class=Response, responses={
    200: {"model": list[LayerTime], "description": "layers, slowest first"},
    **ARTIFACT_RESPONSES})
def get_profile(bench: VisibleBenchmark, state: StateDep) -> Response:
    """The per-layer profile (slowest first), where the engine offers one."""
    path = _artifact(state, bench, "profile", "profile.json")
    if path is None:
        return Response(status_code=NO_CONTENT)
    return Response(path.read_bytes(), media_type="application/json")


@router.get("/api/benchmarks/{bench_id}/trained-model", response_class=Response,
            responses={200: BINARY, **ARTIFACT_RESPONSES})
def get_trained_model(bench: VisibleBenchmark, state: StateDep) -> Response:
    """The model a training (TYPE3) produced, its name in `Content-Disposition`."""
    trained = sorted(state.scheduler.artifact_dir(_ended(bench).id).glob("model.*"))
    if "trained_model" not in bench.artifacts or not trained:
        return Response(status_code=NO_CONTENT)
    # The dAIEdge client splits on 'filename=' and strips quotes: keep filename last.
    return FileResponse(trained[0], media_type="application/octet-stream",
                        headers={"Content-Disposition":
                                 f'attachment; filename="{trained[0].name}"'})


def _owned(state: AppState, user: User, bench_id: str) -> Benchmark:
    with state.db.session() as session:
        return get_owned_benchmark(session, user, bench_id)


def _visible(state: AppState, user: User, bench_id: str) -> Benchmark:
    with state.db.session() as session:
        return get_benchmark_or_404(session, user, bench_id)


@router.post("/api/benchmarks/{bench_id}/cancel")
async def cancel(bench_id: str, state: StateDep, user: UserDep) -> Canceled:
    bench = await run_in_threadpool(_owned, state, user, bench_id)
    status = await state.scheduler.cancel(bench.id)
    return Canceled(id=bench.id, status=Status(status))


@router.delete("/api/benchmarks/{bench_id}")
async def delete_benchmark(bench_id: str, state: StateDep, user: UserDep) -> BenchmarkDeleted:
    bench = await run_in_threadpool(_owned, state, user, bench_id)
    if not bench.is_terminal:
        await state.scheduler.cancel(bench.id)
        for _ in range(100):
            refreshed = await run_in_threadpool(_owned, state, user, bench_id)
            if refreshed.is_terminal:
                break
            await asyncio.sleep(0.05)
    await run_in_threadpool(_delete, state, bench.id)
    return BenchmarkDeleted(id=bench.id, deleted=True)


def _delete(state: AppState, bench_id: str) -> None:
    with state.db.session() as session:
        bench = session.scalar(select(Benchmark).where(Benchmark.id == bench_id))
        if bench is not None:
            session.delete(bench)
    discard(state.scheduler.artifact_dir(bench_id))


@router.get("/api/benchmarks/{bench_id}/events", response_class=StreamingResponse,
            responses=sse.STREAM_RESPONSE)
async def events(bench_id: str, state: StateDep, user: UserDep) -> StreamingResponse:
    """Server-sent events: the current state, then every change until a terminal state."""
    await run_in_threadpool(_visible, state, user, bench_id)

    async def stream() -> AsyncIterator[str]:
        async with state.hub.subscribe(bench_id) as queue:
            bench = await run_in_threadpool(_visible, state, user, bench_id)
            yield sse.message({"id": bench.id, **benchmark_event(bench)})
            if bench.is_terminal:
                return
            async def reread() -> dict[str, Any]:
                current = await run_in_threadpool(_visible, state, user, bench_id)
                return benchmark_event(current)

            # Another replica may follow the job: its events reach this one through the
            # database only (once a second on a shared store).
            async for chunk in sse.relay(queue, lambda event: event, lambda event: (
                    event.get("event") == "status" and event.get("status") in TERMINAL_STATUSES),
                    reread=reread, reread_s=1.0 if state.scheduler.shared else sse.KEEP_ALIVE_S):
                yield chunk

    return sse.event_stream(stream())
