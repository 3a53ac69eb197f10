"""`python -m vlab_backend.pipeline.remote`: the pipeline inside a target's container.

It reads its job from the API with its single-job credential (VLAB_API_URL,
VLAB_BENCHMARK_ID, VLAB_JOB_TOKEN), fetches the inputs, runs the same pipeline as the local
runner on the target repository (VLAB_REPOSITORY, default /app), relays progress, and posts
the outputs back. The credential is never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import httpx

from vlab_backend.jobdir import JobDir, JobSpec, PipelineResult, ProgressWatch
from vlab_backend.pipeline.job import job_environment


def _download(client: httpx.Client, url: str, target: Path) -> None:
    with client.stream("GET", url) as response:
        response.raise_for_status()
        with target.open("wb") as handle:
            for chunk in response.iter_bytes(1 << 20):
                handle.write(chunk)


def _relay_progress(client: httpx.Client, url: str, job: JobDir, stop: threading.Event) -> None:
    watch = ProgressWatch(job)
    while not stop.wait(0.25):
        progress = watch.changed()
        if progress is not None:
            with contextlib.suppress(httpx.HTTPError):
                client.post(url, json=progress.event())


def _upload_outputs(client: httpx.Client, url: str, job: JobDir) -> None:
    files: list[tuple[str, Any]] = []
    handles = []
    try:
        for field, folder in (("out", job.out), ("steps", job.steps_dir)):
            for path in sorted(folder.glob("*")) if folder.is_dir() else []:
                if path.is_file():
                    handle = path.open("rb")
                    handles.append(handle)
                    files.append((field, (path.name, handle)))
        files.append(("result", (job.result_file.name, job.result_file.read_bytes())))
        client.post(url, files=files).raise_for_status()
    finally:
        for handle in handles:
            handle.close()


def _run_pipeline(job: JobDir) -> PipelineResult:
    """The pipeline as a process of its own, started from the minimal job environment: this
    process holds the job's credential in its environment, which the target scripts (the
    pipeline's children) must not find in `/proc/$PPID/environ`. The pipeline also isolates
    its steps where the container allows namespaces (see `pipeline.isolation`)."""
    code = subprocess.call([sys.executable, "-m", "vlab_backend.pipeline", "--", str(job.root)],
                           env=job_environment(), stdin=subprocess.DEVNULL)
    result = job.read_result()
    if result is None:  # killed before it could write one
        result = PipelineResult()
        result.fail(code, f"the pipeline ended with code {code} and no result")
        job.write_result(result)
    return result


def main() -> int:
    api = os.environ["VLAB_API_URL"].rstrip("/")
    bench_id = os.environ["VLAB_BENCHMARK_ID"]
    token = os.environ["VLAB_JOB_TOKEN"]
    base = f"/api/jobs/{bench_id}"
    root = Path(tempfile.mkdtemp(prefix="vlab-job-", dir=os.environ.get("NOMAD_TASK_DIR")))
    job, inputs = JobDir(root / bench_id), root / "inputs"
    inputs.mkdir()
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"},
                      timeout=httpx.Timeout(60.0, read=600.0)) as client:
        data = client.get(f"{base}/spec").raise_for_status().json()
        paths = {}
        for name in data.pop("inputs"):
            target = inputs / Path(name).name
            _download(client, f"{base}/inputs/{name}", target)
            paths[name] = str(target)
        spec = JobSpec(**data, repository=os.environ.get("VLAB_REPOSITORY", "/app"),
                       model_path=paths.pop("model"), dataset_path=paths.pop("dataset", None),
                       extra_files=paths)
        job.create(spec)
        stop = threading.Event()
        relay = threading.Thread(target=_relay_progress, daemon=True, args=(
            client, f"{base}/progress", job, stop))
        relay.start()
        try:
            result = _run_pipeline(job)
        finally:
            stop.set()
            relay.join(timeout=2)
        _upload_outputs(client, f"{base}/outputs", job)
    print(json.dumps({"benchmark": bench_id, "exit_code": result.exit_code,
                      "message": result.message}))
    return 0 if result.succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
