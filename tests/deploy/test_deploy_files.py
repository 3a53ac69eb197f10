"""The Nomad job files of the services are valid by construction and keep secrets out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlab_backend.nomad.models import JobRegisterRequest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
JOBS = sorted((DEPLOY / "nomad").glob("*.json"))


def test_every_service_has_a_job_file() -> None:
    assert {p.stem for p in JOBS} == {"vlab-api", "vlab-web", "vlab-gateway", "vlab-db",
                                      "vlab-vpn"}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.stem)
def test_job_file_is_valid_and_holds_no_secret(path: Path) -> None:
    job = JobRegisterRequest.model_validate(json.loads(path.read_text())).Job
    assert path.stem == job.ID
    text = path.read_text()
    # Passwords and tokens come from Nomad Variables through templates, never inline.
    assert not re.search(r'"(POSTGRES_PASSWORD|NOMAD_TOKEN|VLAB_TOKEN)":', text)
    for group in job.TaskGroups:
        for service in group.Services:
            assert service.Provider == "nomad"  # Nomad's native service discovery
        for task in group.Tasks:
            for template in task.Templates:
                if "nomadVar" in template.EmbeddedTmpl:
                    assert template.DestPath.startswith("secrets/")


def test_vpn_runs_on_every_node_and_services_on_full_hosts() -> None:
    jobs = {p.stem: JobRegisterRequest.model_validate(json.loads(p.read_text())).Job
            for p in JOBS}
    assert jobs["vlab-vpn"].Type == "system" and jobs["vlab-vpn"].NodePool == "all"
    for name in ("vlab-api", "vlab-web", "vlab-gateway", "vlab-db"):
        assert jobs[name].Type == "service"
        assert [c.RTarget for c in jobs[name].Constraints] == ["full"]  # not on minimal hosts


def test_images_exist_for_the_pipeline_and_targets() -> None:
    assert "vlab_backend.pipeline.remote" in (DEPLOY / "images" / "target.Dockerfile"
                                              ).read_text()
    assert "COPY app/ /app/" in (DEPLOY / "images" / "target.Dockerfile").read_text()
    assert "wireguard-tools" in (DEPLOY / "images" / "vpn.Dockerfile").read_text()
