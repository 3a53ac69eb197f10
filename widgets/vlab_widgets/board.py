"""The target board: instances, busy/free and queue lengths, refreshed on every change."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from vlab_kernel.lab import Lab, connect
from vlab_widgets.common import EventFollower, Message


class TargetBoard(w.VBox):
    """Every target instance with its state and queue; `live` follows the server's events."""

    def __init__(self, lab: Lab | None = None, live: bool = True) -> None:
        self.lab = lab or connect()
        self.table = w.HTML()
        self.message = Message()
        self.refreshes = 0
        self._follower = EventFollower(self.lab, "/api/targets/events", self._on_event,
                                       self.message.show_error)
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

    def _on_event(self, _event: dict[str, Any]) -> None:
        self.refresh()

    def start(self) -> None:
        """Follow the server's target events in the background (no polling)."""
        self._follower.start()

    def stop(self) -> None:
        self._follower.stop()
