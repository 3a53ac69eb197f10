"""The model library: upload or import (`/api/models/download`), list, convert."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import or_, select

from vlab_backend.api.deps import (
    get_dataset_or_404,
    get_model_or_404,
    get_owned_model_or_404,
    submission_errors,
)
from vlab_backend.api.schemas import ERRORS, ModelDeleted, ModelList, StoredModelView, Visibility
from vlab_backend.api.state import AppState, SessionDep, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.api.views import model_view
from vlab_backend.blobstore import sha256_file
from vlab_backend.convert import (
    ConversionError,
    ConverterBusy,
    check_conversion,
    conversion_slot,
    convert_traced,
    converted_name,
)
from vlab_backend.store.schema import Benchmark, StoredModel, User
from vlab_backend.submission import (
    NAMELESS_MODEL_PART,
    SubmissionError,
    delete_stored,
    discard,
    intake_upload,
    retry_on_conflict,
    store_model,
)

router = APIRouter(tags=["models"], responses=ERRORS)
PLATFORMS = ("user_models", "public")


@router.post("/api/models/download",
             responses={201: {"model": StoredModelView, "description": "an uploaded model, "
                                                                      "stored"}})
async def upload_or_import(state: StateDep, user: UserDep, response: Response,
                           platform: str = "user_models", resource_identifier: str = "",
                           model: UploadFile | None = None) -> StoredModelView:
    """With a `model` file: store it in the caller's library (201). Without: import the model
    named by `resource_identifier` (a `model-N` reference visible to the caller) (200)."""
    if model is not None and not model.filename:
        raise HTTPException(400, NAMELESS_MODEL_PART)
    if model is not None:
        upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                                   "model")
        try:
            stored = await run_in_threadpool(retry_on_conflict, _store_upload, state, user,
                                             upload, safe_filename(model.filename, "model"))
        finally:
            discard(upload)
        response.status_code = 201
        return stored
    if not resource_identifier:
        raise HTTPException(400, "send a model file (part 'model') or a resource_identifier")
    return await run_in_threadpool(_import, state, user, resource_identifier)


def _store_upload(state: AppState, user: User, upload: Path, filename: str) -> StoredModelView:
    with submission_errors():
        info = intake_upload(upload, filename, None, state.settings.max_model_bytes)
    with state.db.session() as session:
        stored = store_model(session, state.scheduler.models, user, upload, filename, info,
                             sha256_file(upload))
        return model_view(stored, user)


def _import(state: AppState, user: User, ident: str) -> StoredModelView:
    """The caller's copy of a visible model (the model itself if it is theirs)."""
    with state.db.session() as session:
        source = get_model_or_404(session, user, ident)
        if source.owner_id == user.id:
            return model_view(source, user)
        copy = session.scalar(select(StoredModel).where(
            StoredModel.owner_id == user.id, StoredModel.sha256 == source.sha256,
            StoredModel.filename == source.filename))
        if copy is None:
            copy = StoredModel(owner_id=user.id, sha256=source.sha256, filename=source.filename,
                               format=source.format, size=source.size, info=dict(source.info))
            session.add(copy)
            session.flush()
        return model_view(copy, user)


@router.get("/api/models/list")
def list_models(session: SessionDep, user: UserDep, platform: str | None = None) -> ModelList:
    """The caller's models (`platform=user_models`), public ones (`public`), or both."""
    if platform is not None and platform not in PLATFORMS:
        raise HTTPException(400, f"platform must be one of {', '.join(PLATFORMS)}")
    query = select(StoredModel)
    if platform == "user_models":
        query = query.where(StoredModel.owner_id == user.id)
    elif platform == "public":
        query = query.where(StoredModel.public.is_(True))
    else:
        query = query.where(or_(StoredModel.owner_id == user.id, StoredModel.public.is_(True)))
    items = [model_view(m, user) for m in session.scalars(query.order_by(StoredModel.id.desc()))]
    return ModelList(count=len(items), models=items)


@router.post("/api/models/convert", status_code=201)
async def convert_model(state: StateDep, user: UserDep, resource_identifier: str,
                        convert_to: str, platform: str = "user_models",
                        format: str | None = None,
                        dataset: str | None = None) -> StoredModelView:
    """Convert a model of the caller's library; the result is a new model in it, with its
    lineage (source model, conversion, tool, options). `dataset` (ours): the representative
    dataset of an int8 conversion (`tflite_int8`), one of the caller's datasets."""
    return await run_in_threadpool(_convert, state, user, resource_identifier, convert_to,
                                   format, dataset)


def _convert(state: AppState, user: User, ident: str, target: str,
             declared_format: str | None, dataset_name: str | None = None) -> StoredModelView:
    with state.db.session() as session:
        source = get_model_or_404(session, user, ident)
        source_path = state.scheduler.models.path(source.sha256)
        source_format, source_name = source.format, source.filename
        source_sha = source.sha256
        dataset_path = None
        if dataset_name:
            dataset_row = get_dataset_or_404(session, user, dataset_name)
            dataset_path = state.scheduler.datasets.path(dataset_row.sha256)
    if declared_format and declared_format.lstrip(".").lower() != source_format:
        raise HTTPException(400, f"{ident} is a {source_format} model, not {declared_format}")
    try:
        check_conversion(source_format, target, dataset_path)
    except ConversionError as exc:
        raise HTTPException(400, str(exc)) from exc
    work = Path(tempfile.mkdtemp(dir=state.settings.tmp_dir, prefix="convert-"))
    try:
        try:
            # onnx2tf and tf2onnx: at most VLAB_MAX_CONVERSIONS at once, never queued.
            with conversion_slot(target, state.settings.max_conversions):
                produced, conversion = convert_traced(source_path, source_format, target,
                                                      work, dataset_path)
        except ConverterBusy as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "30"}) from exc
        except ConversionError as exc:
            raise HTTPException(400, str(exc)) from exc
        name = converted_name(source_name, target)
        try:
            info = intake_upload(produced, name, None, state.settings.max_model_bytes)
        except SubmissionError as exc:
            raise HTTPException(422, f"the converted model does not pass intake: {exc}") from exc
        lineage = {
            "source": ident, "source_filename": source_name, "source_format": source_format,
            "source_sha256": source_sha, "conversion": target, "tool": conversion.tool,
            "options": conversion.options | ({"dataset": dataset_name} if dataset_name
                                             else {})}
        with state.db.session() as session:
            stored = store_model(session, state.scheduler.models, user, produced, name, info,
                                 sha256_file(produced))
            stored.info = {**(stored.info or {}), "lineage": lineage}
            return model_view(stored, user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@router.patch("/api/models/{ident}")
def set_model_visibility(ident: str, body: Visibility, session: SessionDep,
                         user: UserDep) -> StoredModelView:
    """Share a model with every user (`public: true`) or make it private again."""
    model = get_owned_model_or_404(session, user, ident)
    model.public = body.public
    return model_view(model, user)


@router.delete("/api/models/{ident}")
def delete_model(ident: str, state: StateDep, session: SessionDep,
                 user: UserDep) -> ModelDeleted:
    model = get_owned_model_or_404(session, user, ident)
    if session.scalar(select(Benchmark.id).where(Benchmark.model_id == model.id)):
        raise HTTPException(409, f"{ident} is used by benchmarks; delete them first")
    delete_stored(session, model, state.scheduler.models)
    return ModelDeleted(model=ident, deleted=True)
