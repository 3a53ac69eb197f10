"""Server settings: one pydantic-settings model, read from `VLAB_*` (and `NOMAD_*`) environment
variables, with explicit keyword overrides (`Settings(port=9000)`, as `vlab serve` passes its
flags). Defaults that clients share (host, port, data-dir rule, limits) come from
`vlab_kernel.defaults`.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vlab_backend.nomad.jobs import DEFAULT_MEMORY_MB, DEFAULT_PLACEMENT_DEADLINE_S, MIN_MEMORY_MB
from vlab_kernel.defaults import (
    CREDENTIAL_FILE,
    DEFAULT_HOST,
    DEFAULT_MAX_NB_INFERENCE,
    DEFAULT_PORT,
    SERVER_FILE,
    data_dir,
)

MAX_UPLOAD_PART = 64 * 1024**3  # bytes of one model or dataset
MAX_STEP_S = 24 * 3600  # a pipeline step's time limit


class Settings(BaseSettings):
    """Every field `name` reads `VLAB_<NAME>` unless it names its variable (`NOMAD_*`)."""

    model_config = SettingsConfigDict(env_prefix="VLAB_", env_ignore_empty=True,
                                      populate_by_name=True)

    data_dir: Path = Field(default_factory=data_dir)
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=1, le=65535)
    runner: str = "local"
    targets_file: Path | None = None
    database_url: str | None = None
    # Every number has bounds: a typo or an "inf" in the environment is refused at start.
    max_model_bytes: int = Field(default=512 * 1024 * 1024, ge=1, le=MAX_UPLOAD_PART)
    max_dataset_bytes: int = Field(default=1024 * 1024 * 1024, ge=1, le=MAX_UPLOAD_PART)
    max_nb_inference: int = Field(default=DEFAULT_MAX_NB_INFERENCE, ge=1, le=10**9)
    # Model conversions with an external tool (onnx2tf, tf2onnx: minutes and gigabytes each)
    # running at once in this server; one more is answered 503 at once.
    max_conversions: int = Field(default=1, ge=1, le=64)
    # Limits of the pipeline's steps, in seconds.
    timeout_support_s: int = Field(default=300, ge=1, le=MAX_STEP_S)
    timeout_build_s: int = Field(default=900, ge=1, le=MAX_STEP_S)
    timeout_deploy_s: int = Field(default=300, ge=1, le=MAX_STEP_S)
    timeout_manager_s: int = Field(default=1800, ge=1, le=MAX_STEP_S)
    nomad_addr: str = Field(default="http://127.0.0.1:4646", validation_alias="NOMAD_ADDR")
    nomad_token: str = Field(default="", validation_alias="NOMAD_TOKEN")
    nomad_namespace: str = Field(default="default", validation_alias="NOMAD_NAMESPACE")
    # How long a benchmark's Nomad job may go without a running allocation (not placed yet,
    # or on a host that stopped answering) before the benchmark fails with Nomad's reason.
    nomad_placement_deadline_s: float = Field(default=DEFAULT_PLACEMENT_DEADLINE_S, gt=0,
                                              le=MAX_STEP_S)
    # How often the Nomad runner reads the node list, so that down, drained or ineligible
    # hosts' targets stop being scheduled (and come back when their node is ready again).
    nomad_node_poll_s: float = Field(default=15.0, gt=0, le=3600)
    # Memory a benchmark job reserves on its host unless its instance sets `memory.job`.
    nomad_job_memory_mb: int = Field(default=DEFAULT_MEMORY_MB, ge=MIN_MEMORY_MB, le=2**20)
    # The API address pipelines on other hosts use (Nomad runner).
    public_url: str = ""
    # An engine process per instance that forks harness runs: small jobs cost ~0.1 s instead of
    # ~0.5 s of platform overhead. `VLAB_WARM_WORKERS=0` (`--no-warm-workers`) starts cold.
    warm_workers: bool = True
    # The built-in simulated microcontroller boards (targets/mcu: a Cortex-M4-class and a
    # Cortex-M7-class budget, TFLite Micro) beside this machine's cores, when no target file
    # is given. `VLAB_SIMULATED_BOARDS=0` (`--no-simulated-boards`) leaves them out.
    simulated_boards: bool = True
    access_token_minutes: int = Field(default=60, ge=1, le=24 * 60)
    refresh_token_days: int = Field(default=7, ge=1, le=365)
    # Several API replicas on one PostgreSQL database (see `shared_store`): this server's name
    # among them (default: host name, process id and a random suffix; a fixed one lets a
    # restarted replica take its own jobs back at once) and how long its claim on the jobs it
    # follows holds without renewal before another replica takes them over.
    replica_id: str = Field(default="", max_length=200)
    replica_lease_s: float = Field(default=30.0, ge=3, le=3600)
    # Proxies whose X-Forwarded-For/-Proto are believed (addresses or networks, comma-separated,
    # or "*"): none by default, so a client cannot pose as another address.
    forwarded_allow_ips: str = ""
    # Health checks per instance (vlab_backend.health): a reference benchmark when an instance
    # joins (first seen at start-up or registration), every `health_check_interval_h` hours
    # (0 = never on a schedule) and on demand; a check slower than the baseline beyond noise
    # and by more than `health_min_effect` (0.10 = 10 %) marks the instance degraded.
    health_check_on_join: bool = True
    health_check_interval_h: float = Field(default=24.0, ge=0, le=24 * 365)
    health_check_runs: int = Field(default=200, ge=10, le=100_000)
    health_check_min_time_s: float = Field(default=0.0, ge=0, le=600)
    health_min_effect: float = Field(default=0.10, gt=0, le=10)
    # Target type -> the path of its reference model (.onnx or .tflite), for types whose
    # engines run neither the built-in ONNX nor the built-in int8 TFLite model: JSON, e.g.
    # VLAB_HEALTH_REFERENCE_MODELS='{"rpi5": "/srv/ref/mobilenet.tflite"}'.
    health_reference_models: dict[str, Path] = Field(default_factory=dict)
    # What a degraded instance means to the scheduler: "warn" runs user jobs on it and notes it
    # in their metrics and message; "exclude" runs no user job on it (health checks still run).
    degraded_policy: Literal["warn", "exclude"] = "warn"

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"not an IP address or network: {entry!r}") from None
        return ",".join(entries)

    @field_validator("data_dir", "targets_file")
    @classmethod
    def _expand_user(cls, path: Path | None) -> Path | None:
        return path.expanduser() if path is not None else None

    @property
    def step_timeouts_s(self) -> dict[str, int]:
        """Pipeline step -> its limit in seconds."""
        return {"support": self.timeout_support_s, "build": self.timeout_build_s,
                "deploy": self.timeout_deploy_s, "manager": self.timeout_manager_s}

    @property
    def max_upload_bytes(self) -> int:
        # A request carries at most one model and one dataset, plus form overhead.
        return self.max_model_bytes + self.max_dataset_bytes + 1024 * 1024

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'vlab.db'}"

    # Sub-directories of the data dir, each with one purpose.
    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def credential_file(self) -> Path:
        return self.data_dir / CREDENTIAL_FILE

    @property
    def server_file(self) -> Path:
        """Where this server records its address while it runs: clients find it there."""
        return self.data_dir / SERVER_FILE

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "jwt.secret"

    @property
    def shared_store(self) -> bool:
        """Whether the database is a server that several API replicas may share (PostgreSQL),
        rather than the embedded SQLite file that one server owns."""
        return not self.db_url.startswith("sqlite")

    def lock_data_dir(self) -> int:
        """Hold an exclusive lock on the data dir for this process's lifetime (returns the fd;
        -1 without a lock): two schedulers on one SQLite store would run the same queue twice.
        On a shared store (PostgreSQL) replicas claim work with row locks instead, and share the
        data dir (models, datasets, jobs, artifacts) on shared storage: no lock."""
        import fcntl

        self.ensure_dirs()
        if self.shared_store:
            return -1
        fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another VLab server is using {self.data_dir}") from None
        return fd

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # An existing data dir too: it holds the credentials and the store (vlab.db: Database).
        self.data_dir.chmod(0o700)
        for secret in (self.credential_file, self.secret_file):
            if secret.exists():
                secret.chmod(0o600)
        for sub in (self.models_dir, self.datasets_dir, self.jobs_dir, self.artifacts_dir,
                    self.tmp_dir):
            sub.mkdir(parents=True, exist_ok=True)
