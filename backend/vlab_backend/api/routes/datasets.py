"""Datasets, named `<uploaded file name>_<sha256>` as the dAIEdge client computes them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from vlab_backend.api.deps import get_dataset_or_404
from vlab_backend.api.schemas import ERRORS, DatasetStored, Deleted
from vlab_backend.api.state import AppState, SessionDep, StateDep, UserDep
from vlab_backend.api.uploads import safe_filename, save_upload
from vlab_backend.blobstore import sha256_file
from vlab_backend.store.schema import UNFINISHED_STATUSES, Benchmark, Dataset, User
from vlab_backend.submission import delete_stored, discard, retry_on_conflict, visible

router = APIRouter(tags=["datasets"], responses=ERRORS)


@router.get("/api/benchmarks/datasets")
def list_datasets(session: SessionDep, user: UserDep) -> list[str]:
    """The names of the caller's datasets and of public ones."""
    query = visible(select(Dataset.name), Dataset.owner_id, Dataset.public, user)
    return sorted(set(session.scalars(query.order_by(Dataset.name))))


@router.post("/api/benchmarks/datasets/upload", status_code=207)
async def upload_dataset(state: StateDep, user: UserDep, dataset: UploadFile,
                         hash: Annotated[str, Form(description="SHA-256 hex of the file")],
                         ) -> DatasetStored:
    """Store the file; it must match `hash`. Answers 207 as the dAIEdge client expects."""
    declared = hash.strip().lower()
    if len(declared) != 64 or any(c not in "0123456789abcdef" for c in declared):
        raise HTTPException(400, "hash must be the SHA-256 hex digest of the file")
    upload = await save_upload(dataset, state.settings.tmp_dir,
                               state.settings.max_dataset_bytes, "dataset")
    try:
        name = await run_in_threadpool(retry_on_conflict, _store, state, user, upload,
                                       dataset.filename, declared)
    finally:
        discard(upload)
    return DatasetStored(name=name)


def _store(state: AppState, user: User, upload: Path, filename: str | None,
           declared: str) -> str:
    actual = sha256_file(upload)
    if actual != declared:
        raise HTTPException(400, f"the upload's SHA-256 is {actual}, not the declared {declared}")
    size = upload.stat().st_size
    if size == 0:
        raise HTTPException(400, "the dataset is empty")
    name = f"{safe_filename(filename, 'dataset.bin')}_{actual}"
    with state.db.session() as session:
        existing = session.scalar(select(Dataset).where(Dataset.owner_id == user.id,
                                                        Dataset.name == name))
        if existing is None:
            state.scheduler.datasets.put(upload, actual)
            session.add(Dataset(owner_id=user.id, name=name, sha256=actual, size=size))
    return name


@router.delete("/api/benchmarks/datasets/{name}")
def delete_dataset(name: str, state: StateDep, session: SessionDep, user: UserDep) -> Deleted:
    dataset = get_dataset_or_404(session, user, name)
    in_use = session.scalar(select(Benchmark.id).where(
        Benchmark.dataset_name == name, Benchmark.owner_id == user.id,
        Benchmark.status.in_(UNFINISHED_STATUSES)))
    if in_use:
        raise HTTPException(409, f"dataset {name} is used by benchmark {in_use}, "
                                 "which has not finished")
    delete_stored(session, dataset, state.scheduler.datasets)
    return Deleted(name=name, deleted=True)
