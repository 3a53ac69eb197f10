"""The target board: instances, busy/free and queue lengths, refreshed on every change."""

from __future__ import annotations

import html
import threading

import ipywidgets as w

from vlab_kernel.lab import Lab, connect
from vlab_widgets.common import Message


class TargetBoard(w.VBox):
    def __init__(self, lab: Lab | None = None, live: bool = True) -> None:
        self.lab = lab or connect()
        self.table = w.HTML()
        self.message = Message()
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__([w.HTML("<h3>Targets</h3>"), self.table, self.message])
        self.add_class("vlab-board")
        self.refresh()
        if live:
            self.start()

    def refresh(self) -> None:
        try:
            targets = self.lab.client.targets()
        except Exception as error:
            self.message.show_error(error)
            return
        rows = []
        for target in targets:
            for instance in target["instances"]:
                state = instance["state"]
                color = "#c62828" if state == "busy" else "#2e7d32"
                rows.append(
                    f"<tr><td>{html.escape(target['target'])}</td>"
                    f"<td>{html.escape(instance['target_uid'])}</td>"
                    f'<td style="color:{color}" class="vlab-state-{state}">{state}</td>'
                    f"<td>{html.escape(instance['benchmark_id'] or '')}</td>"
                    f"<td>{','.join(map(str, instance['cpuset']))}</td>"
                    f"<td>{html.escape(', '.join(sorted(instance['engines'])))}</td>"
                    f"<td>{target['queue_length']}</td></tr>")
        self.table.value = ('<table class="vlab-board-table"><tr><th>target</th>'
                            "<th>instance</th><th>state</th><th>benchmark</th><th>cores</th>"
                            "<th>engines</th><th>queued</th></tr>" + "".join(rows) + "</table>")
        self.refreshes += 1
        self.add_class("vlab-ready")

    def start(self) -> None:
        """Follow the server's target events in the background (no polling)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name="vlab-target-board")
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for _event in self.lab.client.stream("/api/targets/events"):
                    if self._stop.is_set():
                        return
                    self.refresh()
            except Exception as error:
                self.message.show_error(error)
                self._stop.wait(2.0)

    def stop(self) -> None:
        self._stop.set()
