"""My queue: the user's unfinished benchmarks (pending, queued, running), live, each with
Cancel and Open (its RunPage)."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import ipywidgets as w

from vlab_kernel.client import TERMINAL
from vlab_kernel.lab import Lab, connect
from vlab_widgets.common import STOP_WAIT_S, EventFollower, Message, in_background, sig3
from vlab_widgets.run_page import RunPage

UNFINISHED = ("pending", "queued", "running")
NOTHING = '<p class="vlab-queue-empty"><i>Nothing queued: no run of yours is waiting or ' \
          "running.</i></p>"
COLUMNS = ["id", "model", "target", "engine", "status", "progress", "position", "age"]
SORTS = {"age (oldest first)": ("created_at", False), "age (newest first)": ("created_at", True),
         "status": ("status", False), "model": ("model", False), "target": ("device", False),
         "engine": ("engine", False)}
# Per running benchmark, a stream of its own feeds the progress column; at most this many.
MAX_FOLLOWED = 8


def age_text(created_at: str | None, now: datetime | None = None) -> str:
    """How long ago the run was submitted: "42 s", "3.5 min", "2.1 h"."""
    if not created_at:
        return "–"
    try:
        then = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return "–"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = max(((now or datetime.now(UTC)) - then).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{sig3(seconds / 60)} min"
    return f"{sig3(seconds / 3600)} h"


def progress_cell(progress: dict[str, Any] | None, status: str) -> str:
    """"inference 12/40" while it runs; "–" while it waits."""
    progress = progress or {}
    total, done = int(progress.get("total") or 0), int(progress.get("done") or 0)
    phase = progress.get("phase") or ""
    if status != "running":
        return "–"
    return f"{phase} {min(done, total)}/{total}".strip() if total else (phase or "started")


def positions(runs: list[dict[str, Any]], waiting: dict[str, int]) -> dict[str, str]:
    """Where each run stands: pending ones by their order among the user's pending runs of
    that target (oldest first) and how many wait for the target in all; others their
    instance."""
    result: dict[str, str] = {}
    by_target: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["status"] == "pending":
            by_target.setdefault(run["device"], []).append(run)
        else:
            result[run["id"]] = f"on {run.get('target_uid') or run['device']}"
    for target, pending in by_target.items():
        pending.sort(key=lambda r: (r.get("created_at") or "", r["id"]))
        total = max(waiting.get(target, 0), len(pending))
        for number, run in enumerate(pending, 1):
            result[run["id"]] = (f"#{number} of your {len(pending)} waiting · {total} waiting "
                                 f"for {target} in all")
    return result


class QueueRow:
    """One run's cells in the queue: id, model, target, engine, status, progress, position,
    age, Cancel and Open."""

    def __init__(self, bench_id: str, run: dict[str, Any], on_cancel: Callable[[str], None],
                 on_open: Callable[[str], Any]) -> None:
        self.id, self.model, self.target, self.engine = (
            w.HTML(html.escape(str(text))) for text in (bench_id, run.get("model"),
                                                        run.get("device"), run.get("engine")))
        self.state, self.progress, self.where, self.age = w.HTML(), w.HTML(), w.HTML(), w.HTML()
        self.progress.add_class("vlab-queue-progress")
        self.cancel = w.Button(description="Cancel", icon="stop", tooltip=f"cancel {bench_id}",
                               layout={"width": "90px"})
        self.open = w.Button(description="Open", tooltip=f"show the page of {bench_id}",
                             layout={"width": "80px"})
        self.cancel.on_click(lambda _button: on_cancel(bench_id))
        self.open.on_click(lambda _button: on_open(bench_id))
        self.cancel.add_class("vlab-queue-cancel")
        self.open.add_class("vlab-queue-open")
        self.status = ""

    @property
    def cells(self) -> list[w.Widget]:
        return [self.id, self.model, self.target, self.engine, self.state, self.progress,
                self.where, self.age, self.cancel, self.open]

    def update(self, status: str, where: str, run: dict[str, Any], streamed: bool) -> None:
        """The cells that change as the run waits and runs. A run whose progress comes from
        its own stream (`streamed`) keeps that: the stored copy is up to a second older."""
        if status != self.status or not streamed:
            self.progress.value = progress_cell(run.get("progress"), status)
        if status != self.status:
            self.state.value = f'<b class="vlab-status-{status}">{status}</b>'
            self.status = status
        # The instance once it has one (a pending run has only its target type).
        self.target.value = html.escape(str(run.get("target_uid") or run.get("device")))
        self.where.value = html.escape(where)
        self.age.value = age_text(run.get("created_at"))

    def close(self) -> None:
        for cell in self.cells:
            cell.close()


class QueueView(w.VBox):
    """The user's pending, queued and running benchmarks, refreshed on every change (the
    server's target events) with each running one's progress from its own stream."""

    def __init__(self, lab: Lab | None = None, live: bool = True) -> None:
        self.lab = lab or connect()
        self.runs: list[dict[str, Any]] = []
        self.refreshes = 0
        self.message = Message()
        self.sort_by = w.Dropdown(description="Sort by", options=list(SORTS),
                                  value="age (oldest first)")
        self.table = w.VBox()
        self.page_box = w.VBox()
        self.page: RunPage | None = None
        self._rows: dict[str, QueueRow] = {}
        self._header = [*(w.HTML(f"<b>{name}</b>") for name in COLUMNS), w.HTML(""), w.HTML("")]
        self._empty = w.HTML(NOTHING)
        self._grid: w.GridBox | None = None
        self._followed: dict[str, EventFollower] = {}
        self._lock = threading.RLock()
        self._live = live
        self._where: dict[str, str] = {}
        self.sort_by.observe(lambda _change: self._show(), names="value")
        self._follower = EventFollower(self.lab, "/api/targets/events",
                                       lambda _event: self.refresh(), self.message.show_error)
        super().__init__([w.HTML("<h3>My queue</h3>"), self.sort_by, self.message, self.table,
                          self.page_box], layout={"width": "100%"})
        self.add_class("vlab-queue")
        self.refresh()
        if live:
            self._follower.start()

    @property
    def ids(self) -> list[str]:
        """The unfinished runs shown, in the table's order."""
        return [run["id"] for run in self.runs]

    def _fetch(self) -> tuple[list[dict[str, Any]], dict[str, int]]:
        runs: list[dict[str, Any]] = []
        for status in UNFINISHED:
            page = self.lab.client.get_json("/api/benchmarks", status=status, page_length=100)
            runs.extend(page["results"])
        waiting = {t["target"]: int(t.get("queue_length") or 0) for t in self.lab.client.targets()}
        return runs, waiting

    def refresh(self) -> None:
        """Reload the unfinished runs from the API and redraw."""
        try:
            runs, waiting = self._fetch()
        except Exception as error:
            self.message.show_error(error)
            return
        with self._lock:
            self.runs = [r for r in runs if r.get("status") in UNFINISHED]
            self._where = positions(self.runs, waiting)
            self._show()
            self._follow_running()
            self.refreshes += 1
        self.add_class("vlab-ready")

    def _show(self) -> None:
        with self._lock:
            key, descending = SORTS[self.sort_by.value]
            self.runs.sort(key=lambda r: str(r.get(key) or ""), reverse=descending)
            # A run's row keeps its widgets from one redraw to the next: a click on its Cancel
            # or Open while the queue redraws still reaches a live button.
            rows = {run["id"]: self._row(run) for run in self.runs}
            gone = [row for bench_id, row in self._rows.items() if bench_id not in rows]
            self._rows = rows
            if not rows:
                children: list[w.Widget] = [self._empty]
            else:
                cells = [*self._header, *(cell for row in rows.values() for cell in row.cells)]
                if self._grid is None or list(self._grid.children) != cells:
                    self._grid = self._grid or w.GridBox(layout={
                        "grid_template_columns": f"repeat({len(COLUMNS)}, auto) 90px 80px",
                        "grid_gap": "2px 12px", "align_items": "center"})
                    self._grid.add_class("vlab-queue-table")
                    self._grid.children = cells
                children = [self._grid]
            if list(self.table.children) != children:
                self.table.children = children
            for row in gone:
                row.close()

    @property
    def cancel_buttons(self) -> dict[str, w.Button]:
        """Each shown run's Cancel button, by id."""
        return {bench_id: row.cancel for bench_id, row in self._rows.items()}

    @property
    def open_buttons(self) -> dict[str, w.Button]:
        """Each shown run's Open button, by id."""
        return {bench_id: row.open for bench_id, row in self._rows.items()}

    def _row(self, run: dict[str, Any]) -> QueueRow:
        """The run's row, made on its first showing, its cells brought up to date."""
        bench_id, status = run["id"], run["status"]
        row = self._rows.get(bench_id)
        if row is None:
            row = QueueRow(bench_id, run, self.cancel, self.open_run)
        row.update(status, self._where.get(bench_id, ""), run, bench_id in self._followed)
        return row

    def _follow_running(self) -> None:
        """One event stream per running run (a few at most) for its live progress."""
        running = [r["id"] for r in self.runs if r["status"] == "running"][:MAX_FOLLOWED]
        for bench_id in list(self._followed):
            if bench_id not in running:
                self._followed.pop(bench_id).stop()
        if not self._live:
            return
        for bench_id in running:
            if bench_id not in self._followed:
                follower = EventFollower(
                    self.lab, f"/api/benchmarks/{bench_id}/events",
                    partial(self._on_progress, bench_id),
                    self.message.show_error,
                    until=lambda event: event.get("status") in TERMINAL)
                self._followed[bench_id] = follower
                follower.start()

    def _on_progress(self, bench_id: str, event: dict[str, Any]) -> None:
        row = self._rows.get(bench_id)
        if row is not None and event.get("status") == "running":
            row.progress.value = progress_cell(event.get("progress"), "running")

    # -- actions ---------------------------------------------------------------------------
    def cancel(self, bench_id: str) -> None:
        """Cancel one of the runs (in the background; the queue redraws on its event)."""
        row = self._rows.get(bench_id)
        if row is not None:
            row.cancel.disabled = True

        def work() -> None:
            try:
                status = self.lab.client.cancel(bench_id)
                self.message.show(f"{bench_id}: {status}")
            except Exception as error:
                self.message.show_error(error)
                if row is not None:  # the row stays: it can be tried again
                    row.cancel.disabled = False
            self.refresh()  # the run's end also redraws it, on the targets' event

        in_background(work)

    def open_run(self, bench_id: str) -> RunPage:
        """Show the run's page below the queue."""
        if self.page is not None:
            self.page.close()
        self.page = RunPage(self.lab, bench_id, live=self._live)
        self.page_box.children = [self.page]
        return self.page

    def stop(self) -> None:
        """Stop following the server's events."""
        self._follower.stop(timeout=STOP_WAIT_S)
        for follower in self._followed.values():
            follower.stop(timeout=STOP_WAIT_S)
        self._followed.clear()
        if self.page is not None:
            self.page.stop()

    def close(self) -> None:
        self.stop()
        with self._lock:
            for row in self._rows.values():
                row.close()
            self._rows = {}
            for widget in (*self._header, self._empty, *([self._grid] if self._grid else [])):
                widget.close()
        super().close()
