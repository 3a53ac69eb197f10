"""What a target script can reach: a hostile target repository probes a live server's secrets
(its environment, the data dir's files, other processes) and leaves a daemon behind."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.api.test_benchmarks_api import submit
from tests.server import LiveServer, wait_terminal
from vlab_backend.runners.warm import READY_LINE

SECRETS = {"VLAB_TOKEN": "vlab_server-token-4f1d", "NOMAD_TOKEN": "nomad-acl-token-9c2e"}


@functools.cache
def namespaces_available() -> bool:
    """Whether this machine lets the pipeline create its user, mount and PID namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def probing_repository(root: Path, data_dir: Path, daemon_marker: str) -> Path:
    """Its build step writes what it can see of the server to user.log, then starts a daemon
    (double-forked, in its own session)."""
    probe = f'''source "$FUNCTIONS_PATH/exit_functions.sh"
{{
    echo "parent environment: $(tr '\\0' ' ' < /proc/$PPID/environ)"
    for secret in ../../../jwt.secret ../../../local-admin.token ../../../vlab.db \\
                  "{data_dir}/jwt.secret" "{data_dir}/local-admin.token" "{data_dir}/vlab.db" \\
                  /proc/1/cwd/../../jwt.secret "/proc/$PPID/cwd/../../jwt.secret" \\
                  /proc/1/root{data_dir}/jwt.secret; do
        if [[ -r "$secret" ]]; then echo "readable: $secret"; fi
    done
    echo "jobs visible: $(ls /proc/1/cwd/.. 2>/dev/null | wc -l)"
    if [[ -n "${{VLAB_HARNESS_SOCKET:-}}" ]]; then
        # Ask the warm worker, which runs outside the job, to write a file of the server's.
        "$VLAB_PYTHON" - "$VLAB_HARNESS_SOCKET" "{data_dir}/jwt.secret" <<'PY' || true
import socket, sys
from vlab_backend.runners.warm import send_request
connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
connection.connect(sys.argv[1])
send_request(connection, {{"module": "this", "args": [], "cwd": "/", "env": {{}},
                          "detached": True, "pid_file": sys.argv[2]}}, [0, 2, 2])
print("warm worker answered:", connection.recv(200).decode().split()[:1])
PY
    fi
    echo "processes: $(ls /proc | grep -c '^[0-9]')"
    for process in /proc/[0-9]*; do
        tr '\\0' ' ' < "$process/environ" 2>/dev/null || true
    done | grep -q nomad-acl && echo "a process shows the server's environment"
    true
}} >> "$VLAB_OUT_DIR/user.log"
(setsid sleep {daemon_marker} >/dev/null 2>&1 &)
'''
    for step in ("AI_Support/support.sh", "AI_Build/build.sh", "AI_Deploy/deploy.sh",
                 "AI_Manager/manager.sh"):
        script = root / step
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(probe if step.startswith("AI_Build") else
                          'source "$FUNCTIONS_PATH/exit_functions.sh"\n')
    return root


def daemons(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if process.info["cmdline"] == ["sleep", marker]:
            found.append(process)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_a_target_script_cannot_reach_the_servers_secrets(tmp_path: Path, small_onnx: Path,
                                                          warm: bool) -> None:
    data_dir = tmp_path / "data"
    marker = f"{300 + uuid.uuid4().int % 1000}.5"  # this test's daemons, by their command line
    repository = probing_repository(tmp_path / "repo", data_dir, marker)
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps({"board": [{"target_uid": "board-1", "engines": {
        "onnxruntime": {"repository": str(repository), "supported_types": ["TYPE1"]}}}]}))
    live = LiveServer(data_dir, ["--targets", str(targets),
                                 "--warm-workers" if warm else "--no-warm-workers"],
                      env=SECRETS).start()
    try:
        if warm:
            live.wait_for_log(READY_LINE)
        secret = (data_dir / "jwt.secret").read_bytes()
        with live.client() as client:
            bench_id = submit(client, small_onnx, device="board").json()["id"]
            wait_terminal(client, bench_id)
            seen = client.get(f"/api/benchmarks/{bench_id}/user-log").text
    finally:
        live.stop()
    assert "parent environment: " in seen, seen
    if not (warm and namespaces_available()):
        # (A warm pipeline that made its namespaces without a fork is not dumpable: its
        # environment cannot be read at all from inside.)
        assert "PATH=" in seen, seen
    assert not any(value in seen for value in SECRETS.values()), seen
    assert "readable:" not in seen, seen
    assert (data_dir / "jwt.secret").read_bytes() == secret  # the worker wrote nothing for it
    if namespaces_available():  # the jobs folder as the job sees it: its own directory only
        # (none at all where the job's first process is not dumpable: the warm fast path)
        assert int(seen.split("jobs visible: ")[1].split()[0]) <= 1, seen
    assert "shows the server's environment" not in seen, seen
    if namespaces_available():  # the job's own /proc: its few processes only
        assert int(seen.split("processes: ")[1].split()[0]) < 20, seen
    deadline = time.monotonic() + 10
    while left := [p for p in daemons(marker) if p.status() != psutil.STATUS_ZOMBIE]:
        if time.monotonic() > deadline:
            for process in left:
                process.kill()
            raise AssertionError(f"the job's daemons outlived it: {left}")
        time.sleep(0.05)
