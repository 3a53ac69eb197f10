"""Federated learning (TYPE4): submit, follow, read and cancel experiments; download the global
model. The dAIEdge client's endpoints (`/api/benchmarks/fl/...`) plus ours (cancel, model,
events)."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from vlab_backend.api import sse
from vlab_backend.api.deps import submission_errors
from vlab_backend.api.routes.benchmarks import Page, PageLength
from vlab_backend.api.schemas import ERRORS, FLCanceled, FLExperiment, FLHistory, Submitted
from vlab_backend.api.state import AppState, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.blobstore import sha256_file
from vlab_backend.catalog import engine_profile
from vlab_backend.engines.base import parse_user_json
from vlab_backend.federated.config import (
    ExperimentSpec,
    dataset_fields,
    parse_experiment,
    with_model_names,
)
from vlab_backend.federated.orchestrator import Orchestrator, experiment_event
from vlab_backend.intake import ModelInfo
from vlab_backend.odt import ConfigError, sample_bytes
from vlab_backend.store.schema import (
    TERMINAL_STATUSES,
    UNFINISHED_STATUSES,
    Benchmark,
    Dataset,
    FLExperimentRow,
    Status,
    StoredModel,
    TargetInstance,
    User,
)
from vlab_backend.submission import SubmissionError, delete_stored, intake_upload, store_model
from vlab_backend.training.tensors import check_config_against_model

CONFIG_LIMIT = 4 * 1024 * 1024
# The names the dAIEdge client gives the datasets it uploads for an experiment
# (`client_<n>_{train|test}_{input|target}_d<uid>.bin`, `server_eval_{input|target}_d<uid>.bin`),
# after upload `<name>_<sha256>`.
FL_DATASET = re.compile(r"(client_\d+_(train|test)|server_eval)_(input|target)_d[^/]*\.bin_"
                        r"[0-9a-f]{64}")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The orchestrator lives as long as the app; it resumes unfinished experiments."""
    state: AppState = app.state.vlab
    orchestrator = Orchestrator(state.db, state.scheduler, state.settings.max_nb_inference)
    app.state.fl = orchestrator
    await orchestrator.start()
    try:
        yield
    finally:
        await orchestrator.stop()


router = APIRouter(tags=["federated learning"], responses=ERRORS, lifespan=lifespan)


