"""On-device training (TYPE3) submissions and the federated-learning (TYPE4) endpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from vlab_backend.api.routes.benchmarks import parse_json_field
from vlab_backend.api.state import AppState, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.blobstore import sha256_file
from vlab_backend.catalog import engine_profile
from vlab_backend.odt import (
    ConfigError,
    dataset_refs,
    sample_bytes,
    validate_fl_config,
    validate_odt_config,
)
from vlab_backend.scheduler import benchmark_event
from vlab_backend.store.schema import TargetInstance, User
from vlab_backend.submission import (
    RunRequest,
    SubmissionError,
    check_request,
    create_benchmark,
    discard,
    intake_upload,
    resolve_dataset,
    store_model,
)

router = APIRouter(tags=["training"])
CONFIG_LIMIT = 1024 * 1024


async def _read_json_part(part: UploadFile, what: str) -> Any:
    data = await part.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise HTTPException(413, f"the {what} exceeds {CONFIG_LIMIT // 1024} KiB")
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"the {what} is not valid JSON") from exc


@router.post("/api/benchmarks/train")
async def train(state: StateDep, user: UserDep, model: UploadFile, config: UploadFile,
                device: Annotated[str, Form()], engine: Annotated[str, Form()],
                target_uids: Annotated[str | None, Form()] = None) -> dict[str, Any]:
    """Submit on-device training (TYPE3): a model and its ODT config."""
    try:
        odt = validate_odt_config(await _read_json_part(config, "ODT config"))
    except ConfigError as exc:
        raise HTTPException(400, f"invalid ODT config: {exc}") from exc
    uids = parse_json_field(target_uids, "target_uids", list)
    request = RunRequest(target_type=device, engine=engine, benchmark_type="TYPE3",
                         nb_inference=1, target_uids=[str(u) for u in uids], odt=True)
    with state.db.session() as session:
        try:
            check_request(session, request, state.settings.max_nb_inference)
            for ref, section in zip(dataset_refs(odt), ("input", "input", "output", "output"),
                                    strict=True):
                dataset = resolve_dataset(session, user, ref)
                if dataset.size % sample_bytes(odt[section]):
                    raise SubmissionError(
                        f"dataset {ref} has {dataset.size} bytes, not a multiple of the "
                        f"{section} sample size ({sample_bytes(odt[section])} bytes)")
        except SubmissionError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
    upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                               "model")
    try:
        bench_id = await run_in_threadpool(_accept_training, state, user, request, odt, upload,
                                           safe_filename(model.filename, "model"))
    finally:
        discard(upload)
    state.scheduler.wake()
    return {"id": bench_id, "status": "pending"}


def _accept_training(state: AppState, user: User, request: RunRequest, odt: dict[str, Any],
                     upload: Path, filename: str) -> str:
    try:
        with state.db.session() as session:
            info = intake_upload(upload, filename, engine_profile(session, request.engine))
            stored = store_model(session, state.scheduler.models, user, upload, filename, info,
                                 sha256_file(upload))
            bench = create_benchmark(session, user, request, stored)
            bench.odt_config = odt
            state.hub.publish(bench.id, benchmark_event(bench))
            return bench.id
    except SubmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc


@router.post("/api/benchmarks/fl/run")
async def fl_run(state: StateDep, user: UserDep, model: UploadFile,
                 fl_config: UploadFile) -> dict[str, Any]:
    """Federated learning: the experiment is validated; it runs only where targets offer
    TYPE4."""
    try:
        config = validate_fl_config(await _read_json_part(fl_config, "FL config"))
    except ConfigError as exc:
        raise HTTPException(400, f"invalid FL config: {exc}") from exc
    with state.db.session() as session:
        instances = session.scalars(select(TargetInstance).where(
            TargetInstance.enabled.is_(True))).all()
    for client in config["clients"]:
        offers = any(i.target_type == client["target"]
                     and "TYPE4" in i.engines.get(client["runtime"], {}).get("supported_types", [])
                     for i in instances)
        if not offers:
            raise HTTPException(400, f"no target offers federated learning (TYPE4) for "
                                     f"{client['client_id']}: {client['target']} with "
                                     f"{client['runtime']}")
    raise HTTPException(501, "federated-learning orchestration is not available in this lab")


@router.get("/api/benchmarks/fl")
def fl_history(_user: UserDep, page: int = 1, page_length: int = 100) -> dict[str, Any]:
    return {"count": 0, "page": page, "page_length": page_length, "results": []}


@router.get("/api/benchmarks/fl/{experiment_id}/{what}")
def fl_experiment(experiment_id: str, what: str, _user: UserDep) -> dict[str, Any]:
    raise HTTPException(404, f"no federated-learning experiment {experiment_id}")
