"""The generic pipeline against dAIEdge target repositories written for these tests."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.api.test_job_isolation import namespaces_available
from vlab_backend.jobdir import JobDir, JobSpec
from vlab_backend.pipeline import isolation, run_pipeline
from vlab_backend.pipeline.job import main as pipeline_main

STEP_FILES = {
    "support": "AI_Support/support.sh", "build": "AI_Build/build.sh",
    "deploy": "AI_Deploy/deploy.sh", "manager": "AI_Manager/manager.sh",
}


def make_repository(root: Path, bodies: dict[str, str], executable: bool = True) -> Path:
    """A target repository whose scripts source exit_functions.sh, then run `bodies[step]`."""
    for step, relative in STEP_FILES.items():
        script = root / relative
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text("#!/usr/bin/env bash\nsource \"$FUNCTIONS_PATH/exit_functions.sh\"\n"
                          f"echo {step} >> \"$VLAB_OUT_DIR/steps.txt\"\n"
                          + bodies.get(step, "") + "\n")
        if executable:
            script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return root


def make_job(tmp_path: Path, repository: Path, **overrides: object) -> JobDir:
    model = tmp_path / "blob"
    model.write_bytes(b"model bytes")
    job = JobDir(tmp_path / "job")
    spec = JobSpec(benchmark_id="b1", repository=str(repository), target="board",
                   target_uid="board-1", engine="tflite", benchmark_type="TYPE1",
                   nb_inference=7, model_path=str(model), model_filename="net.tflite")
    for key, value in overrides.items():
        setattr(spec, key, value)
    job.create(spec)
    return job


def test_steps_run_in_order_from_the_root_with_the_dAIEdge_environment(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {"manager": (
        'env | grep -E "^(TARGET|TARGET_UID|RUNTIME|BENCHMARK_TYPE|NB_INFERENCE|MODEL_FILENAME|'
        'VERSION_TAG|PARAMETERS_FILENAME)=" | sort > "$VLAB_OUT_DIR/env.txt"\n'
        'pwd > "$VLAB_OUT_DIR/pwd.txt"\n'
        'cat "$MODEL_FILENAME" > "$VLAB_OUT_DIR/model.txt"\n'
        'info_print "all good"\n'
        'echo "{}" > "$VLAB_OUT_DIR/report.json"')})
    job = make_job(tmp_path, repo, parameters={"threads": 1})
    result = run_pipeline(job.root)
    assert result.exit_code == 0
    assert [s.step for s in result.steps] == ["support", "build", "deploy", "manager"]
    out = job.out
    assert (out / "steps.txt").read_text().split() == ["support", "build", "deploy", "manager"]
    env = dict(line.split("=", 1) for line in (out / "env.txt").read_text().splitlines())
    assert env["TARGET"] == "board" and env["TARGET_UID"] == "board-1"
    assert env["RUNTIME"] == "tflite" and env["BENCHMARK_TYPE"] == "TYPE1"
    assert env["NB_INFERENCE"] == "7" and env["VERSION_TAG"] == "v1.0.0"
    assert env["PARAMETERS_FILENAME"] == "parameters.json"
    # The model gets a timestamp in its name and keeps its extension.
    assert env["MODEL_FILENAME"].startswith("net_") and env["MODEL_FILENAME"].endswith(".tflite")
    assert (out / "pwd.txt").read_text().strip() == str(job.work)
    assert (out / "model.txt").read_text() == "model bytes"
    assert (out / "user.log").read_text() == "all good\n"
    assert job.read_result() == result


def test_first_failure_stops_and_stderr_reaches_error_log(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {
        "build": 'echo "compiler exploded" >&2\nfalse\necho "not reached" >&2'})
    job = make_job(tmp_path, repo)
    result = run_pipeline(job.root)
    assert result.exit_code == 1
    assert result.message == "AI_Build/build.sh failed with exit code 1"
    out = job.out
    assert (out / "steps.txt").read_text().split() == ["support", "build"]
    error_log = (out / "error.log").read_text()
    assert "compiler exploded" in error_log and "not reached" not in error_log
    assert "[vlab] AI_Build/build.sh failed with exit code 1" in error_log


def test_error_log_disable_keeps_stderr_private(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {"support": (
        'error_log_disable\necho "secret token abc" >&2\n'
        'error_log_print "curated message"')})
    job = make_job(tmp_path, repo)
    run_pipeline(job.root)
    error_log = (job.out / "error.log").read_text()
    assert "curated message" in error_log and "secret" not in error_log


def test_step_time_limit_kills_the_step(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {"deploy": "sleep 30 &\nsleep 30"})
    job = make_job(tmp_path, repo, step_timeouts_s={"deploy": 1})
    result = run_pipeline(job.root)
    assert result.exit_code == 124
    assert result.message == "AI_Deploy/deploy.sh exceeded its time limit of 1 s"
    assert result.steps[-1].timed_out and result.steps[-1].seconds < 10


def test_missing_script_and_non_executable_scripts(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {}, executable=False)
    (repo / "AI_Deploy" / "deploy.sh").unlink()
    job = make_job(tmp_path, repo)
    result = run_pipeline(job.root)
    # Non-executable scripts still run (with bash); the missing one fails the job.
    assert [s.step for s in result.steps] == ["support", "build"]
    assert result.message == "AI_Deploy/deploy.sh is missing from the target repository"


def test_an_executable_script_without_a_shebang_runs_with_bash(tmp_path: Path) -> None:
    # exec() of such a script fails with ENOEXEC; dAIEdge runs its scripts with bash.
    repo = make_repository(tmp_path / "repo", {})
    for relative in STEP_FILES.values():
        script = repo / relative
        script.write_text(script.read_text().split("\n", 1)[1])
    job = make_job(tmp_path, repo)
    result = run_pipeline(job.root)
    assert result.exit_code == 0, result.message
    assert (job.out / "steps.txt").read_text().split() == list(STEP_FILES)


def test_a_step_that_cannot_start_fails_with_a_reason(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {})
    build = repo / "AI_Build" / "build.sh"
    build.write_text("#!/no/such/interpreter\n")
    job = make_job(tmp_path, repo)
    result = run_pipeline(job.root)
    assert result.exit_code == 126
    assert result.message.startswith("AI_Build/build.sh could not start: ")
    assert [s.step for s in result.steps] == ["support"]
    assert f"[vlab] {result.message}" in (job.out / "error.log").read_text()
    assert job.read_result() == result


def test_dataset_is_placed_at_the_root(tmp_path: Path) -> None:
    dataset = tmp_path / "blob-data"
    dataset.write_bytes(b"\1\2\3")
    repo = make_repository(tmp_path / "repo", {
        "manager": 'cp "$DATASET_FILENAME" "$VLAB_OUT_DIR/seen.bin"'})
    job = make_job(tmp_path, repo, dataset_path=str(dataset), dataset_filename="in.bin")
    assert run_pipeline(job.root).exit_code == 0
    assert (job.out / "seen.bin").read_bytes() == b"\1\2\3"


def test_job_is_pinned_to_its_cpuset(tmp_path: Path) -> None:
    core = min(os.sched_getaffinity(0))
    repo = make_repository(tmp_path / "repo", {
        "manager": 'grep Cpus_allowed_list /proc/self/status > "$VLAB_OUT_DIR/cpus.txt"'})
    job = make_job(tmp_path, repo, cpuset=[core])
    pid = os.fork()
    if pid == 0:  # the pipeline pins its own process; keep the test process unpinned
        run_pipeline(job.root)
        os._exit(0)
    os.waitpid(pid, 0)
    assert (job.out / "cpus.txt").read_text().split()[-1] == str(core)


def test_server_secrets_do_not_reach_the_target(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAB_TOKEN", "vlab_secret-token")
    monkeypatch.setenv("VLAB_DATABASE_URL", "postgresql://vlab:hunter2@db/vlab")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "xyz")
    monkeypatch.setenv("PYTHONPATH", "/opt/engines")  # the harness finds the server's engines
    repo = make_repository(tmp_path / "repo", {"manager": 'env > "$VLAB_OUT_DIR/env.txt"'})
    job = make_job(tmp_path, repo)
    assert run_pipeline(job.root).exit_code == 0
    seen = (job.out / "env.txt").read_text()
    assert "secret-token" not in seen and "hunter2" not in seen and "xyz" not in seen
    assert "PATH=" in seen and "MODEL_FILENAME=" in seen
    assert "PYTHONPATH=/opt/engines" in seen


# A build step that leaves a daemon behind: double-forked and in its own session, it is
# neither the step's child nor in the job's process group.
DAEMON = '(setsid sleep 300 >/dev/null 2>&1 & echo $! > "$VLAB_OUT_DIR/daemon.pid")'


def start_pipeline_process(job: JobDir) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "vlab_backend.pipeline", "--", str(job.root)],
                            start_new_session=True)


def daemon_pid(job: JobDir) -> int:
    path = job.out / "daemon.pid"
    deadline = time.monotonic() + 30
    while not path.is_file() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the build step did not start its daemon"
        time.sleep(0.05)
    return int(path.read_text())


def assert_ended(pid: int) -> None:
    """No daemon left with this pid (a zombie nobody has reaped yet counts as ended)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE or process.cmdline()[:1] != ["sleep"]:
                return
        except psutil.NoSuchProcess:
            return
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the daemon {pid} outlived its job")
        time.sleep(0.05)


