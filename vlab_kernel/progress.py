"""A terminal progress bar fed by benchmark events."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class ProgressPrinter:
    def __init__(self, bench_id: str) -> None:
        self._bar = tqdm(total=1, desc=f"{bench_id} pending", unit="inf", leave=False,
                         dynamic_ncols=True)

    def update(self, event: dict[str, Any]) -> None:
        progress = event.get("progress") or {}
        phase = progress.get("phase") or event.get("status", "")
        self._bar.set_description_str(f"{event['id']} {phase or event.get('status')}")
        total, done = progress.get("total") or 0, progress.get("done") or 0
        if total and phase == "inference":
            if self._bar.total != total:
                self._bar.reset(total=total)
            self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()
