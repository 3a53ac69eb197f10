"""How the client shows numbers, one way everywhere (CLI, widgets, notebooks): latency in
ms, memory in MiB, 3 significant digits."""

from __future__ import annotations

import math
from typing import Any

MS = 1e3  # seconds -> ms
MIB = 2**20  # bytes -> MiB


def sig3(value: Any, scale: float = 1.0, missing: str = "–") -> str:
    """`value × scale` to 3 significant digits (whole numbers from 1000 up); `missing` where
    unknown (None, NaN); anything that is not a number as its text."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return str(value)
    try:
        number = float(value) * scale
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return missing
    return f"{number:,.0f}" if abs(number) >= 1000 else f"{number:.3g}"


def budgets(memory: dict[str, Any]) -> str:
    """A board's declared memory (dAIEdge `storage` and `ram`): `flash 1 MiB, RAM 256 KiB`;
    blank where it declares none."""
    parts = []
    for key, label in (("storage", "flash"), ("ram", "RAM")):
        size = memory.get(key)
        if isinstance(size, int) and not isinstance(size, bool):
            unit, scale = ("MiB", MIB) if size >= MIB else ("KiB", 1024) if size >= 1024 \
                else ("B", 1)
            parts.append(f"{label} {sig3(size / scale)} {unit}")
    return ", ".join(parts)
