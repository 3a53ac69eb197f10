"""On-device training (TYPE3) submissions. Federated learning (TYPE4) is in `federated`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from vlab_backend.api.deps import submission_errors
from vlab_backend.api.routes.benchmarks import parse_json_field
from vlab_backend.api.schemas import ERRORS, Submitted
from vlab_backend.api.state import AppState, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.blobstore import sha256_file
from vlab_backend.catalog import engine_profile
from vlab_backend.engines.base import parse_user_json
from vlab_backend.odt import (
    ConfigError,
    dataset_refs,
    sample_bytes,
    validate_odt_config,
)
from vlab_backend.scheduler import benchmark_event
from vlab_backend.store.schema import Status, User
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
from vlab_backend.training.tensors import check_config_against_model

router = APIRouter(tags=["training"], responses=ERRORS)
CONFIG_LIMIT = 1024 * 1024


async def _config_part(part: UploadFile, what: str,
                       validate: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A JSON config sent as a file part, validated; 413, or 400 saying what is wrong."""
    data = await part.read(CONFIG_LIMIT + 1)
    if len(data) > CONFIG_LIMIT:
        raise HTTPException(413, f"the {what} config exceeds {CONFIG_LIMIT // 1024} KiB")
    try:
        config = parse_user_json(data)
    except ValueError as exc:
        raise HTTPException(400, f"the {what} config is not valid JSON ({exc})") from exc
    try:
        return validate(config)
    except ConfigError as exc:
        raise HTTPException(400, f"invalid {what} config: {exc}") from exc


@router.post("/api/benchmarks/train")
async def train(state: StateDep, user: UserDep, model: UploadFile, config: UploadFile,
                device: Annotated[str, Form()], engine: Annotated[str, Form()],
                target_uids: Annotated[str | None, Form()] = None) -> Submitted:
    """Submit on-device training (TYPE3): a model and its ODT config."""
    odt = await _config_part(config, "ODT", validate_odt_config)
    uids = parse_json_field(target_uids, "target_uids", list)
    request = RunRequest(target_type=device, engine=engine, benchmark_type="TYPE3",
                         nb_inference=1, target_uids=[str(u) for u in uids], odt=True)
    await run_in_threadpool(_check_training, state, user, request, odt)
    upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                               "model")
    try:
        bench_id = await run_in_threadpool(_accept_training, state, user, request, odt, upload,
                                           safe_filename(model.filename, "model"))
    finally:
        discard(upload)
    state.scheduler.wake()
    return Submitted(id=bench_id, status=Status.PENDING)


def _check_training(state: AppState, user: User, request: RunRequest,
                    odt: dict[str, Any]) -> None:
    """The checks that need no upload: target, engine, and datasets that fit the config."""
    with state.db.session() as session, submission_errors():
        check_request(session, request, state.settings.max_nb_inference)
        for ref, section in zip(dataset_refs(odt), ("input", "input", "output", "output"),
                                strict=True):
            dataset = resolve_dataset(session, user, ref)
            if dataset.size % sample_bytes(odt[section]):
                raise SubmissionError(
                    f"dataset {ref} has {dataset.size} bytes, not a multiple of the "
                    f"{section} sample size ({sample_bytes(odt[section])} bytes)")


def _accept_training(state: AppState, user: User, request: RunRequest, odt: dict[str, Any],
                     upload: Path, filename: str) -> str:
    with submission_errors(), state.db.session() as session:
        info = intake_upload(upload, filename, engine_profile(session, request.engine))
        try:  # before anything is stored
            check_config_against_model(odt, info)
        except ConfigError as exc:
            raise SubmissionError(f"invalid ODT config for {filename}: {exc}") from exc
        stored = store_model(session, state.scheduler.models, user, upload, filename, info,
                             sha256_file(upload))
        bench = create_benchmark(session, user, request, stored)
        bench.odt_config = odt
        state.hub.publish_on_commit(session, bench.id, benchmark_event(bench))
        return bench.id
