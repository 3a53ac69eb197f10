"""Helpers shared by the views: background work, error display, units and live events."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ipywidgets as w

from vlab_kernel.errors import VlabError
from vlab_kernel.lab import Lab
from vlab_kernel.units import MIB, MS, sig3

__all__ = ["MIB", "MS", "EventFollower", "Message", "in_background", "sig3", "stability_text"]

# Widget callbacks must not block the kernel: work runs here, widgets update from it.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vlab-widgets")


def in_background(work: Callable[[], Any]) -> Future[Any]:
    return _executor.submit(work)


def stability_text(cv: Any, unstable: Any, reasons: list[str] | None = None) -> str:
    """The stability verdict in words: "stable (CV 1.2 %)" or "unstable: <reasons> (CV …)"."""
    cv_text = f" (CV {sig3(float(cv) * 100)} %)" if cv is not None and cv == cv else ""
    if unstable:  # the reasons quote the CV themselves
        return f"unstable: {'; '.join(reasons)}" if reasons else f"unstable{cv_text}"
    return f"stable{cv_text}" if unstable is not None else "–"


class Message(w.HTML):
    """A one-line status or error message."""

    def show_error(self, error: BaseException) -> None:
        text = error.message if isinstance(error, VlabError) else f"{type(error).__name__}: " \
            f"{error}"
        self.value = f'<span class="vlab-error" style="color:#b00020">{html.escape(text)}</span>'

    def show(self, text: str) -> None:
        self.value = f'<span class="vlab-info">{html.escape(text)}</span>'

    def clear(self) -> None:
        self.value = ""


class EventFollower:
    """Calls `on_event` for every event of one of the server's event streams, from a daemon
    thread, reconnecting after errors (reported through `on_error`)."""

    def __init__(self, lab: Lab, path: str, on_event: Callable[[dict[str, Any]], None],
                 on_error: Callable[[BaseException], None]) -> None:
        self.lab, self.path, self.on_event, self.on_error = lab, path, on_event, on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name=f"vlab-follow {self.path}")
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.lab.client.stream(self.path):
                    if self._stop.is_set():
                        return
                    self.on_event(event)
            except Exception as error:
                self.on_error(error)
                self._stop.wait(2.0)

    def stop(self) -> None:
        self._stop.set()
