"""Database tables. One row per user, token, model, dataset, target instance and benchmark."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True, index=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    """Long-lived bearer tokens; only their SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class StoredModel(Base):
    """A user's model; the bytes live once in the content-addressed store under `sha256`."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner_id", "sha256", "filename"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(32))
    size: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """A raw dataset named `<uploaded file name>_<sha256>`, as the dAIEdge client expects."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(400))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TargetInstance(Base):
    """One board (or CPU core set) of a target type.

    Rows come from target configurations (enabled: a runner can reach them) or from a
    provider's registration through the API (`inventory_id` issued here, enabled once a host
    configuration names it)."""

    __tablename__ = "target_instances"
    uid: Mapped[str] = mapped_column(String(200), primary_key=True)
    target_type: Mapped[str] = mapped_column(String(100), index=True)
    host: Mapped[str] = mapped_column(String(200), default="localhost")
    engines: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cpuset: Mapped[list[Any]] = mapped_column(JSON, default=list)
    memory: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                 nullable=True)
    notes: Mapped[str] = mapped_column(String(2000), default="")
    serial_number: Mapped[str] = mapped_column(String(200), default="")
    registered_engines: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # The registered host whose target configuration declares it (None: `vlab serve
    # --targets` or this machine's cores), and whether a runner may use it: "ready", the
    # host's Nomad node state ("initializing", "down", "disconnected", "draining",
    # "ineligible") or "detached" (no host declares it any more). `enabled` is True exactly
    # when it is "ready" (see vlab_backend.hosts.registry).
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"),
                                                nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(32), default="ready", server_default="ready")
    # What its health checks found (vlab_backend.health): "unknown" (never checked),
    # "healthy", "degraded" (its reference benchmark slowed down beyond noise and the minimum
    # effect against its baseline) or "error" (the last check did not run); the evidence
    # (baseline and current medians, ratio, p-value, verdict, check ids and times) in
    # `health_detail`.
    health: Mapped[str] = mapped_column(String(16), default="unknown",
                                        server_default="unknown")
    health_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict,
                                                          server_default="{}")


class HealthCheck(Base):
    """One health check of an instance: its reference benchmark (owned by the system's health
    account), the latency samples and median it measured, and what it was found to be:
    "pending" until the benchmark ends, then "baseline", "healthy", "degraded" or "failed".
    The newest "baseline" row of an instance is what later checks are compared with."""

    __tablename__ = "health_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_uid: Mapped[str] = mapped_column(String(200), index=True)
    benchmark_id: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(String(32), default="on demand")
    rebaseline: Mapped[bool] = mapped_column(Boolean, default=False)
    verdict: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    median_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    samples: Mapped[list[Any]] = mapped_column(JSON, default=list)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class HardwareType(Base):
    """A target type (the dAIEdge 'edge device family')."""

    __tablename__ = "hardware_types"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")


class EngineFamily(Base):
    """An inference engine (the dAIEdge 'runtime family')."""

    __tablename__ = "engine_families"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    supported_file_extensions: Mapped[list[Any]] = mapped_column(JSON, default=list)


class EngineParameter(Base):
    """A run-time parameter engines may accept; attached to engines through links."""

    __tablename__ = "engine_parameters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True, index=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(2000), default="")
    type: Mapped[str] = mapped_column(String(16))
    # A string, as the dAIEdge client formats it; for enums the JSON list of choices.
    default_values: Mapped[str] = mapped_column(String(2000), default="")
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                 nullable=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)


class EngineParameterLink(Base):
    __tablename__ = "engine_parameter_links"
    __table_args__ = (UniqueConstraint("engine", "parameter_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    engine: Mapped[str] = mapped_column(String(100), index=True)
    parameter_id: Mapped[int] = mapped_column(
        ForeignKey("engine_parameters.id", ondelete="CASCADE"))


class JobCredential(Base):
    """A short-lived credential for one benchmark's pipeline on a remote host: it can read that
    job's inputs and post its outputs, nothing else. Only its SHA-256 is stored."""

    __tablename__ = "job_credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    benchmark_id: Mapped[str] = mapped_column(String(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Host(Base):
    """A machine of the cluster: its WireGuard key, endpoint and address in the mesh."""

    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    public_key: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(300), default="")
    mesh_address: Mapped[str] = mapped_column(String(64), unique=True)
    minimal: Mapped[bool] = mapped_column(Boolean, default=False)
    targets: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # "services" (runs the service jobs, and may have targets) or "targets".
    role: Mapped[str] = mapped_column(String(16), default="targets", server_default="targets")
    # Its Nomad node's state, as the cluster watcher last reported it ("ready", "down", ...).
    state: Mapped[str] = mapped_column(String(32), default="ready", server_default="ready")
    # The dAIEdge target configuration it registered (keyed by target type).
    target_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict,
                                                          server_default="{}")
    # SHA-256 of its host-scoped credential (reads the mesh, updates this host, nothing else).
    credential_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Status(StrEnum):
    """A benchmark's lifecycle: `pending` -> `queued` -> `running` -> one terminal state."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
# Not ended yet: waiting for an instance, or on one.
UNFINISHED_STATUSES = (Status.PENDING, *ACTIVE_STATUSES)
TERMINAL_STATUSES = (Status.SUCCESS, Status.FAILED, Status.CANCELED)
ALL_STATUSES = tuple(Status)


class Benchmark(Base):
    __tablename__ = "benchmarks"
    # `seq` orders the per-target FIFO; `id` is the public identifier.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    target_type: Mapped[str] = mapped_column(String(100), index=True)
    engine: Mapped[str] = mapped_column(String(100))
    benchmark_type: Mapped[str] = mapped_column(String(16))
    nb_inference: Mapped[int] = mapped_column(Integer)
    requested_uids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    model_filename: Mapped[str] = mapped_column(String(255))
    model_sha256: Mapped[str] = mapped_column(String(64))
    dataset_name: Mapped[str | None] = mapped_column(String(400), nullable=True)
    odt_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True, default=Status.PENDING)
    message: Mapped[str] = mapped_column(String(2000), default="")
    target_uid: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    # What the runner needs to find the job again after a restart (a pid, a Nomad job id).
    runner_ref: Mapped[str | None] = mapped_column(String(200), nullable=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_phase: Mapped[str] = mapped_column(String(32), default="")
    artifacts: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    # The API replica that claimed it (queued or running: it starts, follows and finalises
    # the job), until when that claim holds unless the replica renews it (another replica
    # takes the job over after that), and a cancel asked of a replica that does not follow it.
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The owner's labels: a display name, tags to filter on, free-form notes.
    name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    notes: Mapped[str] = mapped_column(String(4000), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class FLExperimentRow(Base):
    """A federated-learning experiment (TYPE4): its config, per-round results and the current
    global model (a stored model of its owner, `global_model_id`)."""

    __tablename__ = "fl_experiments"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default=Status.PENDING)
    message: Mapped[str] = mapped_column(String(2000), default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # {"rounds": [...], "state": {...}, "stop": {...}}: what the results endpoint shows.
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[int] = mapped_column(Integer)
    model_filename: Mapped[str] = mapped_column(String(255))
    global_model_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    global_model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    current_round: Mapped[int] = mapped_column(Integer, default=0)
    # The API replica driving it, and until when its claim holds without renewal.
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES
