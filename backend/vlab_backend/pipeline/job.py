"""Execution of the four target scripts in a job directory."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from vlab_backend.jobdir import STEPS, JobDir, JobSpec, PipelineResult, StepResult
from vlab_backend.pipeline import isolation

__all__ = ["JobSpec", "job_environment", "main", "run_pipeline"]

def timestamped(filename: str) -> str:
    """`model.onnx` -> `model_20261128203000.onnx`: unique per job, extension kept."""
    path = Path(filename)
    return f"{path.stem}_{datetime.now().strftime('%Y%m%d%H%M%S')}{path.suffix}"


# The only variables of the server's environment that a job's processes see (pipeline, warm
# worker, target scripts, harness): nothing secret (tokens, database URLs) can leak into their
# logs or be read from /proc/<parent>/environ. PYTHONPATH: the harness runs in the server's
# interpreter (VLAB_PYTHON) and must find the engines the server found.
INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
             "VIRTUAL_ENV", "PYTHONPATH", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
             # Where targets cache their own environments (a training venv, a converter).
             "VLAB_CACHE_DIR", "XDG_CACHE_HOME")
INHERITED_PREFIXES = ("LC_", "OMP_", "MKL_")


def job_environment() -> dict[str, str]:
    """The environment every process of a job starts from: the few variables of this
    process's environment named above, nothing else."""
    return {k: v for k, v in os.environ.items()
            if k in INHERITED or k.startswith(INHERITED_PREFIXES)}


def functions_path() -> Path:
    return Path(__file__).resolve().parent


def _prepare_workdir(spec: JobSpec, job: JobDir) -> dict[str, str]:
    """Copy the repository, place the inputs; returns the scripts' environment."""
    work = job.work
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(spec.repository, work, symlinks=True,
                    ignore=shutil.ignore_patterns(".git"))
    job.out.mkdir(parents=True, exist_ok=True)
    model_name = timestamped(spec.model_filename)
    shutil.copyfile(spec.model_path, work / model_name)
    env = job_environment()
    env.update({
        "TARGET": spec.target,
        "TARGET_UID": spec.target_uid,
        "RUNTIME": spec.engine,
        "BENCHMARK_TYPE": spec.benchmark_type,
        "NB_INFERENCE": str(spec.nb_inference),
        "MODEL_FILENAME": model_name,
        "VERSION_TAG": spec.version_tag,
        "FUNCTIONS_PATH": str(functions_path()),
        "VLAB_CPUSET": ",".join(str(c) for c in spec.cpuset),
        "VLAB_PYTHON": sys.executable,
        "VLAB_OUT_DIR": str(job.out),
        "VLAB_PROGRESS_FILE": str(job.progress_file),
    })
    for name in ("DATASET_FILENAME", "PARAMETERS_FILENAME", "ODT_CONFIG_FILENAME"):
        env.pop(name, None)
    if spec.dataset_path:
        dataset_name = spec.dataset_filename or Path(spec.dataset_path).name
        shutil.copyfile(spec.dataset_path, work / dataset_name)
        env["DATASET_FILENAME"] = dataset_name
    if spec.parameters:
        (work / "parameters.json").write_text(json.dumps(spec.parameters))
        env["PARAMETERS_FILENAME"] = "parameters.json"
    for name, path in spec.extra_files.items():
        shutil.copyfile(path, work / Path(name).name)
    if spec.odt_config:
        (work / "odt_config.json").write_text(json.dumps(spec.odt_config, indent=1))
        env["ODT_CONFIG_FILENAME"] = "odt_config.json"
    if spec.model_facts:
        job.model_facts_file.write_text(json.dumps(spec.model_facts))
        env["VLAB_MODEL_FACTS"] = str(job.model_facts_file)
    env.update(spec.env)
    return env


# prctl(2) option: orphans of our descendants reparent to this process instead of init.
PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> bool:
    """Make the pipeline the reaper of whatever its steps start, so that a daemon a step
    double-forks (`setsid cmd &`) stays below it and ends with the job (`_end_leftovers`)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _children() -> set[int]:
    """This process's children, from /proc (psutil would cost every pipeline its import)."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in (task / "children").read_text().split())
    return pids


def _kill_tree(pid: int) -> None:
    import psutil  # only on a time-out: not worth its import time in every pipeline

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def _end_leftovers() -> None:
    """SIGKILL every process still below the pipeline, until none is left: a killed process's
    own children reparent here (subreaper) and go in the next round. The pids cannot be
    reused meanwhile: they are our unreaped children."""
    while children := _children():
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _start_step(script: Path, work: Path, env: dict[str, str],
                log_path: Path) -> subprocess.Popen[bytes]:
    """Start a step as dAIEdge does: with bash, unless the script is executable with its own
    interpreter line. An executable script without one fails exec with ENOEXEC (a shell would
    run it itself): it runs with bash too. Raises OSError when the step cannot start."""
    with log_path.open("wb") as log:
        def start(command: list[str]) -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, cwd=work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        if os.access(script, os.X_OK):
            try:
                return start([str(script)])
            except OSError as exc:
                if exc.errno != errno.ENOEXEC:
                    raise
        return start(["bash", str(script)])


def _run_step(script: Path, work: Path, env: dict[str, str], timeout_s: int,
              log_path: Path) -> tuple[int, bool]:
    """Exit code and whether the step ran out of time; OSError if it could not start."""
    proc = _start_step(script, work, env, log_path)
    expired = threading.Event()

    def expire() -> None:
        if proc.poll() is not None:
            return  # ended just now: its pid may already belong to another process
        expired.set()
        try:
            _kill_tree(proc.pid)
        finally:
            with contextlib.suppress(OSError):
                proc.kill()  # whatever the tree walk met, the step itself must end

    # A timer rather than `wait(timeout=...)`, which polls and notices the end of a step up
    # to 50 ms late; this wait returns the moment the step exits.
    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        code = proc.wait()
    finally:
        timer.cancel()
    return (124, True) if expired.is_set() else (code, False)


def run_pipeline(job_dir: Path, isolate: bool = False) -> PipelineResult:
    """Run the job in `job_dir` and write its result; returns the result. With `isolate`, the
    steps run in the job's own namespaces (see `isolation`), from a child process: this
    process then waits for it and exits with its exit code."""
    job = JobDir(job_dir)
    spec = job.read_spec()
    cores = set(spec.cpuset) & os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    job.steps_dir.mkdir(exist_ok=True)
    result = PipelineResult(started=time.time())
    try:
        env = _prepare_workdir(spec, job)
    except OSError as exc:
        result.fail(1, f"could not prepare the job: {exc}")
        _finish(job, result)
        return result
    if isolate:
        isolation.enter(job.root, [Path(d) for d in spec.hidden_dirs])
    for name, relative in STEPS:
        script = job.work / relative
        if not script.is_file():
            result.fail(127, f"{relative} is missing from the target repository")
            job.log_error(result.message)
            break
        limit = int(spec.step_timeouts_s.get(name, 3600))
        started = time.monotonic()
        try:
            code, timed_out = _run_step(script, job.work, env, limit, job.step_log(name))
        except OSError as exc:
            result.fail(126, f"{relative} could not start: {exc.strerror or exc}")
            job.log_error(result.message)
            break
        result.steps.append(StepResult(step=name, exit_code=code, timed_out=timed_out,
                                       seconds=round(time.monotonic() - started, 3)))
        if code != 0:
            result.fail(code, f"{relative} exceeded its time limit of {limit} s" if timed_out
                        else f"{relative} failed with exit code {code}")
            job.log_error(result.message)
            break
    _finish(job, result)
    return result


def _finish(job: JobDir, result: PipelineResult) -> None:
    result.finished = time.time()
    job.write_result(result)


def _terminate(_signum: int, _frame: Any) -> None:
    # Cancel: the runner signals the whole process group; what left the group (daemons) ends
    # here. Leave without writing a result.
    _end_leftovers()
    os._exit(143)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if len(args) != 1:
        print("usage: python -m vlab_backend.pipeline [--] JOB_DIR", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    if not _become_subreaper():
        print("vlab pipeline: prctl(PR_SET_CHILD_SUBREAPER) failed: daemons the steps start "
              "may outlive the job", file=sys.stderr)
    result = run_pipeline(Path(args[0]), isolate=True)
    _end_leftovers()  # the job's process ends last: nothing it started runs on
    return 0 if result.succeeded else 1
