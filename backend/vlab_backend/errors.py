"""Turning engine exceptions into one readable line for users."""

from __future__ import annotations


def short_message(exc: BaseException) -> str:
    """The meaningful part of an engine error: its last line, without C++ source locations."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[-1].strip()
    # "[ONNXRuntimeError] : 1 : FAIL : /src/graph.cc:1483 Graph::Graph(...) ... : real reason"
    if "[ONNXRuntimeError]" in line:
        line = line.rsplit(" : ", 1)[-1]
    return line[:500]
