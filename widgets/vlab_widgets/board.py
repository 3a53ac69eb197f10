"""The target board: instances, busy/free, health and queue lengths, refreshed on every
change."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from vlab_kernel.lab import Lab, connect
from vlab_kernel.units import budgets, sig3
from vlab_widgets.common import STOP_WAIT_S, EventFollower, Message

HEALTH_COLORS = {"healthy": "#2e7d32", "degraded": "#e65100", "error": "#c62828",
                 "unknown": "#757575"}


def health_text(instance: dict[str, Any]) -> str:
    """An instance's health in a few words: `healthy`, `degraded +52 %` (its last check's
    median against its baseline's), `error` or `unknown`; `(checking)` while a check runs."""
    health = str(instance.get("health") or "unknown")
    ratio = (instance.get("health_detail") or {}).get("ratio")
    if health == "degraded" and isinstance(ratio, int | float):
        health += f" {'+' if ratio >= 1 else ''}{sig3((ratio - 1) * 100)} %"
    if instance.get("health_checking"):
        health += " (checking)"
    return health


def health_cell(instance: dict[str, Any]) -> str:
    """The health column's cell: the words, colored, with the evidence (the last check's
    verdict) as its tooltip."""
    health = str(instance.get("health") or "unknown")
    css = health if health in HEALTH_COLORS else "unknown"
    evidence = str((instance.get("health_detail") or {}).get("verdict") or "never checked")
    return (f'<td style="color:{HEALTH_COLORS[css]}" class="vlab-health vlab-health-{css}" '
            f'title="{html.escape(evidence, quote=True)}">'
            f"{html.escape(health_text(instance))}</td>")


class TargetBoard(w.VBox):
    """Every target instance with its state, health and queue; `live` follows the server's
    events."""

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
                # Busy, free, or its host's state when that host is not ready (down, ...).
                color = {"busy": "#c62828", "free": "#2e7d32"}.get(state, "#757575")
                rows.append(
                    f"<tr><td>{html.escape(target['target'])}</td>"
                    f"<td>{html.escape(instance['target_uid'])}</td>"
                    f"<td>{html.escape(instance.get('host') or '')}</td>"
                    f'<td style="color:{color}" class="vlab-state-{state}">{state}</td>'
                    f"{health_cell(instance)}"
                    f"<td>{html.escape(instance['benchmark_id'] or '')}</td>"
                    f"<td>{','.join(map(str, instance['cpuset']))}</td>"
                    f"<td>{html.escape(budgets(instance.get('memory') or {}))}</td>"
                    f"<td>{html.escape(', '.join(sorted(instance['engines'])))}</td>"
                    f"<td>{target['queue_length']}</td></tr>")
        self.table.value = ('<table class="vlab-board-table"><tr><th>target</th>'
                            "<th>instance</th><th>host</th><th>state</th><th>health</th>"
                            "<th>benchmark</th><th>cores</th><th>budgets</th>"
                            "<th>engines</th><th>queued</th></tr>" + "".join(rows) + "</table>")
        self.refreshes += 1
        self.add_class("vlab-ready")

    def _on_event(self, _event: dict[str, Any]) -> None:
        self.refresh()

    def start(self) -> None:
        """Follow the server's target events in the background (no polling)."""
        self._follower.start()

    def stop(self) -> None:
        """Stop following the server's events."""
        self._follower.stop(timeout=STOP_WAIT_S)

    def close(self) -> None:
        self.stop()
        super().close()
