"""Helpers shared by the views: background work, error display, units and live events."""

from __future__ import annotations

import atexit
import html
import json
import socket
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import ipywidgets as w

from vlab_kernel.client import TERMINAL, error_message
from vlab_kernel.errors import ConnectionFailed, VlabError, error_for
from vlab_kernel.lab import Lab
from vlab_kernel.units import MIB, MS, sig3

__all__ = ["MIB", "MS", "STOP_WAIT_S", "EventFollower", "LiveView", "Message", "RunView",
           "in_background", "side_by_side", "side_by_side_html", "side_by_side_text", "sig3",
           "stability_text"]

# How long a view's stop() waits for its follower's thread (it ends at once unless it is
# inside a callback).
STOP_WAIT_S = 2.0
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


def side_by_side(metrics: Mapping[str, Any] | None) -> int:
    """How many other jobs shared the run's host while it ran (`concurrent_jobs_on_host`
    counts the others: 1 means two jobs side by side); 0 where none or unknown."""
    value = (metrics or {}).get("concurrent_jobs_on_host")
    try:
        number = int(value) if value is not None and value == value else 0
    except (TypeError, ValueError):
        return 0
    return max(number, 0)


def side_by_side_text(others: int) -> str:
    """The warning for a run that shared its host; empty when it ran alone."""
    if others <= 0:
        return ""
    jobs = "job" if others == 1 else "jobs"
    return (f"ran side by side with {others} other {jobs} on shared cores: numbers may be "
            "inflated")


def side_by_side_html(metrics: Mapping[str, Any] | None) -> str:
    """`side_by_side_text` as an orange warning line (empty when the run ran alone)."""
    text = side_by_side_text(side_by_side(metrics))
    return (f'<div class="vlab-side-by-side" style="color:#e65100">⚠ {html.escape(text)}</div>'
            if text else "")


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


def _shutdown(response: httpx.Response) -> None:
    """Wake a thread blocked reading this response: closing a socket from another thread
    does not, shutting it down does (the reader then sees the end of the stream)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


_followers: weakref.WeakSet[EventFollower] = weakref.WeakSet()


@atexit.register
def _stop_followers() -> None:
    """At interpreter exit (a kernel shutting down) every follower stops quietly, before the
    HTTP client and the widgets' comms are torn down under it."""
    for follower in list(_followers):
        follower.stop()


