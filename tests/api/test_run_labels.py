"""Names, tags and notes on benchmark runs: set at submission or later by their owner, shown in
the benchmark view and the results rows, filtered on, refused when malformed."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import LiveServer, user_client, wait_status, wait_terminal


def submit(client: httpx.Client, model: Path, **fields: Any) -> httpx.Response:
    data = {"device": "host-cpu", "engine": "onnxruntime", "nb_inference": "3"}
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    with model.open("rb") as handle:
        return client.post("/api/benchmarks/run", data=data,
                           files={"model": (model.name, handle)})


def stored_runs(server: LiveServer) -> int:
    with sqlite3.connect(server.data_dir / "vlab.db") as db:
        count: int = db.execute("select count(*) from benchmarks").fetchone()[0]
    return count


def results(client: httpx.Client, **params: Any) -> tuple[list[dict[str, Any]], list[str],
                                                          list[list[Any]]]:
    records = client.get("/api/results", params=params)
    assert records.status_code == 200, records.text
    table = client.get("/api/results", params={**params, "format": "columns"}).json()
    return records.json(), table["columns"], table["data"]


def test_labels_given_at_submission_are_stored_shown_and_filtered(server: LiveServer,
                                                                   small_onnx: Path) -> None:
    unique = uuid.uuid4().hex[:8]  # the session's server is shared with other tests
    with server.client() as client:
        first = submit(client, small_onnx, name=f"baseline {unique}",
                       tags=[f"fp32-{unique}", "v1.2:rc_1", f"fp32-{unique}"],
                       notes="first try\n\twith tabs").json()["id"]
        second = submit(client, small_onnx, name=f"Quantised {unique}",
                        tags=[f"int8-{unique}", "v1.2:rc_1"]).json()["id"]
        plain = submit(client, small_onnx).json()["id"]
        view = wait_terminal(client, first)
        wait_terminal(client, second)
        wait_terminal(client, plain)
        assert view["name"] == f"baseline {unique}"
        assert view["tags"] == [f"fp32-{unique}", "v1.2:rc_1"]  # the repeat dropped
        assert view["notes"] == "first try\n\twith tabs"
        unlabelled = client.get(f"/api/benchmarks/{plain}").json()
        assert (unlabelled["name"], unlabelled["tags"], unlabelled["notes"]) == ("", [], "")

        records, columns, data = results(client, tag="v1.2:rc_1", name=unique)
        assert {r["id"] for r in records} == {first, second}
        by_id = {r["id"]: r for r in records}
        assert by_id[first]["tags"] == [f"fp32-{unique}", "v1.2:rc_1"]
        assert by_id[second]["name"] == f"Quantised {unique}"
        # The columns layout: tags a JSON list too, never its text.
        rows = [dict(zip(columns, row, strict=True)) for row in data]
        assert {r["id"]: r["tags"] for r in rows} == {r["id"]: r["tags"] for r in records}
        assert {"name", "tags", "notes"} <= set(columns)
        plain_row = results(client, model=small_onnx.name)[0]
        assert next(r for r in plain_row if r["id"] == plain)["tags"] == []

        # Every tag must match; case does not matter; the name is a part, any case.
        assert [r["id"] for r in results(client, tag=["v1.2:rc_1", f"INT8-{unique}"])[0]] \
            == [second]
        assert results(client, tag=[f"fp32-{unique}", f"int8-{unique}"])[0] == []
        assert [r["id"] for r in results(client, name=f"quantised {unique}")[0]] == [second]
        # A tag is a whole element: no prefix matches, and LIKE wildcards are literal.
        assert results(client, tag=f"fp3-{unique}")[0] == []
        assert results(client, tag=f"fp32_{unique}")[0] == []
        assert results(client, name=f"%{unique}")[0] == []

        history = client.get("/api/benchmarks", params={"tag": f"fp32-{unique}"}).json()
        assert history["count"] == 1 and history["results"][0]["id"] == first
        assert history["results"][0]["tags"] == [f"fp32-{unique}", "v1.2:rc_1"]
        named = client.get("/api/benchmarks", params={"name": unique}).json()
        assert {r["id"] for r in named["results"]} == {first, second}


def test_the_owner_changes_labels_later(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, name="before", tags=["a"]).json()["id"]
        wait_terminal(client, bench_id)
        answer = client.patch(f"/api/benchmarks/{bench_id}/labels",
                              json={"tags": ["b", "c"], "notes": "looks noisy"})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["name"], answer.json()["tags"], answer.json()["notes"]) == \
            ("before", ["b", "c"], "looks noisy")  # the name was not sent: it stays
        view = client.get(f"/api/benchmarks/{bench_id}").json()
        assert (view["name"], view["tags"], view["notes"]) == ("before", ["b", "c"],
                                                               "looks noisy")
        cleared = client.patch(f"/api/benchmarks/{bench_id}/labels",
                               json={"name": "", "tags": []}).json()
        assert (cleared["name"], cleared["tags"], cleared["notes"]) == ("", [], "looks noisy")
        missing = client.patch("/api/benchmarks/nothere/labels", json={"name": "x"})
        assert missing.status_code == 404


def test_only_the_owner_changes_labels(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as admin:
        private = submit(admin, small_onnx, name="mine").json()["id"]
        public = submit(admin, small_onnx, name="shared", public="true").json()["id"]
        wait_terminal(admin, private)
        wait_terminal(admin, public)
    with user_client(server, "labels-other@lab.example") as other:
        hidden = other.patch(f"/api/benchmarks/{private}/labels", json={"name": "theirs"})
        assert hidden.status_code == 404
        seen = other.patch(f"/api/benchmarks/{public}/labels", json={"name": "theirs"})
        assert seen.status_code == 403 and "only the owner" in seen.json()["error"]
    with server.client() as admin:
        assert admin.get(f"/api/benchmarks/{private}").json()["name"] == "mine"
        assert admin.get(f"/api/benchmarks/{public}").json()["name"] == "shared"


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"tags": ["has space"]}, 400, "tags: 'has space' is not a tag"),
    ({"tags": [""]}, 400, "tags: '' is not a tag"),
    ({"tags": ["x" * 65]}, 400, "is not a tag (1 to 64 characters"),
    ({"tags": ['quo"te']}, 400, "is not a tag"),
    ({"tags": [f"t{i}" for i in range(33)]}, 400, "tags: at most 32 tags (got 33)"),
    ({"tags": "fp32"}, 422, "tags"),
    ({"tags": [1]}, 422, "tags.0"),
    ({"name": "n" * 201}, 400, "name must be at most 200 characters"),
    ({"name": "two\nlines"}, 400, "name must not contain control characters"),
    ({"notes": "n" * 4001}, 400, "notes must be at most 4000 characters"),
    ({"notes": "nul\x00"}, 400, "notes must not contain control characters"),
    ({"colour": "red"}, 422, "colour"),
])
def test_bad_labels_are_refused_and_nothing_changes(server: LiveServer, small_onnx: Path,
                                                    body: dict[str, Any], status: int,
                                                    message: str) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, name="kept", tags=["kept"],
                          notes="kept").json()["id"]
        answer = client.patch(f"/api/benchmarks/{bench_id}/labels",
                              json={"name": "changed?", **body})
        assert answer.status_code == status, answer.text
        assert message in answer.json()["error"]
        view = client.get(f"/api/benchmarks/{bench_id}").json()
        assert (view["name"], view["tags"], view["notes"]) == ("kept", ["kept"], "kept")
        wait_terminal(client, bench_id)


@pytest.mark.parametrize(("fields", "message"), [
    ({"tags": ["ok", "not ok"]}, "tags: 'not ok' is not a tag"),
    ({"tags": "not json"}, "tags must be JSON"),
    ({"tags": {"a": 1}}, "tags must be a JSON list"),
    ({"name": "n" * 201}, "name must be at most 200 characters"),
    ({"notes": "n" * 4001}, "notes must be at most 4000 characters"),
])
def test_bad_labels_at_submission_store_nothing(server: LiveServer, small_onnx: Path,
                                                fields: dict[str, Any], message: str) -> None:
    before = stored_runs(server)
    with server.client() as client:
        answer = submit(client, small_onnx, **fields)
    assert answer.status_code == 400, answer.text
    assert message in answer.json()["error"]
    assert stored_runs(server) == before


def test_bad_tag_filters_are_refused(server: LiveServer) -> None:
    with server.client() as client:
        for path in ("/api/results", "/api/benchmarks"):
            answer = client.get(path, params={"tag": 'a"'})
            assert answer.status_code == 400
            assert "tag: 'a\"' is not a tag" in answer.json()["error"]


def test_a_label_change_reaches_the_live_streams(server: LiveServer, small_onnx: Path) -> None:
    with server.client() as client:
        bench_id = submit(client, small_onnx, parameters={"min_time_s": 60}).json()["id"]
        wait_status(client, bench_id, "running")
        try:
            with client.stream("GET", f"/api/benchmarks/{bench_id}/events") as stream, \
                    client.stream("GET", "/api/targets/events") as board:
                lines = stream.iter_lines()
                board_lines = board.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert "labels" not in json.loads(first[6:])
                assert json.loads(next(line for line in board_lines
                                       if line.startswith("data: "))[6:]) == {
                    "event": "targets"}
                client.patch(f"/api/benchmarks/{bench_id}/labels",
                             json={"name": "live", "tags": ["x"]}).raise_for_status()
                event = next(json.loads(line[6:]) for line in lines
                             if line.startswith("data: ") and "labels" in line)
                assert event["labels"] == {"name": "live", "tags": ["x"], "notes": ""}
                assert event["event"] == "status" and event["status"] == "running"
                # The target board's stream (what the explorer and dashboard follow).
                assert json.loads(next(line for line in board_lines
                                       if line.startswith("data: "))[6:]) == {
                    "event": "targets"}
        finally:
            client.post(f"/api/benchmarks/{bench_id}/cancel")
            wait_terminal(client, bench_id)
