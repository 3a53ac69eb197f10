"""Server settings, read from the environment with explicit overrides from the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8765"
STEP_NAMES = ("support", "build", "deploy", "manager")


def default_data_dir() -> Path:
    """`VLAB_DATA_DIR`, else the XDG data dir (`~/.local/share/vlab`)."""
    explicit = os.environ.get("VLAB_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "vlab"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


@dataclass
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8765
    runner: str = "local"
    targets_file: Path | None = None
    database_url: str | None = None
    max_model_bytes: int = field(
        default_factory=lambda: _env_int("VLAB_MAX_MODEL_BYTES", 512 * 1024 * 1024))
    max_dataset_bytes: int = field(
        default_factory=lambda: _env_int("VLAB_MAX_DATASET_BYTES", 1024 * 1024 * 1024))
    max_nb_inference: int = field(
        default_factory=lambda: _env_int("VLAB_MAX_NB_INFERENCE", 100_000))
    step_timeouts_s: dict[str, int] = field(default_factory=lambda: {
        "support": _env_int("VLAB_TIMEOUT_SUPPORT_S", 300),
        "build": _env_int("VLAB_TIMEOUT_BUILD_S", 900),
        "deploy": _env_int("VLAB_TIMEOUT_DEPLOY_S", 300),
        "manager": _env_int("VLAB_TIMEOUT_MANAGER_S", 1800),
    })
    nomad_addr: str = field(default_factory=lambda: os.environ.get("NOMAD_ADDR",
                                                                   "http://127.0.0.1:4646"))
    nomad_token: str = field(default_factory=lambda: os.environ.get("NOMAD_TOKEN", ""))
    nomad_namespace: str = field(default_factory=lambda: os.environ.get("NOMAD_NAMESPACE",
                                                                        "default"))
    # The API address pipelines on other hosts use (Nomad runner).
    public_url: str = field(default_factory=lambda: os.environ.get("VLAB_PUBLIC_URL", ""))
    warm_workers: bool = field(
        default_factory=lambda: os.environ.get("VLAB_WARM_WORKERS", "") in ("1", "true"))
    access_token_minutes: int = 60
    refresh_token_days: int = 7

    @property
    def max_upload_bytes(self) -> int:
        # A request carries at most one model and one dataset, plus form overhead.
        return self.max_model_bytes + self.max_dataset_bytes + 1024 * 1024

    @property
    def db_url(self) -> str:
        return self.database_url or os.environ.get("VLAB_DATABASE_URL") or (
            f"sqlite:///{self.data_dir / 'vlab.db'}")

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
        return self.data_dir / "local-admin.token"

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "jwt.secret"

    def lock_data_dir(self) -> int:
        """Hold an exclusive lock on the data dir for this process's lifetime (returns the fd):
        two schedulers on one store would run the same queue twice."""
        import fcntl

        self.ensure_dirs()
        fd = os.open(self.data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another VLab server is using {self.data_dir}") from None
        return fd

    def ensure_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in (self.models_dir, self.datasets_dir, self.jobs_dir, self.artifacts_dir,
                    self.tmp_dir):
            sub.mkdir(parents=True, exist_ok=True)
