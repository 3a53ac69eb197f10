"""The job directory: the one layout that the pipeline, every runner, artifact collection, the
scheduler and the jobs API share. Nothing else spells a path inside it.

    <jobs dir>/<benchmark id>/
        job.json            the JobSpec, written before the launch
        runner.ref          the runner's reference to the job, recorded before it can start
        pipeline.out        the pipeline process's own output
        progress            `phase done total [curves]`, rewritten atomically while the job
                            runs (a training adds its per-epoch curves so far, as JSON)
        model_facts.json    facts of the model the harness reports (parameters, FLOPs)
        steps/<step>.log    the output of each target script
        work/               the target repository's copy, with the inputs at its root
        work/AI_Manager/out the target's outputs (report.json, error.log, ...)
        pipeline.json       the PipelineResult, written last

It imports the standard library only: the harness and the pipeline container use it too.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# dAIEdge's four steps, in order, with their script inside the target repository.
STEPS = (
    ("support", "AI_Support/support.sh"),
    ("build", "AI_Build/build.sh"),
    ("deploy", "AI_Deploy/deploy.sh"),
    ("manager", "AI_Manager/manager.sh"),
)
OUT_DIR = "AI_Manager/out"
# Artifact name -> the file a target writes under AI_Manager/out.
OUTPUT_FILES = {
    "report": "report.json",
    "report_odt": "report_odt.json",
    "user_log": "user.log",
    "error_log": "error.log",
    "binary": "raw_output.bin",
    "profile": "profile.json",
}
# Lines the platform adds to a job's error.log start with this, so users tell them apart.
ERROR_PREFIX = "[vlab] "


def error_line(message: str) -> str:
    return f"{ERROR_PREFIX}{message}\n"


def read_regular_file(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file (not a link, a FIFO or a device) of at
    most `limit` bytes, else None. The job can write in its directory: the server reads what
    it left without following links and without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit + 1)
        return data if len(data) <= limit else None
    finally:
        os.close(fd)


def is_regular_file(path: Path) -> bool:
    """Whether `path` itself (not what a link names) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# What a training's progress may carry per epoch, and for how many epochs at most (the last
# ones; the report has them all).
CURVE_KEYS = frozenset({"epoch", "loss_train", "loss_test", "accuracy_train", "accuracy_test",
                        "epoch_time_s"})
MAX_CURVE_EPOCHS = 200
Curves = dict[str, list[float | None]]  # `epoch`: whole numbers
# The progress file's largest size: a line with the curves of MAX_CURVE_EPOCHS epochs.
PROGRESS_LIMIT = 256 << 10


def checked_curves(value: Any) -> Curves | None:
    """`value` if it is a training's curves (known keys; lists of one length up to
    MAX_CURVE_EPOCHS of finite numbers or nulls, whole numbers for `epoch`), else None. The
    job writes them: nothing it writes may break a reader."""
    if not isinstance(value, dict) or not value or not set(value) <= CURVE_KEYS:
        return None
    checked: Curves = {}
    for key, values in value.items():
        if not isinstance(values, list) or len(values) > MAX_CURVE_EPOCHS:
            return None
        numbers: list[float | None] = []
        for number in values:
            if number is None and key != "epoch":
                numbers.append(None)
                continue
            if isinstance(number, bool) or not isinstance(number, int | float):
                return None
            try:
                number = float(number)
            except OverflowError:  # an integer too large for a float
                return None
            if not math.isfinite(number) or (key == "epoch" and not number.is_integer()):
                return None
            numbers.append(int(number) if key == "epoch" else number)
        checked[key] = numbers
    return checked if len({len(values) for values in checked.values()}) == 1 else None


