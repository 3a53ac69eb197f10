"""Nomad job JSON built by construction: golden fixture and the validation rules."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from vlab_backend.nomad.jobs import benchmark_job, variable_path
from vlab_backend.nomad.models import (
    Constraint,
    DisconnectSpec,
    NomadJob,
    RestartPolicySpec,
    Task,
    seconds,
)

FIXTURE = Path(__file__).with_name("fixtures") / "benchmark_job.json"


def build(**overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "benchmark_id": "0123456789abcdef", "target_type": "rpi5",
        "target_uid": "rpi5-00ab-12cd", "engine": "tflite",
        "offer": {"image": "registry.lab/rpi5-tflite:1.0", "env": {"BOARD": "pi5"},
                  "devices": ["/dev/video0"], "supported_types": ["TYPE1"]},
        "memory": {"ram": 8 * 2**30}, "api_url": "https://vlab.lab:8765"}
    options.update(overrides)
    return benchmark_job(**options).to_json()


def test_benchmark_job_matches_the_golden_fixture() -> None:
    assert build() == json.loads(FIXTURE.read_text())


def test_job_is_a_pinned_batch_job_without_restarts_or_secrets() -> None:
    job = build()["Job"]
    assert job["Type"] == "batch"
    assert job["Constraints"] == [{"LTarget": "${meta.vlab_targets}",
                                   "RTarget": "rpi5-00ab-12cd", "Operand": "set_contains"}]
    group = job["TaskGroups"][0]
    assert group["RestartPolicy"]["Attempts"] == 0 and group["RestartPolicy"]["Mode"] == "fail"
    assert group["ReschedulePolicy"] == {"Attempts": 0, "Unlimited": False}
    task = group["Tasks"][0]
    assert "DiskMB" not in task["Resources"]  # Nomad refuses task-level disk
    assert task["KillTimeout"] == 30 * 10**9  # durations in nanoseconds
    # The credential is referenced through a Nomad Variable, never written into the job.
    [template] = task["Templates"]
    assert variable_path("0123456789abcdef") in template["EmbeddedTmpl"]
    assert template["DestPath"].startswith("secrets/") and template["Envvars"] is True
    text = json.dumps(job)
    assert not re.search(r"vlab_[A-Za-z0-9_-]{30,}", text)  # no API token
    assert "eyJ" not in text and "password" not in text.lower()  # no JWT, no password


def test_unknown_keys_are_impossible() -> None:
    job = build()["Job"]
    job["TaskGroups"][0]["Tasks"][0]["Resources"]["Memory"] = 512  # HCL name, not Nomad's JSON
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        NomadJob.model_validate(job)


def test_nomad_validation_rules() -> None:
    with pytest.raises(ValidationError):
        Constraint(LTarget="${meta.x}", RTarget="y")  # type: ignore[call-arg]  # no Operand
    with pytest.raises(ValidationError, match="unknown constraint operand"):
        Constraint(LTarget="${meta.x}", RTarget="y", Operand="like")
    with pytest.raises(ValidationError, match="Interval must be at least 5 s"):
        RestartPolicySpec(Interval=seconds(1))
    with pytest.raises(ValidationError, match="0 attempts needs Mode 'fail'"):
        RestartPolicySpec(Attempts=0, Mode="delay")
    with pytest.raises(ValidationError, match="must not exceed Interval"):
        RestartPolicySpec(Attempts=10, Delay=seconds(60), Interval=seconds(300), Mode="delay")
    with pytest.raises(ValidationError, match="invalid task name"):
        Task(Name="alloc", Driver="docker", Config={})
    with pytest.raises(ValidationError, match="invalid job ID"):
        NomadJob(ID="has space", Name="x", Type="batch", TaskGroups=[])
    with pytest.raises(ValueError, match="has no image"):
        build(offer={"repository": "targets/x"})


def test_memory_is_the_hosts_reservation_not_the_boards_ram() -> None:
    def memory_mb(**overrides: Any) -> int:
        return int(build(**overrides)["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"][
            "MemoryMB"])

    assert memory_mb() == 1024  # the server's default, whatever the board's 8 GiB of RAM
    assert memory_mb(memory={"ram": 8 << 30, "job": 512 << 20}) == 512  # memory.job
    assert memory_mb(default_memory_mb=2048) == 2048  # VLAB_NOMAD_JOB_MEMORY_MB
    assert memory_mb(memory={"job": 1}) == 64


def test_a_lost_allocation_is_never_replaced() -> None:
    group = build(stop_on_client_after_s=90)["Job"]["TaskGroups"][0]
    assert group["Disconnect"] == {"Replace": False, "StopOnClientAfter": seconds(90),
                                   "Reconcile": "best_score"}
    with pytest.raises(ValidationError, match="both lost_after and stop_after"):
        DisconnectSpec(LostAfter=seconds(1), StopOnClientAfter=seconds(1))
    assert "LostAfter" not in DisconnectSpec(Replace=False).to_json()  # unset, not 0
