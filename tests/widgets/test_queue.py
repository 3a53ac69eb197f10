"""My queue: the user's pending, queued and running runs, live, with Cancel and Open."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.server import LiveServer
from vlab_kernel.client import VlabClient
from vlab_kernel.connection import Connection
from vlab_kernel.errors import Conflict
from vlab_kernel.lab import Lab
from vlab_widgets import QueueView, RunPage
from vlab_widgets.queue import age_text, positions, progress_cell


def wait_for(condition: Callable[[], object], timeout: float = 60) -> None:
    """Wait until `condition()` holds (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the state never came"
        time.sleep(0.05)


def test_age_progress_and_position_are_worded() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert age_text((now - timedelta(seconds=42)).isoformat(), now) == "42 s"
    assert age_text((now - timedelta(minutes=3, seconds=30)).isoformat(), now) == "3.5 min"
    assert age_text("2026-11-30T09:54:00", now) == "2.1 h"  # naive stamps are UTC
    assert age_text(None, now) == "–"
    assert progress_cell({"phase": "inference", "done": 12, "total": 40}, "running") == \
        "inference 12/40"
    assert progress_cell({"phase": "inference", "done": 0, "total": 0}, "pending") == "–"
    runs = [{"id": "c", "status": "pending", "device": "host-cpu", "created_at": "3"},
            {"id": "a", "status": "running", "device": "host-cpu", "target_uid": "host-cpu-0",
             "created_at": "1"},
            {"id": "b", "status": "pending", "device": "host-cpu", "created_at": "2"}]
    assert positions(runs, {"host-cpu": 5}) == {
        "a": "on host-cpu-0",
        "b": "#1 of your 2 waiting · 5 waiting for host-cpu in all",
        "c": "#2 of your 2 waiting · 5 waiting for host-cpu in all"}


def test_the_queue_follows_runs_live_with_cancel_and_open(fresh_server: LiveServer,
                                                         small_onnx: Path) -> None:
    lab = Lab(VlabClient(Connection(fresh_server.url, fresh_server.token)))
    queue = QueueView(lab)
    try:
        assert "Nothing queued" in queue.table.children[0].value
        instances = len(lab.targets().query("target == 'host-cpu'"))
        # One more long run than there are instances: the last one waits its turn.
        benches = [lab.benchmark(small_onnx, "host-cpu", "synthetic", runs=5,
                                 params={"min_time_s": 120}) for _ in range(instances + 1)]
        ids = [bench.id for bench in benches]
        wait_for(lambda: set(queue.ids) == set(ids) and sum(
            r["status"] == "running" for r in queue.runs) == instances)
        waiting = [r for r in queue.runs if r["status"] == "pending"]
        assert len(waiting) == 1
        wait_for(lambda: queue._where.get(waiting[0]["id"], "").startswith(
            "#1 of your 1 waiting"))
        running = next(r["id"] for r in queue.runs if r["status"] == "running")
        # Progress comes live from the run's own stream.
        # (the row and its progress cell appear with the queue's next redraw)
        wait_for(lambda: running in queue._rows and "/" in queue._rows[running].progress.value)
        wait_for(lambda: set(queue.cancel_buttons) == set(queue.open_buttons) == set(ids))
        # A redraw keeps each row's buttons: a click made while the queue redraws lands.
        buttons = queue.cancel_buttons
        queue.refresh()
        assert all(queue.cancel_buttons[b] is buttons[b] for b in ids)
        assert all(not button.disabled for button in buttons.values())

        wait_for(lambda: running in queue.open_buttons)
        queue.open_buttons[running].click()
        assert isinstance(queue.page, RunPage) and queue.page.bench_id == running
        assert queue.page_box.children == (queue.page,)
        wait_for(lambda: "vlab-status-running" in queue.page.status.value)

        for bench_id in ids:
            wait_for(lambda b=bench_id: b in queue.cancel_buttons)
            queue.cancel_buttons[bench_id].click()
            wait_for(lambda b=bench_id: b not in queue.ids)
        assert all(bench.status == "canceled" for bench in benches)
        wait_for(lambda: "Nothing queued" in queue.table.children[0].value)
        page = queue.page
        wait_for(lambda: "vlab-status-canceled" in page.status.value)
    finally:
        queue.close()
    assert not queue._follower.running and not queue._followed


class RefusingClient:
    """The API as the queue reads it, with runs set by the test and a cancel refused."""

    def __init__(self, runs: list[dict[str, Any]]) -> None:
        self.runs = runs

    def get_json(self, path: str, status: str, page_length: int) -> dict[str, Any]:
        return {"results": [run for run in self.runs if run["status"] == status]}

    def targets(self) -> list[dict[str, Any]]:
        return [{"target": "host-cpu", "queue_length": 1}]

    def cancel(self, bench_id: str) -> str:
        raise Conflict(f"benchmark {bench_id} cannot be canceled now")


def test_a_row_follows_its_run_and_a_refused_cancel_can_be_tried_again() -> None:
    run = {"id": "b-1", "status": "pending", "model": "m.onnx", "device": "host-cpu",
           "engine": "onnxruntime", "created_at": datetime.now(UTC).isoformat()}
    client = RefusingClient([run])
    queue = QueueView(SimpleNamespace(client=client), live=False)  # type: ignore[arg-type]
    try:
        row = queue._rows["b-1"]
        assert row.target.value == "host-cpu" and "#1 of your 1 waiting" in row.where.value
        client.runs = [{**run, "status": "running", "target_uid": "host-cpu-1",
                        "progress": {"phase": "inference", "done": 3, "total": 10}}]
        queue.refresh()
        assert queue._rows["b-1"] is row  # the same widgets, brought up to date
        assert row.target.value == "host-cpu-1" and row.where.value == "on host-cpu-1"
        assert "running" in row.state.value and row.progress.value == "inference 3/10"
        row.cancel.click()
        wait_for(lambda: "cannot be canceled now" in queue.message.value)
        wait_for(lambda: not row.cancel.disabled)
        assert queue.ids == ["b-1"]
    finally:
        queue.close()
