"""The Nomad batch job that runs one benchmark on one target instance.

The job carries no secret: the pipeline's single-job credential lives in a Nomad Variable at
`nomad/jobs/<job id>` (readable only by that job's workload identity) and reaches the task
through a template rendered into `secrets/`."""

from __future__ import annotations

import re
from typing import Any

from vlab_backend.nomad.models import (
    Constraint,
    EphemeralDiskSpec,
    JobRegisterRequest,
    NomadJob,
    ResourcesSpec,
    Task,
    TaskGroup,
    Template,
)

TARGETS_META = "vlab_targets"  # node meta: comma-separated target_uids of the host
NODE_POOL = "vlab-targets"


def job_id(benchmark_id: str) -> str:
    return f"vlab-bench-{benchmark_id}"


def variable_path(benchmark_id: str) -> str:
    return f"nomad/jobs/{job_id(benchmark_id)}"


def _memory_mb(memory: dict[str, Any]) -> int:
    ram = int(memory.get("ram") or 0)
    return max(256, min(ram // 2**20 // 2, 16_384)) if ram else 1024


def benchmark_job(*, benchmark_id: str, target_type: str, target_uid: str, engine: str,
                  offer: dict[str, Any], memory: dict[str, Any],
                  api_url: str) -> JobRegisterRequest:
    """A batch job pinned to the host advertising `target_uid`, in the engine's image."""
    if not offer.get("image"):
        raise ValueError(f"{target_uid}: engine {engine} has no image for the Nomad runner")
    env = {str(k): str(v) for k, v in (offer.get("env") or {}).items()}
    env.update({"VLAB_API_URL": api_url, "VLAB_BENCHMARK_ID": benchmark_id,
                "TARGET": target_type, "TARGET_UID": target_uid, "RUNTIME": engine,
                "PYTHONUNBUFFERED": "1"})
    config: dict[str, Any] = {
        "image": offer["image"],
        "command": "python",
        "args": ["-m", "vlab_backend.pipeline.remote"],
        "force_pull": False,
    }
    devices = [{"host_path": d, "container_path": d} if isinstance(d, str) else d
               for d in offer.get("devices", [])]
    if devices:
        config["devices"] = devices
    if offer.get("volumes"):
        config["volumes"] = list(offer["volumes"])
    credential = Template(
        EmbeddedTmpl=('{{ with nomadVar "' + variable_path(benchmark_id) + '" }}'
                      "VLAB_JOB_TOKEN={{ .token }}{{ end }}"),
        DestPath="secrets/job.env", Envvars=True)
    task = Task(Name="pipeline", Driver="docker", Config=config, Env=env,
                Resources=ResourcesSpec(CPU=1000, MemoryMB=_memory_mb(memory)),
                Templates=[credential])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", target_uid)
    job = NomadJob(
        ID=job_id(benchmark_id), Name=job_id(benchmark_id), Type="batch", NodePool=NODE_POOL,
        Meta={"vlab.benchmark": benchmark_id, "vlab.target_uid": target_uid},
        Constraints=[Constraint(LTarget="${meta." + TARGETS_META + "}", RTarget=target_uid,
                                Operand="set_contains")],
        TaskGroups=[TaskGroup(Name=f"bench-{safe}"[:60], Tasks=[task],
                              EphemeralDisk=EphemeralDiskSpec(SizeMB=2048))])
    return JobRegisterRequest(Job=job)
