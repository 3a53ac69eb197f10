"""Helpers shared by the views: background work and error display."""

from __future__ import annotations

import html
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ipywidgets as w

from vlab_kernel.errors import VlabError

# Widget callbacks must not block the kernel: work runs here, widgets update from it.
_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="vlab-widgets")


def in_background(work: Callable[[], Any]) -> Future[Any]:
    return _executor.submit(work)


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