def test_a_daemon_a_step_starts_ends_with_the_job(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {"build": DAEMON})
    job = make_job(tmp_path, repo)
    assert start_pipeline_process(job).wait(timeout=60) == 0
    assert_ended(daemon_pid(job))


def test_a_canceled_job_ends_its_daemons(tmp_path: Path) -> None:
    repo = make_repository(tmp_path / "repo", {"build": DAEMON, "deploy": "sleep 300"})
    job = make_job(tmp_path, repo)
    pipeline = start_pipeline_process(job)
    pid = daemon_pid(job)
    deadline = time.monotonic() + 30
    while "deploy" not in (job.out / "steps.txt").read_text():
        assert pipeline.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(pipeline.pid, signal.SIGTERM)  # what the runner's cancel does
    assert pipeline.wait(timeout=30) == 143
    assert_ended(pid)


# What a step tries, as a hostile target script would, to reach the server's data dir.
PROBE = '''{{
    cat ../../../jwt.secret "{data}/jwt.secret" || true
    umount -l "{data}" || true
    cat "{data}/jwt.secret" || true
    echo "processes: $(ls /proc | grep -c '^[0-9]')"
}} > "$VLAB_OUT_DIR/probe.txt" 2>&1'''


def job_in_a_data_dir(tmp_path: Path) -> tuple[JobDir, Path]:
    """A job under `<data>/jobs/` that hides `<data>`, where the server's secret lies."""
    data = tmp_path / "data"
    (data / "jobs").mkdir(parents=True)
    (data / "jwt.secret").write_text("the-server-secret\n")
    repo = make_repository(tmp_path / "repo", {"build": PROBE.format(data=data)})
    job = make_job(tmp_path, repo, hidden_dirs=[str(data)])
    moved = JobDir(data / "jobs" / "b1")
    job.root.rename(moved.root)
    return moved, data


