"""In-process publish/subscribe of benchmark events, feeding the server-sent event streams."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from vlab_backend.store.database import after_commit

ALL = "*"


class EventHub:
    """Fan-out of events per benchmark id; subscribers of `ALL` see every event."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, benchmark_id: str, event: dict[str, Any]) -> None:
        """Thread-safe: may be called from request threads as well as the event loop."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(benchmark_id, event)
        else:
            loop.call_soon_threadsafe(self._deliver, benchmark_id, event)

    def publish_on_commit(self, session: Session, key: str, event: dict[str, Any]) -> None:
        """Publish `event` (built now, from the rows as the session has them) once the
        session commits: a client that reads the database on the event sees the change."""
        after_commit(session, partial(self.publish, key, event))

    def _deliver(self, benchmark_id: str, event: dict[str, Any]) -> None:
        payload = {"id": benchmark_id, **event}
        for key in (benchmark_id, ALL):
            for queue in self._subscribers.get(key, ()):
                queue.put_nowait(payload)

    @asynccontextmanager
    async def subscribe(self, benchmark_id: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers[benchmark_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[benchmark_id].discard(queue)
            if not self._subscribers[benchmark_id]:
                del self._subscribers[benchmark_id]