class EventFollower:
    """Calls `on_event` for every event of one of the server's event streams, from a daemon
    thread, reconnecting after errors (reported through `on_error`). `until(event)` ends the
    following after that event (a benchmark's terminal status). `stop()` closes the stream at
    once; nothing is reported after it, nor at interpreter exit."""

    RETRY_S = 2.0

    def __init__(self, lab: Lab, path: str, on_event: Callable[[dict[str, Any]], None],
                 on_error: Callable[[BaseException], None],
                 until: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.lab, self.path, self.on_event, self.on_error = lab, path, on_event, on_error
        self.until = until
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: httpx.Response | None = None
        self._lock = threading.Lock()
        # Set from the stream's first event until it closes: the server listens, and every
        # event from then on reaches `on_event`.
        self.connected = threading.Event()
        _followers.add(self)

    @property
    def running(self) -> bool:
        """True while the background thread follows the stream."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name=f"vlab-follow {self.path}")
        self._thread.start()

    def _events(self) -> Iterator[dict[str, Any]]:
        http = self.lab.client._http
        try:
            with http.stream("GET", self.path,
                             timeout=httpx.Timeout(60.0, read=None)) as response:
                with self._lock:
                    self._response = response
                if self._stop.is_set():
                    return
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response.status_code, error_message(response))
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        # The server's first event (the state now) is sent once it listens.
                        self.connected.set()
                        yield json.loads(line[6:])
        except httpx.ConnectError as exc:
            raise ConnectionFailed(
                f"cannot reach the VLab API at {self.lab.client.connection.url}") from exc
        finally:
            self.connected.clear()
            with self._lock:
                self._response = None

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._events():
                    if self._stop.is_set():
                        return
                    self.on_event(event)
                    if self.until is not None and self.until(event):
                        self._stop.set()
                        return
            except Exception as error:
                if self._stop.is_set():  # closed on purpose: the error is ours
                    return
                try:
                    self.on_error(error)
                except Exception:  # a widget already closed must not kill the thread loudly
                    return
            self._stop.wait(self.RETRY_S)  # reconnect after an error or an ended stream

    def stop(self, timeout: float | None = None) -> None:
        """Stop following: the open stream is closed, so the thread ends at once; waits for
        it up to `timeout` seconds when given."""
        self._stop.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)
        thread = self._thread
        if timeout is not None and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


class LiveView:
    """What the run, training and federation views share: a Cancel button while the thing
    they show is unfinished, and the event stream they follow. Mixed in before `w.VBox`;
    the view sets `cancel`, `message` and `_follower`, and defines `refresh()` and
    `_cancel_target()` (the name to show and the call that cancels)."""

    cancel: Any
    message: Message
    _follower: EventFollower

    def refresh(self) -> None:
        raise NotImplementedError

    def _state(self) -> Mapping[str, Any]:
        """The state last shown (its "status" among the keys)."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """Whether the view shows the thing ended."""
        return self._state().get("status") in TERMINAL

    def _outdated(self, state: Mapping[str, Any]) -> bool:
        """An unfinished state that arrives once the view shows the end: an answer that left
        the server before the end, read by another of the view's threads. Checked under the
        view's lock, with the state shown."""
        return self.finished and state.get("status") not in TERMINAL

    def _cancel_target(self) -> tuple[str, Callable[[], str]]:
        raise NotImplementedError

    def _on_cancel(self, _button: Any) -> None:
        self.cancel.disabled = True
        in_background(self._cancel)

    def _cancel(self) -> None:
        name, cancel = self._cancel_target()
        try:
            self.message.show(f"{name}: {cancel()}")
        except Exception as error:
            self.message.show_error(error)
            self.cancel.disabled = False
        # Read it again whatever the stream does: the stream may have ended on the terminal
        # event before the view read the state that event announced.
        self.refresh()

    def stop(self) -> None:
        """Stop following the events."""
        self._follower.stop(timeout=STOP_WAIT_S)

    def close(self) -> None:
        self.stop()
        super().close()  # type: ignore[misc]


class RunView(LiveView):
    """A view of one benchmark run (`RunPage`, `TrainingView`): its state read from the API
    and followed on the run's events. The view sets `lab`, `info` and `_lock`, and defines
    `run_id`, `_draw_state(info)` (show a state), `_on_end()` (load what an ended run has)
    and, if it shows more of a progress event, `_on_progress(progress)`."""

    lab: Lab
    info: dict[str, Any]
    _lock: threading.RLock

    @property
    def run_id(self) -> str:
        raise NotImplementedError

    def _draw_state(self, info: dict[str, Any]) -> None:
        raise NotImplementedError

    def _on_end(self) -> None:
        raise NotImplementedError

    def _on_progress(self, progress: dict[str, Any]) -> None:
        """What a view shows of a progress event beyond the count (nothing by default)."""

    def _state(self) -> dict[str, Any]:
        return self.info

    def refresh(self) -> None:
        """Ask the server for the run's state; an ended run's details are loaded once."""
        try:
            info = self.lab.client.benchmark(self.run_id)
        except Exception as error:
            self.message.show_error(error)
            return
        if not self._show_state(info):
            return
        if info["status"] in TERMINAL:
            self._on_end()
        self.add_class("vlab-ready")  # type: ignore[attr-defined]

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "progress" and self.info:
            progress = event.get("progress") or {}
            if self._show_state({**self.info, "status": event.get("status", "running"),
                                 "progress": progress}):
                self._on_progress(progress)
            return
        self.refresh()

    def _show_state(self, info: dict[str, Any]) -> bool:
        """Show the state; False (nothing shown) for one that `_outdated` rejects."""
        with self._lock:
            if self._outdated(info):
                return False
            self.info = info
            self._draw_state(info)
        return True
