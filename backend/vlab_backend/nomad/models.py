"""Typed models of the Nomad job JSON we send.

Field names are Nomad's Go field names (the JSON API ignores unknown keys silently, so a typo
would go unnoticed: here unknown keys are impossible, `extra="forbid"`). Durations are integer
nanoseconds. Task `Config` is the driver's own snake_case map.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NS_PER_S = 1_000_000_000
OPERANDS = ("=", "==", "is", "!=", "not", "<", "<=", ">", ">=", "regexp", "version", "semver",
            "set_contains", "set_contains_all", "set_contains_any", "is_set", "is_not_set",
            "distinct_hosts", "distinct_property")


def seconds(value: float) -> int:
    """A duration in Nomad's encoding (nanoseconds)."""
    return int(value * NS_PER_S)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON Nomad receives; unused optional fields (empty) are left out."""
        data: dict[str, Any] = _prune(self.model_dump(exclude_none=True))
        return data


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: (item if key == "Config" else _prune(item)) for key, item in value.items()
                if item not in ("", [], {})}
    if isinstance(value, list):
        return [_prune(item) for item in value]
    return value


class Constraint(_Model):
    LTarget: str
    RTarget: str = ""
    Operand: str

    @field_validator("Operand")
    @classmethod
    def _known_operand(cls, value: str) -> str:
        if value not in OPERANDS:
            raise ValueError(f"unknown constraint operand {value!r}")
        return value


class RestartPolicySpec(_Model):
    Attempts: int = 0
    Interval: int = seconds(24 * 3600)
    Delay: int = seconds(15)
    Mode: Literal["fail", "delay"] = "fail"

    @model_validator(mode="after")
    def _nomad_rules(self) -> RestartPolicySpec:
        if self.Attempts == 0 and self.Mode != "fail":
            raise ValueError("RestartPolicy: 0 attempts needs Mode 'fail'")
        if self.Interval < seconds(5):
            raise ValueError("RestartPolicy: Interval must be at least 5 s")
        if self.Attempts * self.Delay > self.Interval:
            raise ValueError("RestartPolicy: Attempts x Delay must not exceed Interval")
        return self


class ReschedulePolicySpec(_Model):
    Attempts: int = 0
    Unlimited: bool = False


class DisconnectSpec(_Model):
    """What Nomad (>= 1.8, `api/tasks.go` DisconnectStrategy) does when the node of an
    allocation stops heartbeating. Unset durations are left out: Nomad tells an unset
    `StopOnClientAfter` from 0 (stop at once)."""

    LostAfter: int | None = None
    StopOnClientAfter: int | None = None
    Replace: bool = True
    Reconcile: Literal["best_score", "keep_original", "keep_replacement",
                       "longest_running"] = "best_score"

    @model_validator(mode="after")
    def _nomad_rules(self) -> DisconnectSpec:
        if self.LostAfter is not None and self.StopOnClientAfter is not None:
            raise ValueError("Disconnect cannot be configured with both lost_after and "
                             "stop_after")
        if (self.LostAfter or 0) < 0 or (self.StopOnClientAfter or 0) < 0:
            raise ValueError("Disconnect durations cannot be negative")
        return self


class EphemeralDiskSpec(_Model):
    SizeMB: int = 300
    Sticky: bool = False
    Migrate: bool = False


class ResourcesSpec(_Model):
    CPU: int = Field(default=1000, ge=1)
    MemoryMB: int = Field(default=1024, ge=10)


class LogConfigSpec(_Model):
    MaxFiles: int = 5
    MaxFileSizeMB: int = 10


class Template(_Model):
    EmbeddedTmpl: str
    DestPath: str
    Envvars: bool = False
    ChangeMode: Literal["restart", "noop", "signal", "script"] = "noop"
    ChangeSignal: str = ""
    Perms: str = "0600"


class Port(_Model):
    Label: str
    Value: int = 0  # static port (ReservedPorts)
    To: int = 0  # container port
    # A named `host_network` of the client to bind on ("public": the LAN, for the gateway);
    # empty: the client's default network (the mesh interface).
    HostNetwork: str = ""


class NetworkSpec(_Model):
    Mode: Literal["host", "bridge", "none"] = "host"
    ReservedPorts: list[Port] = Field(default_factory=list)
    DynamicPorts: list[Port] = Field(default_factory=list)


class ServiceCheck(_Model):
    Name: str
    Type: Literal["http", "tcp"]
    Path: str = ""
    Interval: int = seconds(10)
    Timeout: int = seconds(2)


class Service(_Model):
    Name: str
    PortLabel: str
    Provider: Literal["nomad", "consul"] = "nomad"
    Tags: list[str] = Field(default_factory=list)
    Checks: list[ServiceCheck] = Field(default_factory=list)


class VolumeRequest(_Model):
    Type: Literal["host", "csi"]
    Source: str
    ReadOnly: bool = False


class VolumeMount(_Model):
    Volume: str
    Destination: str
    ReadOnly: bool = False


class Task(_Model):
    Name: str
    Driver: Literal["docker", "exec", "raw_exec", "podman"]
    Config: dict[str, Any]
    Env: dict[str, str] = Field(default_factory=dict)
    Resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    KillTimeout: int = seconds(30)
    LogConfig: LogConfigSpec = Field(default_factory=lambda: LogConfigSpec())
    Templates: list[Template] = Field(default_factory=list)
    VolumeMounts: list[VolumeMount] = Field(default_factory=list)

    @field_validator("Name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if "/" in value or value == "alloc" or not value:
            raise ValueError(f"invalid task name {value!r}")
        return value


class TaskGroup(_Model):
    Name: str
    Count: int = 1
    RestartPolicy: RestartPolicySpec = Field(default_factory=lambda: RestartPolicySpec())
    ReschedulePolicy: ReschedulePolicySpec = Field(
        default_factory=lambda: ReschedulePolicySpec())
    EphemeralDisk: EphemeralDiskSpec = Field(default_factory=lambda: EphemeralDiskSpec())
    Disconnect: DisconnectSpec | None = None
    Networks: list[NetworkSpec] = Field(default_factory=list)
    Services: list[Service] = Field(default_factory=list)
    Volumes: dict[str, VolumeRequest] = Field(default_factory=dict)
    Tasks: list[Task]


class NomadJob(_Model):
    ID: str
    Name: str
    Type: Literal["batch", "service", "system", "sysbatch"]
    Namespace: str = "default"
    Datacenters: list[str] = Field(default_factory=lambda: ["*"])
    NodePool: str = "default"
    Priority: int = Field(default=50, ge=1, le=100)
    Meta: dict[str, str] = Field(default_factory=dict)
    Constraints: list[Constraint] = Field(default_factory=list)
    TaskGroups: list[TaskGroup]

    @field_validator("ID")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not value or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"invalid job ID {value!r}")
        return value


class JobRegisterRequest(_Model):
    Job: NomadJob
