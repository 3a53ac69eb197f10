"""Endpoints for pipelines running on other hosts, authenticated by their single-job
credential: read the job's spec and inputs, report progress, post the outputs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from vlab_backend.api.schemas import (
    ERRORS,
    Acknowledged,
    JobProgress,
    JobSpecView,
    SavedOutputs,
)
from vlab_backend.api.state import AppState, StateDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.auth import JOB_TOKEN_PREFIX, AuthError, job_of_credential
from vlab_backend.jobdir import JobDir, PipelineResult, Progress, checked_curves

router = APIRouter(prefix="/api/jobs", tags=["jobs"], responses=ERRORS)
_bearer = HTTPBearer(auto_error=False)
BINARY: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {
    "schema": {"type": "string", "format": "binary"}}}, "description": "the input's bytes"}}


def job_access(bench_id: str, state: StateDep,
               credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
               ) -> JobDir:
    """The job dir of `bench_id`, if the request carries that job's credential."""
    token = credentials.credentials if credentials else ""
    if not token.startswith(JOB_TOKEN_PREFIX):
        raise HTTPException(401, "a job credential is required")
    with state.db.session() as session:
        try:
            granted = job_of_credential(session, token)
        except AuthError as exc:
            raise HTTPException(401, str(exc)) from exc
    if granted != bench_id:
        raise HTTPException(403, "this credential belongs to another job")
    job = state.scheduler.job_dir(bench_id)
    if not job.has_spec():
        raise HTTPException(404, f"job {bench_id} is not running")
    return job


CredentialedJob = Annotated[JobDir, Depends(job_access)]


@router.get("/{bench_id}/spec")
def job_spec(bench_id: str, job: CredentialedJob) -> JobSpecView:
    spec = job.read_spec()
    inputs = ["model"] + (["dataset"] if spec.dataset_path else []) + sorted(spec.extra_files)
    return JobSpecView.model_validate({**spec.as_dict(), "inputs": inputs})


@router.get("/{bench_id}/inputs/{name}", response_class=FileResponse, responses=BINARY)
def job_input(bench_id: str, name: str, job: CredentialedJob) -> FileResponse:
    spec = job.read_spec()
    paths = {"model": spec.model_path, "dataset": spec.dataset_path, **spec.extra_files}
    path = paths.get(name)
    if not path:
        raise HTTPException(404, f"job {bench_id} has no input {name!r}")
    return FileResponse(path, media_type="application/octet-stream")


@router.post("/{bench_id}/progress")
def job_progress(bench_id: str, body: JobProgress, job: CredentialedJob) -> Acknowledged:
    job.write_progress(Progress(safe_filename(body.phase, "running"), body.done, body.total,
                                checked_curves(body.curves)))
    return Acknowledged(ok=True)


@router.post("/{bench_id}/outputs")
async def job_outputs(bench_id: str, request: Request, job: CredentialedJob,
                      state: StateDep) -> SavedOutputs:
    """Multipart parts: `out` (files of AI_Manager/out), `steps` (step logs) and `result`
    (the pipeline's result). Names are reduced to their base name; sizes are limited."""
    form = await request.form(max_files=64)
    saved: list[str] = []
    for field, destination in (("out", job.out), ("steps", job.steps_dir)):
        destination.mkdir(parents=True, exist_ok=True)
        for part in form.getlist(field):
            if isinstance(part, UploadFile):
                saved.append(await _store(state, part, destination))
    result = form.get("result")
    if isinstance(result, UploadFile):
        data = await result.read(1024 * 1024)
        try:
            parsed = PipelineResult.parse(data)
        except ValueError as exc:
            raise HTTPException(400, f"result must be the pipeline's JSON result ({exc})"
                                ) from exc
        job.write_result(parsed)
        saved.append(job.result_file.name)
    return SavedOutputs(saved=saved)


async def _store(state: AppState, part: UploadFile, destination: Path) -> str:
    name = safe_filename(part.filename, "output")
    temporary = await save_upload(part, state.settings.tmp_dir,
                                  state.settings.max_dataset_bytes, "output")
    os.replace(temporary, destination / name)
    return name
