"""The model library: upload or import (`/api/models/download`), list, convert."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from vlab_backend.api.state import AppState, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.blobstore import sha256_file
from vlab_backend.convert import ConversionError, convert, converted_name
from vlab_backend.intake import ModelInfo
from vlab_backend.store.schema import Benchmark, StoredModel, User
from vlab_backend.submission import (
    SubmissionError,
    blob_unreferenced,
    discard,
    intake_upload,
    model_ref,
    resolve_model_ref,
    retry_on_conflict,
    store_model,
)

router = APIRouter(tags=["models"])
PLATFORMS = ("user_models", "public")


def model_view(model: StoredModel, user: User) -> dict[str, Any]:
    info = model.info or {}
    return {"model": model_ref(model), "filename": model.filename, "format": model.format,
            "size": model.size, "sha256": model.sha256, "public": model.public,
            "owned": model.owner_id == user.id,
            "platform": "user_models" if model.owner_id == user.id else "public",
            "inputs": info.get("inputs", []), "outputs": info.get("outputs", []),
            "nb_parameters": info.get("nb_parameters"), "flops": info.get("flops"),
            "opset": info.get("opset"), "created_at": model.created_at.isoformat()}


@router.post("/api/models/download")
async def upload_or_import(state: StateDep, user: UserDep, platform: str = "user_models",
                           resource_identifier: str = "",
                           model: UploadFile | None = None) -> JSONResponse:
    """With a `model` file: store it in the caller's library. Without: import the model named
    by `resource_identifier` (a `model-N` reference visible to the caller)."""
    if model is not None and model.filename:
        upload = await save_upload(model, state.settings.tmp_dir, state.settings.max_model_bytes,
                                   "model")
        try:
            body = await run_in_threadpool(retry_on_conflict, _store_upload, state, user,
                                           upload, safe_filename(model.filename, "model"))
        finally:
            discard(upload)
        return JSONResponse(body, status_code=201)
    if not resource_identifier:
        raise HTTPException(400, "send a model file (part 'model') or a resource_identifier")
    body = await run_in_threadpool(_import, state, user, resource_identifier)
    return JSONResponse(body, status_code=200)


def _store_upload(state: AppState, user: User, upload: Path, filename: str) -> dict[str, Any]:
    try:
        info = intake_upload(upload, filename, None)
    except SubmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    with state.db.session() as session:
        stored = store_model(session, state.scheduler.models, user, upload, filename, info,
                             sha256_file(upload))
        return model_view(stored, user)


def _import(state: AppState, user: User, ident: str) -> dict[str, Any]:
    with state.db.session() as session:
        try:
            source = resolve_model_ref(session, user, ident)
        except SubmissionError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
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
def list_models(state: StateDep, user: UserDep, platform: str | None = None) -> dict[str, Any]:
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
    with state.db.session() as session:
        models = session.scalars(query.order_by(StoredModel.id.desc())).all()
        items = [model_view(m, user) for m in models]
    return {"count": len(items), "models": items}


@router.post("/api/models/convert")
async def convert_model(state: StateDep, user: UserDep, resource_identifier: str,
                        convert_to: str, platform: str = "user_models",
                        format: str | None = None) -> JSONResponse:
    """Convert a model of the caller's library; the result is a new model in it."""
    body = await run_in_threadpool(_convert, state, user, resource_identifier, convert_to,
                                   format)
    return JSONResponse(body, status_code=201)


def _convert(state: AppState, user: User, ident: str, target: str,
             declared_format: str | None) -> dict[str, Any]:
    with state.db.session() as session:
        try:
            source = resolve_model_ref(session, user, ident)
        except SubmissionError as exc:
            raise HTTPException(exc.status, str(exc)) from exc
        source_path = state.scheduler.models.path(source.sha256)
        source_format, source_name = source.format, source.filename
    if declared_format and declared_format.lstrip(".").lower() != source_format:
        raise HTTPException(400, f"{ident} is a {source_format} model, not {declared_format}")
    work = Path(tempfile.mkdtemp(dir=state.settings.tmp_dir, prefix="convert-"))
    try:
        try:
            produced = convert(source_path, source_format, target, work)
        except ConversionError as exc:
            raise HTTPException(400, str(exc)) from exc
        name = converted_name(source_name, target)
        try:
            info: ModelInfo = intake_upload(produced, name, None)
        except SubmissionError as exc:
            raise HTTPException(422, f"the converted model does not pass intake: {exc}") from exc
        with state.db.session() as session:
            stored = store_model(session, state.scheduler.models, user, produced, name, info,
                                 sha256_file(produced))
            return model_view(stored, user)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Visibility(BaseModel):
    public: bool


def _owned_model(session: Session, user: User, ident: str) -> StoredModel:
    try:
        model = resolve_model_ref(session, user, ident)
    except SubmissionError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    if model.owner_id != user.id and not user.is_admin:
        raise HTTPException(404, f"unknown model reference {ident!r}")
    return model


@router.patch("/api/models/{ident}")
def set_model_visibility(ident: str, body: Visibility, state: StateDep,
                         user: UserDep) -> dict[str, Any]:
    """Share a model with every user (`public: true`) or make it private again."""
    with state.db.session() as session:
        model = _owned_model(session, user, ident)
        model.public = body.public
        return model_view(model, user)


@router.delete("/api/models/{ident}")
def delete_model(ident: str, state: StateDep, user: UserDep) -> dict[str, Any]:
    with state.db.session() as session:
        model = _owned_model(session, user, ident)
        if session.scalar(select(Benchmark.id).where(Benchmark.model_id == model.id)):
            raise HTTPException(409, f"{ident} is used by benchmarks; delete them first")
        sha = model.sha256
        session.delete(model)
        orphan = blob_unreferenced(session, StoredModel.sha256, sha)
    if orphan:
        state.scheduler.models.remove(sha)
    return {"model": ident, "deleted": True}
