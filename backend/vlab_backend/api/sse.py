"""Server-sent event streams fed by the event hub."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
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
                is_last: Callable[[dict[str, Any]], bool]) -> AsyncIterator[str]:
    """Hub events as SSE messages (`translate` may drop one by returning None), with
    keep-alive comments, until `is_last` says the stream is complete."""
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), timeout=KEEP_ALIVE_S)
        except TimeoutError:
            yield ": keep-alive\n\n"
            continue
        outgoing = translate(event)
        if outgoing is not None:
            yield message(outgoing)
        if is_last(event):
            return


def event_stream(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
