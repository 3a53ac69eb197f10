"""Validation and acceptance of benchmark submissions, shared by every API entry point.

Everything is checked before anything is stored: a rejected submission leaves no trace.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from vlab_backend.blobstore import BlobStore
from vlab_backend.catalog import EngineProfile, engine_profile
from vlab_backend.intake import ModelInfo, ModelRejected, inspect_model
from vlab_backend.store.schema import (
    Benchmark,
    Dataset,
    Status,
    StoredModel,
    TargetInstance,
    User,
)
from vlab_kernel.defaults import DEFAULT_NB_INFERENCE

SUPPORTED_RUN_TYPES = ("TYPE1", "TYPE2", "TYPE3")
NAMELESS_MODEL_PART = ("the 'model' part has no filename; send the model as a file, with its "
                       "name (e.g. model.onnx)")
INSPECTED_EXTENSIONS = (".onnx", ".tflite", ".zip")


class SubmissionError(ValueError):
    """A bad request; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RunRequest:
    target_type: str
    engine: str
    benchmark_type: str = "TYPE1"
    nb_inference: int = DEFAULT_NB_INFERENCE
    target_uids: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    dataset_name: str | None = None
    model_ref: str | None = None
    public: bool = False
    odt: bool = False  # a training submission, which carries an ODT config
    name: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""