@dataclass(frozen=True)
class Progress:
    """How far a job is: a phase (`load`, `warmup`, `inference`, `train`, ...) and a count;
    a training also its per-epoch curves so far (`checked_curves`)."""

    phase: str
    done: int
    total: int
    curves: Curves | None = None

    def encode(self) -> str:
        line = f"{self.phase} {self.done} {self.total}"
        if self.curves is not None:
            line += " " + json.dumps(self.curves, separators=(",", ":"), allow_nan=False)
        return line + "\n"

    @classmethod
    def decode(cls, text: str) -> Progress | None:
        """None for anything but one well-formed line (a file caught mid-write included);
        curves that are not well formed are left out."""
        try:
            phase, done, total, *rest = text.split(maxsplit=3)
            progress = cls(phase, int(done), int(total))
        except ValueError:
            return None
        if rest:
            try:
                curves = checked_curves(json.loads(rest[0]))
            except (ValueError, RecursionError):  # not JSON, or nested beyond reason
                curves = None
            progress = cls(phase, progress.done, progress.total, curves)
        return progress

    def write(self, path: Path) -> None:
        """Atomic: a reader sees the previous line or this one, never a part."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.encode())
        os.replace(tmp, path)

    def event(self) -> dict[str, Any]:
        """As the live event streams carry it."""
        shown: dict[str, Any] = {"phase": self.phase, "done": self.done, "total": self.total}
        if self.curves is not None:
            shown["curves"] = self.curves
        return shown


class ProgressWatch:
    """Polled by whoever relays a job's progress: `changed()` gives the progress line when it
    differs from the last one given, else None. The line is read and decoded only when the
    file was rewritten (its stamp moved), and once a second whatever the stamp says: two
    rewrites within one clock tick can leave the stamp as it was."""

    RECHECK_S = 1.0

    def __init__(self, job: JobDir) -> None:
        self.job = job
        self.last: Progress | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0

    def changed(self) -> Progress | None:
        stamp = self.job.progress_stamp()
        now = time.monotonic()
        if stamp is None or (stamp == self._stamp and now - self._checked < self.RECHECK_S):
            return None
        self._stamp, self._checked = stamp, now
        progress = self.job.read_progress()
        if progress is None or progress == self.last:
            return None
        self.last = progress
        return progress


@dataclass
class StepResult:
    step: str
    exit_code: int
    timed_out: bool
    seconds: float


@dataclass
class PipelineResult:
    """What the pipeline reports of a job: its steps, the first failure, when it ran."""

    exit_code: int = 0
    message: str = ""
    steps: list[StepResult] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    def fail(self, exit_code: int, message: str) -> None:
        self.exit_code, self.message = exit_code or 1, message

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def parse(cls, data: str | bytes) -> PipelineResult:
        """Raises ValueError for anything but a pipeline result (it may come over HTTP)."""
        try:
            raw = json.loads(data)
        except RecursionError as exc:
            raise ValueError("a pipeline result is not nested") from exc
        if not isinstance(raw, dict):
            raise ValueError("a pipeline result is a JSON object")
        try:
            steps = [StepResult(step=str(s["step"]), exit_code=int(s["exit_code"]),
                                timed_out=bool(s["timed_out"]), seconds=float(s["seconds"]))
                     for s in raw.get("steps") or []]
            return cls(exit_code=int(raw["exit_code"]), message=str(raw.get("message") or ""),
                       steps=steps, started=_optional_float(raw.get("started")),
                       finished=_optional_float(raw.get("finished")))
        except (KeyError, TypeError, OverflowError) as exc:
            raise ValueError(f"not a pipeline result: {exc}") from exc


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class JobSpec:
    """Everything a pipeline needs to run one benchmark, as written to `job.json`."""

    benchmark_id: str
    repository: str
    target: str
    target_uid: str
    engine: str
    benchmark_type: str
    nb_inference: int
    model_path: str
    model_filename: str
    dataset_path: str | None = None
    dataset_filename: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    version_tag: str = "v1.0.0"
    cpuset: list[int] = field(default_factory=list)
    step_timeouts_s: dict[str, int] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    model_facts: dict[str, Any] = field(default_factory=dict)
    odt_config: dict[str, Any] = field(default_factory=dict)
    # Files placed at the repository root under their name (TYPE3 datasets): name -> path.
    extra_files: dict[str, str] = field(default_factory=dict)
    # Directories the job's processes must not see, but for the job directory (the server's
    # data dir); hidden where the pipeline can use namespaces.
    hidden_dirs: list[str] = field(default_factory=list)
    # For runners that start the pipeline elsewhere (Nomad): the engine's image and host
    # resources from the target configuration.
    image: str = ""
    devices: list[Any] = field(default_factory=list)
    volumes: list[Any] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JobDir:
    """One job's directory (see the module docstring for its layout)."""

    root: Path

    # -- paths -------------------------------------------------------------------------------
    @property
    def benchmark_id(self) -> str:
        return self.root.name

    @property
    def spec_file(self) -> Path:
        return self.root / "job.json"

    @property
    def reference_file(self) -> Path:
        return self.root / "runner.ref"

    @property
    def pipeline_output(self) -> Path:
        return self.root / "pipeline.out"

    @property
    def progress_file(self) -> Path:
        return self.root / "progress"

    @property
    def model_facts_file(self) -> Path:
        return self.root / "model_facts.json"

    @property
    def steps_dir(self) -> Path:
        return self.root / "steps"

    def step_log(self, step: str) -> Path:
        return self.steps_dir / f"{step}.log"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def out(self) -> Path:
        return self.work / OUT_DIR

    def outputs_are_own(self) -> bool:
        """Whether `out` is the job's own folder, not a link the target made to elsewhere."""
        return os.path.realpath(self.out) == os.path.join(os.path.realpath(self.root), "work",
                                                          OUT_DIR)

    def output(self, artifact: str) -> Path:
        """The file of one artifact (`report`, `error_log`, ...) under AI_Manager/out."""
        return self.out / OUTPUT_FILES[artifact]

    @property
    def result_file(self) -> Path:
        return self.root / "pipeline.json"

    # -- life --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir()

    def create(self, spec: JobSpec) -> None:
        """A fresh directory holding only the spec (whatever a previous attempt left goes)."""
        self.remove()
        self.root.mkdir(parents=True)
        self.write_spec(spec)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- contents ----------------------------------------------------------------------------
    def write_spec(self, spec: JobSpec) -> None:
        self.spec_file.write_text(json.dumps(spec.as_dict(), indent=1))

    def read_spec(self) -> JobSpec:
        return JobSpec(**json.loads(self.spec_file.read_text()))

    def has_spec(self) -> bool:
        return self.spec_file.is_file()

    def record_reference(self, ref: str) -> None:
        self.reference_file.write_text(f"{ref}\n")

    def recorded_reference(self) -> str | None:
        data = read_regular_file(self.reference_file, 4096)
        return data.decode(errors="replace").strip() or None if data is not None else None

    def progress_stamp(self) -> tuple[int, int, int] | None:
        """What changes whenever the progress line is rewritten (inode, mtime, size): a
        watcher reads and decodes the line only when it moves. None before the first."""
        try:
            info = os.stat(self.progress_file)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def read_progress(self) -> Progress | None:
        data = read_regular_file(self.progress_file, PROGRESS_LIMIT)
        return Progress.decode(data.decode(errors="replace")) if data is not None else None

    def write_progress(self, progress: Progress) -> None:
        progress.write(self.progress_file)

    def has_result(self) -> bool:
        return self.result_file.is_file()

    def read_result(self) -> PipelineResult | None:
        """None while the pipeline has not finished (or if what it left is unreadable)."""
        data = read_regular_file(self.result_file, 1 << 20)
        try:
            return PipelineResult.parse(data) if data is not None else None
        except ValueError:
            return None

    def write_result(self, result: PipelineResult) -> None:
        """Atomic, and written last: its presence means the pipeline is done."""
        tmp = self.root / (self.result_file.name + ".tmp")
        tmp.write_text(result.to_json())
        os.replace(tmp, self.result_file)

    def log_error(self, message: str) -> None:
        """A platform line in the job's error.log, which users read."""
        self.out.mkdir(parents=True, exist_ok=True)
        with self.output("error_log").open("a") as handle:
            handle.write(error_line(message))
