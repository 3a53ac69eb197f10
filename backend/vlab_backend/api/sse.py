"""Server-sent event streams fed by the event hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi.responses import StreamingResponse

KEEP_ALIVE_S = 15.0
# How the OpenAPI document describes a stream route's answer.
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "server-sent events: `data: <JSON>` messages and keep-alive comments",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def message(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event)}\n\n"


async def relay(queue: asyncio.Queue[dict[str, Any]],
                translate: Callable[[dict[str, Any]], dict[str, Any] | None],
                is_last: Callable[[dict[str, Any]], bool],
                reread: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                reread_s: float = KEEP_ALIVE_S) -> AsyncIterator[str]:
    """Hub events as SSE messages (`translate` may drop one by returning None), with
    keep-alive comments, until `is_last` says the stream is complete.

    The hub only carries this process's events. With `reread` (the current state, read
    from the database), a quiet stream asks for it every `reread_s` seconds and relays it
    when it changed: with several API replicas, a job another replica follows still
    reaches its end on this stream."""
    last: dict[str, Any] | None = None
    quiet_s = 0.0
    wait_s = min(reread_s, KEEP_ALIVE_S) if reread else KEEP_ALIVE_S
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), timeout=wait_s)
        except TimeoutError:
            quiet_s += wait_s
            if reread is not None:
                event = await reread()
                if event != last:
                    last = event
                    outgoing = translate(event)
                    if outgoing is not None:
                        yield message(outgoing)
                    quiet_s = 0.0
                if is_last(event):
                    return
            if quiet_s >= KEEP_ALIVE_S:
                quiet_s = 0.0
                yield ": keep-alive\n\n"
            continue
        quiet_s = 0.0
        last = event
        outgoing = translate(event)
        if outgoing is not None:
            yield message(outgoing)
        if is_last(event):
            return


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