@pytest.mark.skipif(not namespaces_available(), reason="no user namespaces here")
def test_a_job_sees_its_own_directory_and_processes_only(tmp_path: Path) -> None:
    job, _data = job_in_a_data_dir(tmp_path)
    assert start_pipeline_process(job).wait(timeout=60) == 0
    seen = (job.out / "probe.txt").read_text()
    assert "the-server-secret" not in seen, seen
    assert int(seen.split("processes: ")[1].split()[0]) < 10, seen
    assert job.read_result() is not None  # written from inside, through the job's mount


def test_without_namespaces_a_job_runs_and_says_so(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    job, _data = job_in_a_data_dir(tmp_path)
    log = tmp_path / "pipeline.err"
    pid = os.fork()
    if pid == 0:  # this process's namespaces stay as they are: the pipeline runs in a child
        code = 1
        try:
            def refuse(_flags: int) -> None:
                raise PermissionError(1, "unshare: Operation not permitted")

            monkeypatch.setattr(isolation, "_unshare", refuse)
            sys.stderr = log.open("w")
            code = pipeline_main(["--", str(job.root)])
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "the job runs without namespaces" in log.read_text()
    assert "unshare: Operation not permitted" in log.read_text()
    assert "the-server-secret" in (job.out / "probe.txt").read_text()


def test_a_remote_job_relays_its_progress_with_a_trainings_curves(tmp_path: Path) -> None:
    """On a Nomad host the pipeline posts the progress line to the API, curves included."""
    import threading

    import httpx

    from vlab_backend.jobdir import Progress
    from vlab_backend.pipeline.remote import _relay_progress

    job = JobDir(tmp_path)
    curves = {"epoch": [1, 2], "loss_train": [0.9, 0.5]}
    job.write_progress(Progress("train", 2, 5, curves))
    posted: list[object] = []
    stop = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(httpx.Response(200, content=request.content).json())
        stop.set()
        return httpx.Response(200, json={"ok": True})

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        _relay_progress(client, "http://api/api/jobs/b/progress", job, stop)
    assert posted == [{"phase": "train", "done": 2, "total": 5, "curves": curves}]