def orchestrator_of(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.fl
    return orchestrator


def _referenced(raw: Any) -> list[str]:
    """Every dataset ref a (possibly invalid) config names, found as far as its shape allows."""
    refs: list[str] = []
    if not isinstance(raw, dict):
        return refs
    clients = raw.get("clients")
    for client in clients if isinstance(clients, list) else []:
        odt = client.get("odt_config") if isinstance(client, dict) else None
        for section in ("input", "output"):
            tensor = odt.get(section) if isinstance(odt, dict) else None
            for key in ("train_file", "test_file"):
                if isinstance(tensor, dict) and isinstance(tensor.get(key), str):
                    refs.append(tensor[key])
    server = raw.get("config")
    data = server.get("server_dataset") if isinstance(server, dict) else None
    for section in ("input", "output"):
        tensor = data.get(section) if isinstance(data, dict) else None
        if isinstance(tensor, dict) and isinstance(tensor.get("file"), str):
            refs.append(tensor["file"])
    return refs


def _forget_datasets(state: AppState, user: User, raw: Any) -> list[str]:
    """Delete the datasets the client uploaded for this refused experiment (named as the
    dAIEdge client names them) that no benchmark and no other experiment uses."""
    refs = {r for r in _referenced(raw) if FL_DATASET.fullmatch(r)}
    if not refs:
        return []
    deleted = []
    with state.db.session() as session:
        used: set[str] = set()
        # The caller's benchmarks and experiments, and anyone's unfinished ones (a public
        # dataset, or one named alike, may be in use by another user's job).
        for bench in session.scalars(select(Benchmark).where(or_(
                Benchmark.owner_id == user.id, Benchmark.status.in_(UNFINISHED_STATUSES)))):
            used.add(bench.dataset_name or "")
            odt = bench.odt_config or {}
            used.update(str(odt.get(s, {}).get(k)) for s in ("input", "output")
                        for k in ("train_file", "test_file") if isinstance(odt.get(s), dict))
        for config in session.scalars(select(FLExperimentRow.config).where(or_(
                FLExperimentRow.owner_id == user.id,
                FLExperimentRow.status.in_(UNFINISHED_STATUSES)))):
            used.update(_referenced(config))
        for ref in sorted(refs - used):
            row = session.scalar(select(Dataset).where(Dataset.owner_id == user.id,
                                                       Dataset.name == ref))
            if row is not None and not row.public:  # a public dataset may serve anyone
                delete_stored(session, row, state.scheduler.datasets)
                deleted.append(ref)
    return deleted


def _refuse(state: AppState, user: User, raw: Any, message: str, status: int = 400) -> None:
    deleted = _forget_datasets(state, user, raw)
    if deleted:
        message += (f" (the {len(deleted)} dataset(s) uploaded for this experiment and used "
                    f"by nothing else were deleted: {', '.join(deleted)})")
    raise HTTPException(status, message)


def _check_targets(session: Session, spec: ExperimentSpec) -> None:
    """Each client's target must offer its engine with TYPE2 and TYPE3 (FL-capable)."""
    instances = session.scalars(select(TargetInstance).where(
        TargetInstance.enabled.is_(True))).all()
    for index, client in enumerate(spec.clients):
        offering = [i for i in instances if i.target_type == client.target
                    and client.runtime in i.engines]
        if not offering:
            raise SubmissionError(f"clients[{index}].target: no instance of {client.target!r} "
                                  f"offers the engine {client.runtime!r}")
        capable = [i for i in offering if {"TYPE2", "TYPE3"} <= set(
            i.engines[client.runtime].get("supported_types", []))]
        if not capable:
            raise SubmissionError(
                f"clients[{index}].target: {client.target} with {client.runtime} cannot train "
                "(federated learning needs a target that offers TYPE2 and TYPE3)")


def _check_datasets(session: Session, user: User, spec: ExperimentSpec) -> None:
    """Every dataset exists and holds a whole number of samples; a client's inputs and
    targets hold as many samples."""
    counts: dict[str, int] = {}
    for field, ref, tensor in dataset_fields(spec):
        dataset = session.scalar(select(Dataset).where(Dataset.name == ref,
                                                       Dataset.owner_id == user.id))
        if dataset is None:
            dataset = session.scalar(select(Dataset).where(Dataset.name == ref,
                                                           Dataset.public.is_(True)))
        if dataset is None:
            raise SubmissionError(f"{field}: unknown dataset {ref!r}; upload it first")
        size = sample_bytes(tensor)
        if dataset.size == 0 or dataset.size % size:
            raise SubmissionError(f"{field}: dataset {ref} has {dataset.size} bytes, not a "
                                  f"whole number of {size}-byte samples "
                                  f"({list(tensor['shape'])} {tensor['dtype']})")
        counts[field] = dataset.size // size
    for field, count in counts.items():
        if ".input." in field or "server_dataset.input" in field:
            other = field.replace(".input.", ".output.")
            if other in counts and counts[other] != count:
                raise SubmissionError(f"{other}: {counts[other]} samples, but {field} has "
                                      f"{count}")


def _elements(shape: Any) -> int:
    return int(np.prod([int(d) for d in shape], dtype=np.int64)) if shape else 1


def _check_model(info: ModelInfo, spec: ExperimentSpec) -> None:
    """The config's tensors must be the model's: each client's as on-device training checks
    them (after `with_model_names`), the server dataset's by size and dtype."""
    if info.format != "onnx":
        raise SubmissionError("model: federated learning averages ONNX weights; send an "
                              f".onnx model (got {info.format})")
    if len(info.inputs) != 1 or len(info.outputs) < 1:
        raise SubmissionError(f"model: one input expected, the model has {len(info.inputs)}")
    model_in, model_out = info.inputs[0], info.outputs[0]
    in_elements, out_elements = _elements(model_in.shape), _elements(model_out.shape)
    described = f"{model_in.name} {list(model_in.shape)} {model_in.dtype}"
    if _elements(spec.model.get("input_shape")) != in_elements:
        raise SubmissionError(f"model.input_shape {spec.model.get('input_shape')} does not "
                              f"match the model's input {described}")
    for index, client in enumerate(spec.clients):
        try:
            check_config_against_model(with_model_names(client.odt, info.as_dict()), info)
        except ConfigError as exc:
            raise SubmissionError(f"clients[{index}].odt_config.{exc}") from exc
    if not spec.server_dataset:
        return
    tensor, target = spec.server_dataset["input"], spec.server_dataset["output"]
    if _elements(tensor["shape"]) != in_elements or \
            np.dtype(tensor["dtype"]) != np.dtype(model_in.dtype):
        raise SubmissionError(f"config.server_dataset.input: {list(tensor['shape'])} "
                              f"{tensor['dtype']} does not match the model's input {described}")
    labels = np.dtype(target["dtype"]).kind in "iu" and _elements(target["shape"]) == 1
    if _elements(target["shape"]) != out_elements and not labels:
        raise SubmissionError(
            f"config.server_dataset.output.shape {list(target['shape'])} does not match the "
            f"model's output {model_out.name} {list(model_out.shape)} (nor is it one class "
            "index per sample)")


def _accept(state: AppState, orchestrator: Orchestrator, user: User, raw: dict[str, Any],
            spec: ExperimentSpec, upload: Path, filename: str) -> str:
    with submission_errors(), state.db.session() as session:
        _check_targets(session, spec)
        _check_datasets(session, user, spec)
        info = intake_upload(upload, filename, engine_profile(session, spec.clients[0].runtime))
        _check_model(info, spec)
        stored = store_model(session, state.scheduler.models, user, upload, filename, info,
                             sha256_file(upload))
        row = FLExperimentRow(id=secrets.token_hex(8), owner_id=user.id, status=Status.PENDING,
                              message="", config=raw, results={}, model_id=stored.id,
                              model_filename=stored.filename, global_model_id=stored.id,
                              global_model_sha256=stored.sha256, current_round=0,
                              claimed_by=orchestrator.replica_id, lease_until=orchestrator.lease())
        session.add(row)
        session.flush()
        state.hub.publish_on_commit(session, row.id, experiment_event(row))
        return row.id


@router.post("/api/benchmarks/fl/run")
async def fl_run(request: Request, state: StateDep, user: UserDep, model: UploadFile,
                 fl_config: UploadFile) -> Submitted:
    """Start a federated-learning experiment: the model and the `fl_config` (§7.6). Every
    field is checked before anything is stored; a refusal names the field, and the datasets
    uploaded only for this experiment are deleted with it."""
    data = await fl_config.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise HTTPException(413, f"the FL config exceeds {CONFIG_LIMIT // 1024} KiB")
    try:
        raw = parse_user_json(data)
    except ValueError as exc:
        raise HTTPException(400, f"the FL config is not valid JSON ({exc})") from exc
    try:
        spec = parse_experiment(raw)
    except ConfigError as exc:
        await run_in_threadpool(_refuse, state, user, raw, f"invalid FL config: {exc}")
        raise  # _refuse always raises
    upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                               "model")
    try:
        experiment_id = await run_in_threadpool(_accept, state, orchestrator_of(request), user,
                                                raw, spec, upload,
                                                safe_filename(model.filename, "model.onnx"))
    except HTTPException as exc:
        await run_in_threadpool(_refuse, state, user, raw, str(exc.detail), exc.status_code)
        raise
    finally:
        upload.unlink(missing_ok=True)
    orchestrator_of(request).launch(experiment_id)
    return Submitted(id=experiment_id, status=Status.PENDING)


