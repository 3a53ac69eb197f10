"""The Nomad batch job that runs one benchmark on one target instance.

The job carries no secret: the pipeline's single-job credential lives in a Nomad Variable at
`nomad/jobs/<job id>` (readable only by that job's workload identity) and reaches the task
through a template rendered into `secrets/`.

A lost host ends the benchmark, it is never run again elsewhere: no restart, no reschedule,
and `Disconnect.Replace = false` (Nomad replaces the allocation of a node that stops
heartbeating whatever the reschedule policy; with it off, the allocation goes `unknown` and the
runner fails the benchmark). `StopOnClientAfter` makes the host itself stop the task once it
has been cut off from the servers that long, so that a board is not left running a job the
lab has given up on.

Memory: the task reserves `MemoryMB` on the host (Nomad subtracts it from what the node offers
other jobs), so it comes from the host's configuration, not from the board's RAM: the
instance's `memory.job` (bytes, in the target configuration file beside `ram` and `storage`),
else the server's `nomad_job_memory_mb` (`VLAB_NOMAD_JOB_MEMORY_MB`, default 1024)."""

from __future__ import annotations

import re
from typing import Any

from vlab_backend.nomad.models import (
    Constraint,
    DisconnectSpec,
    EphemeralDiskSpec,
    JobRegisterRequest,
    NomadJob,
    ResourcesSpec,
    Task,
    TaskGroup,
    Template,
    seconds,
)

TARGETS_META = "vlab_targets"  # node meta: comma-separated target_uids of the host
NODE_POOL = "vlab-targets"


def job_id(benchmark_id: str) -> str:
    return f"vlab-bench-{benchmark_id}"


def variable_path(benchmark_id: str) -> str:
    return f"nomad/jobs/{job_id(benchmark_id)}"


DEFAULT_MEMORY_MB = 1024
MIN_MEMORY_MB = 64
JOB_MEMORY_KEY = "job"  # the instance's `memory` entry: bytes the benchmark job reserves
# How long a benchmark's job may go without a running allocation (see runners.nomad).
DEFAULT_PLACEMENT_DEADLINE_S = 120.0


def memory_mb(memory: dict[str, Any], default_mb: int = DEFAULT_MEMORY_MB) -> int:
    """The MiB the job reserves on its host: the instance's `memory.job` bytes if the target
    configuration sets it, else `default_mb`; at least 64 MiB."""
    reserved = int(memory.get(JOB_MEMORY_KEY) or 0)
    return max(MIN_MEMORY_MB, reserved // 2**20 if reserved else default_mb)


def benchmark_job(*, benchmark_id: str, target_type: str, target_uid: str, engine: str,
                  offer: dict[str, Any], memory: dict[str, Any], api_url: str,
                  default_memory_mb: int = DEFAULT_MEMORY_MB,
                  stop_on_client_after_s: float = DEFAULT_PLACEMENT_DEADLINE_S
                  ) -> JobRegisterRequest:
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
                Resources=ResourcesSpec(CPU=1000, MemoryMB=memory_mb(memory, default_memory_mb)),
                Templates=[credential])
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", target_uid)
    job = NomadJob(
        ID=job_id(benchmark_id), Name=job_id(benchmark_id), Type="batch", NodePool=NODE_POOL,
        Meta={"vlab.benchmark": benchmark_id, "vlab.target_uid": target_uid},
        Constraints=[Constraint(LTarget="${meta." + TARGETS_META + "}", RTarget=target_uid,
                                Operand="set_contains")],
        TaskGroups=[TaskGroup(Name=f"bench-{safe}"[:60], Tasks=[task],
                              EphemeralDisk=EphemeralDiskSpec(SizeMB=2048),
                              Disconnect=DisconnectSpec(
                                  Replace=False,
                                  StopOnClientAfter=seconds(stop_on_client_after_s)))])
    return JobRegisterRequest(Job=job)
