"""A stream whose events another replica produces still reaches its end: a quiet stream
re-reads the state from the database and relays what changed."""

from __future__ import annotations

import asyncio
from typing import Any

from vlab_backend.api import sse


def test_a_quiet_stream_relays_the_state_it_rereads_until_the_end() -> None:
    states = iter([{"status": "running", "done": 1}, {"status": "running", "done": 1},
                   {"status": "success", "done": 5}])

    async def reread() -> dict[str, Any]:
        return next(states)

    async def collect() -> list[str]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # this replica hears nothing
        return [chunk async for chunk in sse.relay(
            queue, lambda event: event, lambda event: event["status"] == "success",
            reread=reread, reread_s=0.01)]

    chunks = asyncio.run(asyncio.wait_for(collect(), timeout=10))
    assert chunks == [sse.message({"status": "running", "done": 1}),  # once: unchanged after
                      sse.message({"status": "success", "done": 5})]


def test_without_rereading_hub_events_are_relayed_until_the_last() -> None:
    async def collect() -> list[str]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for event in ({"status": "running"}, {"status": "internal"}, {"status": "failed"}):
            queue.put_nowait(event)
        return [chunk async for chunk in sse.relay(
            queue, lambda event: None if event["status"] == "internal" else event,
            lambda event: event["status"] == "failed")]

    chunks = asyncio.run(asyncio.wait_for(collect(), timeout=10))
    assert chunks == [sse.message({"status": "running"}), sse.message({"status": "failed"})]