def _summary(row: FLExperimentRow) -> dict[str, Any]:
    rounds = (row.results or {}).get("rounds", [])
    last = rounds[-1] if rounds else {}
    config = row.config.get("config", {}) if isinstance(row.config, dict) else {}
    return {"id": row.id, "status": row.status, "message": row.message,
            "benchmark_type": "TYPE4", "model": row.model_filename,
            "rounds": config.get("rounds"), "current_round": row.current_round,
            "rounds_done": len(rounds), "clients": len(row.config.get("clients", [])),
            "global_accuracy": last.get("global_accuracy"),
            "global_loss": last.get("global_loss"),
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "started_at": row.started_at.isoformat() if row.started_at else None,
            "finished_at": row.finished_at.isoformat() if row.finished_at else None}


@router.get("/api/benchmarks/fl")
def fl_history(state: StateDep, user: UserDep, page: Page = 1,
               page_length: PageLength = 100) -> FLHistory:
    """The caller's experiments, newest first (an admin's: everyone's)."""
    with state.db.session() as session:
        query = select(FLExperimentRow)
        count_query = select(func.count()).select_from(FLExperimentRow)
        if not user.is_admin:
            query = query.where(FLExperimentRow.owner_id == user.id)
            count_query = count_query.where(FLExperimentRow.owner_id == user.id)
        count = session.scalar(count_query) or 0
        rows = session.scalars(query.order_by(FLExperimentRow.created_at.desc())
                               .offset((page - 1) * page_length).limit(page_length)).all()
        return FLHistory(count=count, page=page, page_length=page_length,
                         results=[_summary(r) for r in rows])