# Labels of a run (its owner's name, tags and notes): the bounds the API enforces.
MAX_NAME_CHARS = 200
MAX_NOTES_CHARS = 4000
MAX_TAGS = 32
MAX_TAG_CHARS = 64
TAG_PATTERN = re.compile(rf"[A-Za-z0-9_.:-]{{1,{MAX_TAG_CHARS}}}")
TAG_RULE = f"1 to {MAX_TAG_CHARS} characters of A-Z a-z 0-9 _ . : -"
# Control characters (PostgreSQL stores no NUL at all); notes may hold tabs and new lines.
_CONTROL = {"name": re.compile(r"[\x00-\x1f\x7f]"),
            "notes": re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")}


@dataclass
class Labels:
    """Validated labels; None: leave that label as it is."""

    name: str | None = None
    tags: list[str] | None = None
    notes: str | None = None


def check_tag(tag: Any, what: str = "tags") -> str:
    if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
        raise SubmissionError(f"{what}: {tag!r} is not a tag ({TAG_RULE})")
    return tag


def check_labels(name: Any = None, tags: Any = None, notes: Any = None) -> Labels:
    """The labels as given, or a SubmissionError naming the first bad field. Tags keep
    their order; repeats are dropped."""
    for field_name, value, limit in (("name", name, MAX_NAME_CHARS),
                                     ("notes", notes, MAX_NOTES_CHARS)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise SubmissionError(f"{field_name} must be a string")
        if len(value) > limit:
            raise SubmissionError(f"{field_name} must be at most {limit} characters "
                                  f"(got {len(value)})")
        if _CONTROL[field_name].search(value):
            raise SubmissionError(f"{field_name} must not contain control characters"
                                  + (" (other than tabs and new lines)"
                                     if field_name == "notes" else ""))
    if tags is not None:
        if not isinstance(tags, list):
            raise SubmissionError("tags must be a list of strings")
        if len(tags) > MAX_TAGS:
            raise SubmissionError(f"tags: at most {MAX_TAGS} tags (got {len(tags)})")
        tags = list(dict.fromkeys(check_tag(tag) for tag in tags))
    return Labels(name=name.strip() if name is not None else None, tags=tags, notes=notes)


def model_ref(model: StoredModel) -> str:
    return f"model-{model.id}"


def visible(query: Any, column_owner: Any, column_public: Any, user: User) -> Any:
    """Restrict a select to rows the user owns or that are public (admins see all)."""
    if user.is_admin:
        return query
    return query.where(or_(column_owner == user.id, column_public.is_(True)))


def check_request(session: Session, request: RunRequest, max_nb_inference: int) -> None:
    """Target, engine, type, count and parameters: the checks that need no upload."""
    instances = session.scalars(select(TargetInstance).where(
        TargetInstance.target_type == request.target_type,
        TargetInstance.enabled.is_(True))).all()
    if not instances:
        known = sorted(set(session.scalars(select(TargetInstance.target_type).where(
            TargetInstance.enabled.is_(True)))))
        raise SubmissionError(f"unknown target {request.target_type!r}; available targets: "
                              f"{', '.join(known) or 'none'}", 404)
    offering = [i for i in instances if request.engine in i.engines]
    if not offering:
        engines = sorted({e for i in instances for e in i.engines})
        raise SubmissionError(f"engine {request.engine!r} is not available on "
                              f"{request.target_type}; available: {', '.join(engines)}", 404)
    if request.target_uids:
        unknown = sorted(set(request.target_uids) - {i.uid for i in offering})
        if unknown:
            raise SubmissionError(f"unknown target instance(s) for {request.target_type} with "
                                  f"{request.engine}: {', '.join(unknown)}", 404)
        offering = [i for i in offering if i.uid in request.target_uids]
    if request.benchmark_type not in ("TYPE1", "TYPE2", "TYPE3", "TYPE4"):
        raise SubmissionError(f"unknown benchmark type {request.benchmark_type!r}; "
                              "expected TYPE1 or TYPE2")
    supported = {t for i in offering for t in i.engines[request.engine].get("supported_types", [])}
    if request.benchmark_type not in supported or request.benchmark_type not in \
            SUPPORTED_RUN_TYPES:
        raise SubmissionError(f"{request.target_type} with {request.engine} does not support "
                              f"{request.benchmark_type}; supported: "
                              f"{', '.join(sorted(supported & set(SUPPORTED_RUN_TYPES)))}")
    if request.benchmark_type == "TYPE3" and not request.odt:
        raise SubmissionError("TYPE3 (on-device training) is submitted to "
                              "/api/benchmarks/train with its ODT config")
    if not 1 <= request.nb_inference <= max_nb_inference:
        raise SubmissionError(f"nb_inference must be between 1 and {max_nb_inference}")
    profile = engine_profile(session, request.engine)
    if profile is None:
        raise SubmissionError(f"engine {request.engine!r} is not in the engine catalogue", 404)
    try:
        request.parameters = profile.validate_parameters(request.parameters)
    except ValueError as exc:
        raise SubmissionError(str(exc)) from exc
    if request.benchmark_type == "TYPE2" and not request.dataset_name:
        raise SubmissionError("TYPE2 needs a dataset (dataset_name)")


def intake_upload(path: Path, filename: str, profile: EngineProfile | None,
                  max_model_bytes: int | None = None) -> ModelInfo:
    """Inspect an uploaded model and, given an engine, check that the engine runs its format;
    an archive may inflate to at most `max_model_bytes`.

    Formats the platform cannot inspect are accepted only for catalogue engines that declare
    their extension (their target repository checks the model itself)."""
    suffix = Path(filename).suffix.lower()
    opaque = (profile is not None and not profile.has_adapter and suffix in profile.extensions
              and suffix not in INSPECTED_EXTENSIONS)
    if opaque:
        if path.stat().st_size == 0:
            raise SubmissionError(f"{filename}: the file is empty")
        return ModelInfo(format=suffix.lstrip("."), inputs=[], outputs=[], nb_parameters=0,
                         flops=0)
    try:
        info = inspect_model(path, filename, max_model_bytes)
    except ModelRejected as exc:
        raise SubmissionError(str(exc)) from exc
    if profile is not None:
        check_format(info.format, profile)
    return info


def check_format(model_format: str, profile: EngineProfile) -> None:
    if model_format not in profile.formats:
        raise SubmissionError(f"engine {profile.name} cannot run {model_format} models "
                              f"(it runs: {', '.join(profile.extensions)})")


def store_model(session: Session, store: BlobStore, user: User, upload: Path, filename: str,
                info: ModelInfo, sha256: str) -> StoredModel:
    existing = session.scalar(select(StoredModel).where(
        StoredModel.owner_id == user.id, StoredModel.sha256 == sha256,
        StoredModel.filename == filename))
    if existing is not None:
        upload.unlink(missing_ok=True)
        return existing
    store.put(upload, sha256)
    model = StoredModel(owner_id=user.id, sha256=sha256, filename=filename, format=info.format,
                        size=store.path(sha256).stat().st_size, info=info.as_dict())
    session.add(model)
    session.flush()
    return model


def resolve_model_ref(session: Session, user: User, ref: str) -> StoredModel:
    model = None
    number = re.fullmatch(r"model-(\d{1,9})", ref)
    if number is not None:
        query = visible(select(StoredModel).where(StoredModel.id == int(number.group(1))),
                        StoredModel.owner_id, StoredModel.public, user)
        model = session.scalar(query)
    if model is None:
        raise SubmissionError(f"unknown model reference {ref!r}", 404)
    return model


def resolve_dataset(session: Session, user: User, name: str) -> Dataset:
    query = visible(select(Dataset).where(Dataset.name == name), Dataset.owner_id,
                    Dataset.public, user)
    dataset = session.scalars(query).first()
    if dataset is None:
        raise SubmissionError(f"unknown dataset {name!r}; upload it first", 404)
    return dataset


def check_dataset_fits(dataset: Dataset, info: ModelInfo) -> None:
    sample = info.input_bytes
    if not info.inputs:
        return  # a format the platform cannot inspect: the target checks the dataset
    if sample <= 0 or dataset.size == 0 or dataset.size % sample:
        raise SubmissionError(
            f"dataset {dataset.name} has {dataset.size} bytes, which is not a multiple of the "
            f"model's input size ({sample} bytes per sample: "
            + ", ".join(f"{t.name} {list(t.shape)} {t.dtype}" for t in info.inputs) + ")")


def create_benchmark(session: Session, user: User, request: RunRequest,
                     model: StoredModel) -> Benchmark:
    bench = Benchmark(
        id=secrets.token_hex(8), owner_id=user.id, target_type=request.target_type,
        engine=request.engine, benchmark_type=request.benchmark_type,
        nb_inference=request.nb_inference, requested_uids=request.target_uids,
        parameters=request.parameters, model_id=model.id, model_filename=model.filename,
        model_sha256=model.sha256, dataset_name=request.dataset_name, status=Status.PENDING,
        public=request.public, name=request.name, tags=request.tags, notes=request.notes)
    session.add(bench)
    session.flush()
    return bench


def blob_unreferenced(session: Session, digest_column: Any, sha256: str) -> bool:
    """After a row was deleted: whether no other row still uses the blob `sha256`."""
    session.flush()
    return session.scalar(select(digest_column).where(digest_column == sha256).limit(1)) is None


def delete_stored(session: Session, row: StoredModel | Dataset, store: BlobStore) -> None:
    """Delete a model or dataset row, and its blob if no other row uses it. Commits first:
    a blob is never gone while a row still names it."""
    digest_column = StoredModel.sha256 if isinstance(row, StoredModel) else Dataset.sha256
    sha = row.sha256
    session.delete(row)
    orphan = blob_unreferenced(session, digest_column, sha)
    session.commit()
    if orphan:
        store.remove(sha)


T = TypeVar("T")


def retry_on_conflict(work: Callable[..., T], *args: Any) -> T:
    """Run a storing transaction again once if a concurrent request stored the same model or
    dataset first (unique constraint): the second attempt finds and reuses that row."""
    try:
        return work(*args)
    except IntegrityError:
        return work(*args)


def discard(path: Path | None) -> None:
    if path is not None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
