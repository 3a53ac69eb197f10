"""Turning engine exceptions into one readable line for users."""

from __future__ import annotations

import re

# OpenVINO prefixes its reasons with one line per C++ frame it passed through.
_SOURCE_LOCATION = re.compile(r"(Exception from|Check '.*' failed at) \S+:\d+:?")


def short_message(exc: BaseException) -> str:
    """The meaningful part of an engine error, without C++ source locations: OpenVINO's whole
    reason (its lines joined), else the last line."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line for line in lines if not _SOURCE_LOCATION.fullmatch(line)]
    if not reasons:
        return type(exc).__name__
    line = " ".join(reasons) if len(reasons) < len(lines) else reasons[-1]
    # "[ONNXRuntimeError] : 1 : FAIL : /src/graph.cc:1483 Graph::Graph(...) ... : real reason"
    if "[ONNXRuntimeError]" in line:
        line = line.rsplit(" : ", 1)[-1]
    return line[:500]