def _experiment(state: AppState, user: User, experiment_id: str) -> FLExperimentRow:
    with state.db.session() as session:
        row = session.get(FLExperimentRow, experiment_id)
        if row is None or (row.owner_id != user.id and not user.is_admin):
            raise HTTPException(404, f"no federated-learning experiment {experiment_id}")
        session.expunge(row)
        return row


@router.get("/api/benchmarks/fl/{experiment_id}/status")
def fl_status(experiment_id: str, state: StateDep, user: UserDep) -> FLExperiment:
    row = _experiment(state, user, experiment_id)
    return FLExperiment.model_validate(_summary(row))


@router.get("/api/benchmarks/fl/{experiment_id}/results")
def fl_results(experiment_id: str, state: StateDep, user: UserDep) -> FLExperiment:
    """Per round: participants, dropped clients and why, each client's losses and accuracies,
    the aggregated metrics, time; then what ended the experiment."""
    row = _experiment(state, user, experiment_id)
    results = row.results or {}
    return FLExperiment.model_validate({
        **_summary(row), "strategy": "FedAvg (Flower)", "initial": results.get("initial"),
        "rounds_results": results.get("rounds", []), "stop": results.get("stop"),
        "global_model_sha256": row.global_model_sha256})


@router.get("/api/benchmarks/fl/{experiment_id}/definition")
def fl_definition(experiment_id: str, state: StateDep, user: UserDep) -> FLExperiment:
    """The experiment's config as submitted."""
    return FLExperiment.model_validate(_experiment(state, user, experiment_id).config)


@router.get("/api/benchmarks/fl/{experiment_id}/model", response_class=FileResponse)
def fl_model(experiment_id: str, state: StateDep, user: UserDep) -> FileResponse:
    """The global model (after the last aggregated round); 428 before the experiment ends."""
    row = _experiment(state, user, experiment_id)
    if row.status not in TERMINAL_STATUSES:
        raise HTTPException(428, f"experiment {experiment_id} is {row.status}; the global "
                                 "model is served once it ends")
    with state.db.session() as session:
        model = session.get(StoredModel, row.global_model_id or row.model_id)
        if model is None:
            raise HTTPException(404, "the global model was deleted")
        path = state.scheduler.models.path(model.sha256)
    stem = Path(row.model_filename).stem
    # The dAIEdge client's convention: `filename` last in Content-Disposition.
    return FileResponse(path, media_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{stem}_fl_{experiment_id}.onnx"'})


@router.post("/api/benchmarks/fl/{experiment_id}/cancel")
async def fl_cancel(experiment_id: str, request: Request, state: StateDep,
                    user: UserDep) -> FLCanceled:
    """Cancel an experiment and the client jobs it has running."""
    await run_in_threadpool(_experiment, state, user, experiment_id)
    status = await orchestrator_of(request).cancel(experiment_id)
    return FLCanceled(id=experiment_id, status=Status(status))


@router.delete("/api/benchmarks/fl/{experiment_id}")
async def fl_delete(experiment_id: str, request: Request, state: StateDep,
                    user: UserDep) -> FLCanceled:
    """Cancel an experiment (as `POST .../cancel`); a finished one stays in the history."""
    return await fl_cancel(experiment_id, request, state, user)


@router.get("/api/benchmarks/fl/{experiment_id}/events", response_class=StreamingResponse,
            responses=sse.STREAM_RESPONSE)
async def fl_events(experiment_id: str, state: StateDep, user: UserDep) -> StreamingResponse:
    """Server-sent events: the experiment's state, then its rounds and phases until it ends."""
    await run_in_threadpool(_experiment, state, user, experiment_id)

    async def stream() -> AsyncIterator[str]:
        async with state.hub.subscribe(experiment_id) as queue:
            row = await run_in_threadpool(_experiment, state, user, experiment_id)
            yield sse.message({"id": row.id, **experiment_event(row)})
            if row.is_terminal:
                return
            async def reread() -> dict[str, Any]:
                current = await run_in_threadpool(_experiment, state, user, experiment_id)
                return experiment_event(current)

            # Another replica may drive the experiment: its events reach this one through
            # the database only (once a second on a shared store).
            async for chunk in sse.relay(queue, lambda event: event, lambda event: (
                    event.get("status") in TERMINAL_STATUSES), reread=reread,
                    reread_s=1.0 if state.scheduler.shared else sse.KEEP_ALIVE_S):
                yield chunk

    return sse.event_stream(stream())
