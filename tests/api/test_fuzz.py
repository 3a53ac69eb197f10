"""Property-based fuzzing of every operation in the OpenAPI schema: no input gives a 5xx, and
every answer matches what the document declares for its status."""

from __future__ import annotations

import collections
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.server import LiveServer, add_user

pytestmark = pytest.mark.slow


def test_no_input_causes_a_server_error(tmp_path: Path) -> None:
    # A server of its own: fuzzing with an admin token changes the catalogue.
    server = LiveServer(tmp_path / "data").start()
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        # A JWT of an admin, which no fuzzed call can revoke (API tokens can be).
        add_user(server, "fuzz@lab.example", "a long password", admin=True)
        access = httpx.post(server.url + "/api/users/login", json={
            "email": "fuzz@lab.example", "password": "a long password"}).json()["access_token"]
        headers = {"Authorization": f"Bearer {access}"}
        failures: list[str] = []
        statuses: collections.Counter[int] = collections.Counter()
        # Server-sent event streams stay open by design: they are tested on their own.
        operations = [op for op in (result.ok() for result in schema.get_all_operations())
                      if not op.path.endswith("/events")]
        assert len(operations) > 40
        for operation in operations:
            # Login, refresh and the job endpoints answer 401 to fuzzed credentials.
            counted = not operation.path.startswith(("/api/jobs", "/api/users/login",
                                                     "/api/users/token"))

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                if counted:  # noqa: B023 - used at once, within this loop iteration
                    statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} -> "
                                    f"{response.status_code}: {response.text[:200]}")
                    return
                try:
                    case.validate_response(response, checks=[response_schema_conformance],
                                           headers=headers)
                except (FailureGroup, Failure) as exc:
                    failures.append(f"{case.method} {case.formatted_path} -> "
                                    f"{response.status_code} does not match the document: "
                                    f"{str(exc)[:300]}")

            check()
        assert failures == []
        # The calls were authenticated: the fuzzer reached the handlers.
        assert statuses[401] < sum(statuses.values()) // 10, statuses
    finally:
        server.stop()
